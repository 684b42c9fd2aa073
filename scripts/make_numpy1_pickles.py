"""Writes tests/numpy1_pickles.py: pickles numpy 1.x wrote, for the scanner's tests.

Run it under numpy 1.x (1.26.4 wrote the stored file), not the project's numpy 2:
    python scripts/make_numpy1_pickles.py > tests/numpy1_pickles.py
"""

import base64
import pickle
import sys

import numpy as np
from numpy.random import MT19937, PCG64DXSM, SFC64, Generator, Philox, RandomState, SeedSequence

assert np.__version__.startswith("1."), np.__version__
arrays = {
    "aligned": np.zeros(2, dtype=np.dtype([("a", "i1"), ("b", "<f8")], align=True)),
    "nested": np.array([((1, "x"), 2.5)], dtype=[("n", [("i", "<i2"), ("o", "O")]), ("z", "<f4")]),
    "subarray": np.arange(12, dtype="<i4").reshape(2, 6).view([("pair", "<i4", (2, 3))]).ravel(),
    "titles": np.zeros(2, dtype=[(("title", "name"), "<i4"), ("other", ">u2")]),
    "datetime": np.array(["2020-01-01T00:00:00.5"], dtype="M8[ns]"),
    "timedelta": np.array([3], dtype="m8[D]"),
    "big_endian": np.arange(3, dtype=">f8"),
    "unicode": np.array(["abc", "de"], dtype="<U5"),
    "bytes": np.array([b"ab"], dtype="S3"),
    "void": np.zeros(2, dtype="V4"),
    "objects": np.array([1, "a", None], dtype=object),
    "bools": np.array([True, False]),
    "complex": np.arange(2, dtype="c16"),
    "half": np.arange(2, dtype="f2"),
    "empty_struct": np.zeros(3, dtype=[]),
    "masked": np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0]),
    "masked_objects": np.ma.masked_array(np.array(["a", 1], dtype=object), mask=[1, 0]),
    "scalars": (
        np.float64(1.5),
        np.int32(-3),
        np.str_("ab"),
        np.datetime64("2020-01-01"),
        np.void(b"xy"),
        np.bool_(True),
    ),
}
generators = {
    "random_state": RandomState(0),
    "generator": np.random.default_rng(0),
    "generator_mt19937": Generator(MT19937(1)),
    "generator_philox": Generator(Philox(2)),
    "sfc64": SFC64(3),
    "pcg64dxsm": PCG64DXSM(4),
    "seed_sequence": SeedSequence(5),
}
out = [
    '"""Pickles numpy 1.26.4 wrote (numpy.core names, signed-char dtype flags, legacy',
    "random states), for tests that must pass them. Written by",
    'scripts/make_numpy1_pickles.py under numpy 1.x; base64 of each pickle."""',
    "",
    "from __future__ import annotations",
    "",
    "PICKLES: dict[str, str] = {",
]
for protocol in (2, 4):
    for name, value in {**arrays, **generators}.items():
        data = base64.b64encode(pickle.dumps(value, protocol=protocol)).decode()
        out.append(f'    "{name}_p{protocol}": (')
        out.extend(f'        "{data[i : i + 88]}"' for i in range(0, len(data), 88))
        out.append("    ),")
out.append("}")
sys.stdout.write("\n".join(out) + "\n")
