"""States that scikit-learn, pandas, scipy and the standard library trust.

Each library class below is allowed, and each trusts the values a pickle hands it. For each,
a file made only of allowed globals crashes (or corrupts memory in) a stock `pickle.load` or
the first use of what it loads: the crash is shown in a subprocess, the scanner refuses the
file, and the states the libraries themselves write still pass. Plain standard-library data
types round-trip through the scanner as safe in every protocol; their abusive forms are
refused.
"""

from __future__ import annotations

import collections
import copyreg
import datetime
import decimal
import fractions
import pathlib
import pickle
import types
import uuid
from pathlib import Path
from typing import Any

import pytest

from integrity.safety.scanner import ScanResult, scan_path

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
RECONSTRUCTOR = getattr(copyreg, "_reconstructor")  # noqa: B009 (not in typeshed)


class Reduces:
    """Pickles as the reduce tuple it is given: how a crafted state is written with the
    real pickler, naming only the real (allowed) globals."""

    def __init__(self, *reduced: Any) -> None:
        self.reduced = reduced

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduced


def scan_bytes(data: bytes, folder: Path, name: str = "model.pkl") -> ScanResult:
    path = folder / name
    path.write_bytes(data)
    return scan_path(path)


def unsafe_states(result: ScanResult) -> list[str]:
    return [f.message for f in result.findings if f.code == "unsafe-state"]


# ---------------------------------------------------------------- standard library

PLAIN_VALUES: dict[str, object] = {
    "counter": collections.Counter("abracadabra"),
    "counter_of_ngrams": collections.Counter({("a", "b"): 2, ("b", "c"): 1}),
    "deque": collections.deque([1, 2.5, "x"]),
    "deque_maxlen": collections.deque([1, 2], maxlen=3),
    "decimal": decimal.Decimal("-1234.5678E-3"),
    "decimal_special": [decimal.Decimal("NaN"), decimal.Decimal("-Infinity")],
    "fraction": fractions.Fraction(-22, 7),
    "time": datetime.time(23, 59, 58, 999, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    "pure_paths": [pathlib.PurePosixPath("/data/x.csv"), pathlib.PureWindowsPath(r"C:\d\x")],
    "namespace": types.SimpleNamespace(alpha=0.5, names=["a"]),
    "constants": (..., NotImplemented),
    "number_types": [int, float, bool, str],
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(PLAIN_VALUES))
def test_standard_library_data_type_is_safe_as_python_pickles_it(
    name: str, protocol: int, tmp_path: Path
) -> None:
    value = PLAIN_VALUES[name]
    result = scan_bytes(pickle.dumps({"param": value}, protocol), tmp_path)
    assert result.safe, [f.message for f in result.findings]
    assert pickle.loads(pickle.dumps(value, protocol)) == value or name == "decimal_special"


ABUSED: dict[str, tuple[Any, ...]] = {
    # 10**999999999 computed at load: a CPU and memory bomb.
    "fraction_huge_exponent": (fractions.Fraction, ("1e999999999",)),
    "fraction_huge_int": (fractions.Fraction, (1 << 100_000, 3)),
    "fraction_of_an_object": (fractions.Fraction, (decimal.Decimal("1.5"),)),
    "decimal_huge_exponent": (decimal.Decimal, ("1e999999999",)),
    "decimal_not_text": (decimal.Decimal, ((0, (1,), 5),)),
    "decimal_with_context": (decimal.Decimal, ("1", None)),
    # A lazy range walked item by item.
    "deque_of_a_range": (collections.deque, (range(10**15),)),
    "deque_negative_maxlen": (collections.deque, ((), -1)),
    "counter_of_a_range": (collections.Counter, (range(10**15),)),
    "namespace_from_an_iterable": (types.SimpleNamespace, (range(10**15),)),
    "pure_path_of_an_object": (pathlib.PurePosixPath, (fractions.Fraction(1, 2),)),
    "int_of_an_object": (int, (fractions.Fraction(1, 2),)),
    "int_of_a_huge_int": (int, (1 << 100_000,)),
    # Protocols 0 and 1 make it with copyreg._reconstructor: checked all the same.
    "uuid_state_not_an_int": (RECONSTRUCTOR, (uuid.UUID, object, None), {"int": "1"}),
    "uuid_state_too_large": (RECONSTRUCTOR, (uuid.UUID, object, None), {"int": 1 << 128}),
}


@pytest.mark.parametrize("name", sorted(ABUSED))
def test_abusive_standard_library_arguments_are_refused(name: str, tmp_path: Path) -> None:
    data = pickle.dumps(Reduces(*ABUSED[name]), 4)
    result = scan_bytes(data, tmp_path)
    assert not result.safe
    assert unsafe_states(result), [f.message for f in result.findings]


@pytest.mark.parametrize(
    "name",
    ["zoneinfo_by_key", "concrete_path"],
)
def test_callables_and_file_reaching_types_stay_refused(name: str, tmp_path: Path) -> None:
    import zoneinfo

    value: object = {
        # ZoneInfo pickles as ZoneInfo._unpickle(key): it reads a time-zone file by name.
        "zoneinfo_by_key": zoneinfo.ZoneInfo("UTC"),
        "concrete_path": pathlib.Path("/etc/passwd"),
    }[name]
    result = scan_bytes(pickle.dumps(value, 4), tmp_path)
    assert not result.safe
    assert not unsafe_states(result)
