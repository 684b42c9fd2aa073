"""numpy's own states, checked as numpy uses them: dtypes, arrays, scalars, bit generators.

Each refusal test builds the state numpy's C code would trust, shows in a subprocess
what the stock loader suffers with it (a crash, or bytes read from outside the
array), and that the scanner refuses the file. The acceptance tests dump real
numpy objects of many kinds and check the scanner's model against numpy itself.
Nothing here loads a pickle in the test process.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import joblib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrity.safety.arrays import read_joblib_array
from integrity.safety.pickle_vm import PickleMachine
from integrity.safety.scanner import scan_path
from integrity.safety.states import UnsafeState, numpy_dtype
from integrity.safety.streams import FileSource
from integrity.safety.symbols import ArrayValue, ContentBudget, Global, Obj, SDict

_RECONSTRUCT = np._core.multiarray._reconstruct  # type: ignore[attr-defined]


class Reduce:
    """Pickles as func(*args) and, with a state, a BUILD: how the tests write the
    exact calls and states numpy's pickles hold, with any value in them."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[Any, ...]:
        if self.state is None:
            return (self.func, self.args)
        return (self.func, self.args, self.state)


def symbolic(data: bytes, tmp_path: Path, *, joblib_file: bool = False) -> Any:
    """The symbolic value the scanner's machine builds for a pickle (never loaded)."""
    path = tmp_path / "value.pkl"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        source = FileSource(fd, len(data))
        machine = PickleMachine(
            source, lambda use: None, read_joblib_array if joblib_file else None
        )
        value = machine.run()
        _read_content(value, set())  # joblib content is read on first use: now
        return value
    finally:
        os.close(fd)


def _read_content(value: Any, seen: set[int]) -> None:
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, ArrayValue):
        value.data  # noqa: B018 - the property reads the content
    children: Any = ()
    if isinstance(value, SDict):
        children = value.items.values()
    elif isinstance(value, tuple):
        children = value
    elif isinstance(value, Obj):
        children = (*value.args, value.state)
    for child in children:
        _read_content(child, seen)


def joblib_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(value, buffer)
    return buffer.getvalue()


def tree_nodes() -> np.ndarray[Any, Any]:
    """A structured array shaped like scikit-learn's tree nodes, with a subarray
    field and a big-endian one."""
    nodes = np.zeros(
        4,
        dtype=[
            ("left_child", "<i8"),
            ("right_child", "<i8"),
            ("threshold", "<f8"),
            ("pair", ">i4", (2,)),
            ("flag", "?"),
        ],
    )
    nodes["left_child"] = [1, -1, 3, -1]
    nodes["right_child"] = [2, -1, -1, -1]
    nodes["threshold"] = [0.5, -2.0, 1.25, -2.0]
    nodes["pair"] = [[1, 2], [3, 4], [-5, 6], [7, 8]]
    nodes["flag"] = [True, False, True, False]
    return nodes


# ---------------------------------------------------------------- ArrayValue API


def _check_array_value(value: Any, real: np.ndarray[Any, Any]) -> None:
    assert isinstance(value, ArrayValue) and value.built
    assert value.shape == real.shape
    assert value.dtype is not None and value.dtype.itemsize == real.dtype.itemsize
    if real.dtype.names:
        for name in real.dtype.names:
            kind = real.dtype[name].base.kind
            got = value.ints(name) if kind in "biu" else value.floats(name)
            assert got is not None and list(got) == real[name].ravel().tolist(), name
    else:
        ints = value.ints()
        memory = real.ravel(order="F" if value.order == "F" else "C")
        assert ints is not None and list(ints) == memory.tolist()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_array_value_carries_reconstructed_arrays_content(protocol: int, tmp_path: Path) -> None:
    arrays = {
        "nodes": tree_nodes(),
        "ints": np.arange(-3, 7, dtype=">i2"),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.uint32).reshape(3, 4)),
        "bools": np.array([True, False, True]),
    }
    value = symbolic(pickle.dumps(arrays, protocol=protocol), tmp_path)
    assert isinstance(value, SDict)
    for name, real in arrays.items():
        _check_array_value(value.items[name], real)
    assert value.items["fortran"].order == "F"


def test_array_value_carries_joblib_arrays_content(tmp_path: Path) -> None:
    arrays = {"nodes": tree_nodes(), "ints": np.arange(10, dtype=np.int32).reshape(2, 5)}
    value = symbolic(joblib_bytes(arrays), tmp_path, joblib_file=True)
    for name, real in arrays.items():
        _check_array_value(value.items[name], real)


def test_array_value_keeps_no_float_content(tmp_path: Path) -> None:
    """Only integer and structured content is kept: a float array's bytes are skipped
    (joblib) or dropped, and a validator asking for them gets None."""
    for data, joblib_file in (
        (pickle.dumps(np.arange(4.0), protocol=4), False),
        (joblib_bytes(np.arange(4.0)), True),
    ):
        value = symbolic(data, tmp_path, joblib_file=joblib_file)
        assert isinstance(value, ArrayValue) and value.shape == (4,)
        assert value.data is None and value.ints() is None and value.floats() is None


def test_array_value_content_stops_at_the_budget(tmp_path: Path) -> None:
    """Beyond the file's content budget, array bytes are skipped, not kept."""
    path = tmp_path / "big.pkl"
    path.write_bytes(joblib_bytes({"a": np.arange(1000, dtype=np.int64), "b": np.arange(10)}))
    fd = os.open(path, os.O_RDONLY)
    try:
        machine = PickleMachine(
            FileSource(fd, path.stat().st_size), lambda use: None, read_joblib_array
        )
        machine.budget.left = 8000 + 40
        value = machine.run()
        assert value.items["a"].ints() is not None
        assert value.items["b"].ints() is None and value.items["b"].shape == (10,)
    finally:
        os.close(fd)


def test_array_value_from_protocol_5_buffers(tmp_path: Path) -> None:
    real = np.arange(24, dtype=np.int16).reshape(2, 3, 4).transpose(1, 0, 2)
    value = symbolic(pickle.dumps(real, protocol=5), tmp_path)
    assert isinstance(value, ArrayValue) and value.shape == real.shape and value.order == "K"
    ints = value.ints()
    assert ints is not None and sorted(ints) == sorted(real.ravel().tolist())


def scan(data: bytes, tmp_path: Path, name: str = "model.pkl") -> list[str]:
    path = tmp_path / name
    path.write_bytes(data)
    return [f"{f.code}: {f.message}" for f in scan_path(path).findings]


def loads_in_subprocess(data: bytes, then: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Load `data` with stock pickle.load in a child process, then run `then` on the
    result `value`: what a user's process suffers."""
    path = tmp_path / "payload.pkl"
    path.write_bytes(data)
    code = textwrap.dedent(
        f"""
        import pickle, sys
        import numpy as np
        with open({str(path)!r}, "rb") as f:
            value = pickle.load(f)
        """
    ) + textwrap.dedent(then)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def crashed(run: subprocess.CompletedProcess[str]) -> bool:
    return run.returncode in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT)


def ops(value: Any) -> bytes:
    """The opcodes of a value at protocol 2 (no frames, no PROTO, no STOP): pieces
    the tests join into pickles numpy's pickler would not write."""
    return pickle.dumps(value, protocol=2)[2:-1]


def whole(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def dtype(spec: str, state: Any, copy: bool = True) -> Reduce:
    """numpy.dtype(spec, False, copy) with a BUILD of `state` (none if None)."""
    return Reduce(np.dtype, (spec, False, copy), state)


def array(dt: Any, shape: tuple[int, ...], raw: Any) -> Reduce:
    """An ndarray as numpy pickles it: _reconstruct and a BUILD of its state."""
    return Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dt, False, raw))


def struct_state(
    fields: dict[str, tuple[Any, int]], itemsize: int, flags: int = 16
) -> tuple[Any, ...]:
    return (3, "|", None, tuple(fields), fields, itemsize, 1, flags)


def unsafe(findings: list[str], why: str = "") -> bool:
    """Whether the scan refused an unsafe state (for the reason `why` names)."""
    return any(f.startswith("unsafe-state") and why in f for f in findings)


# ---------------------------------------------------------------- the dtype model


def _model(spec: str, copy: bool) -> numpy_dtype.Dtype:
    made = numpy_dtype.dtype_call(Obj(Global("numpy", "dtype"), (spec, False, copy)))
    model: numpy_dtype.Dtype = made.model
    return model


def _written_specs() -> set[str]:
    """Every spec numpy's dtype.__reduce__ writes for its own types."""
    specs = set()
    for char in np.typecodes["All"] + "SUV":
        real = np.dtype(char)
        specs.add(real.__reduce__()[1][0])
        if real.kind in "SUV":
            specs.add(np.dtype(f"{char}7").__reduce__()[1][0])
    return specs


@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize("spec", sorted(_written_specs()))
def test_dtype_spec_sizes_are_numpys_own(spec: str, copy: bool) -> None:
    """Every spec numpy writes is modelled with numpy's own size, alignment, flags
    and builtin-ness ('f4' is 4 bytes, 'O8' holds objects, 'S0' is shared)."""
    real = np.dtype(spec, False, copy)
    model = _model(spec, copy)
    assert (model.kind, model.itemsize, model.alignment, model.flags, model.has_object) == (
        real.kind,
        real.itemsize,
        real.alignment,
        real.flags,
        real.hasobject,
    )
    assert model.builtin == (real.isbuiltin == 1)


@pytest.mark.parametrize(
    "spec", ["c", "f", "b", "i", "M", "O", "a3", "S05", "U+3", "<f8", "f12", "O4"]
)
def test_dtype_specs_numpy_never_writes_are_refused(spec: str) -> None:
    """'c' is S1 and 'b' int8 to numpy: a spec numpy never writes is not guessed at."""
    with pytest.raises(UnsafeState):
        _model(spec, True)


@pytest.mark.parametrize("spec", ["f8", "i4", "O8", "b1", "S0", "U0", "V0"])
def test_shared_descriptor_ignores_its_state_as_numpy_does(spec: str) -> None:
    """dtype(spec, False, False) is numpy's shared descriptor: its __setstate__
    returns at once. The model keeps numpy's size and flags whatever the state says."""
    state = (3, ">", None, None, None, 64, 8, 63)
    real = np.dtype(spec, False, False)
    before = (real.itemsize, real.flags)
    real.__setstate__(state)  # type: ignore[attr-defined]
    assert (real.itemsize, real.flags) == before
    target = numpy_dtype.dtype_call(Obj(Global("numpy", "dtype"), (spec, False, False)))
    built = numpy_dtype.dtype_build(target, state)
    assert isinstance(built, numpy_dtype.DtypeObj)
    assert (built.model.itemsize, built.model.flags) == before


def _real_dtypes() -> dict[str, np.dtype[Any]]:
    return {
        "float": np.dtype("f8"),
        "big_endian": np.dtype(">i4"),
        "unicode": np.dtype("<U7"),
        "bytes": np.dtype("S5"),
        "void": np.dtype("V3"),
        "object": np.dtype("O"),
        "datetime_ns": np.dtype("M8[ns]"),
        "timedelta_25s": np.dtype("m8[25s]"),
        "structured": np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "U2")]),
        "aligned": np.dtype([("a", "i1"), ("b", "<f8"), ("c", "i2")], align=True),
        "nested": np.dtype([("n", [("x", "i2"), ("o", "O")]), ("z", "f4")]),
        "subarray": np.dtype(("<f4", (2, 3))),
        "subarray_field": np.dtype([("m", "<i8", (3,)), ("k", "u1")]),
        "object_subarray": np.dtype(("O", (2,))),
        "offsets": np.dtype(
            {"names": ["x", "y"], "formats": ["<i2", "<i2"], "offsets": [6, 0], "itemsize": 12}
        ),
        "overlapping": np.dtype(
            {"names": ["x", "y"], "formats": ["<i4", "<i2"], "offsets": [0, 2]}
        ),
        "titles": np.dtype([(("A title", "a"), "<i4"), ("b", "u1")]),
        "metadata": np.dtype("f8", metadata={"unit": "m"}),
        "empty": np.dtype([]),
        "aligned_nested": np.dtype([("p", [("a", "i1"), ("b", "<i8")]), ("q", "i1")], align=True),
    }


def _same_layout(model: numpy_dtype.Dtype, real: np.dtype[Any]) -> None:
    assert (model.kind, model.itemsize, model.alignment, model.has_object) == (
        real.kind,
        real.itemsize,
        real.alignment,
        real.hasobject,
    )
    assert model.flags == real.flags
    if real.names is None:
        assert model.fields is None
    else:
        assert model.fields is not None
        assert [f.name for f in model.fields] == list(real.names)
        for field in model.fields:
            assert real.fields is not None
            field_dtype, offset = real.fields[field.name][:2]
            assert field.offset == offset
            _same_layout(field.dtype, field_dtype)
    if real.subdtype is None:
        assert model.subarray is None
    else:
        assert model.subarray is not None and model.subarray[1] == real.subdtype[1]
        _same_layout(model.subarray[0], real.subdtype[0])


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("name", sorted(_real_dtypes()))
def test_real_dtypes_pass_with_numpys_layout(name: str, protocol: int, tmp_path: Path) -> None:
    """dtypes numpy writes, of every kind, pass and are modelled exactly: item size,
    alignment, flags, objects, field offsets, subarrays."""
    real = _real_dtypes()[name]
    value = symbolic(pickle.dumps(real, protocol=protocol), tmp_path)
    assert isinstance(value, numpy_dtype.DtypeObj)
    _same_layout(value.model, real)
    assert scan(pickle.dumps(np.zeros(3, dtype=real), protocol=protocol), tmp_path) == []
    if real.itemsize:  # joblib cannot dump an array of empty items
        assert scan(joblib_bytes(np.zeros(3, dtype=real)), tmp_path, "model.joblib") == []


def test_numpy1_aligned_struct_flags_are_read_as_numpy_reads_them(tmp_path: Path) -> None:
    """numpy 1.x wrote an aligned struct's flags as a signed char (-112): numpy reads
    that as 16, without the aligned bit; both forms pass."""
    fields = {"a": (np.dtype("i1"), 0), "b": (np.dtype("<f8"), 8)}
    for flags in (144, -112, 16):
        state = (3, "|", None, ("a", "b"), fields, 16, 8, flags)
        value = symbolic(pickle.dumps(dtype("V16", state), protocol=2), tmp_path)
        assert value.model.flags == (144 if flags == 144 else 16)


# ---------------------------------------------------------------- numpy 1.x pickles


def test_pickles_numpy_1_wrote_pass(tmp_path: Path) -> None:
    """Arrays of every dtype kind, masked arrays, scalars and random generators as
    numpy 1.26 pickled them (numpy.core names, legacy generator states) pass."""
    import base64

    from numpy1_pickles import PICKLES

    assert len(PICKLES) >= 40
    for name, text in PICKLES.items():
        assert scan(base64.b64decode(text), tmp_path) == [], name


def test_numpy_2_arrays_scalars_and_generators_pass(tmp_path: Path) -> None:
    """(numpy 2 names Philox and SFC64 by class, which the allow-list does not hold.)"""
    values = {
        "masked": np.ma.masked_array([1.0, 2.0], mask=[False, True]),
        "masked_objects": np.ma.masked_array(np.array(["a", 1], dtype=object), mask=[True, False]),
        "scalars": (
            np.float64(1.5),
            np.int32(-3),
            np.str_("ab"),
            np.datetime64("2020-01-01"),
            np.void(b"xy"),
        ),
        "random_state": np.random.RandomState(0),
        "generator": np.random.default_rng(0),
        "mt19937": np.random.Generator(np.random.MT19937(2)),
        "seed_sequence": np.random.SeedSequence(5),
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert scan(pickle.dumps(values, protocol=protocol), tmp_path) == [], protocol
    assert scan(joblib_bytes(values), tmp_path, "model.joblib") == []


# ---------------------------------------------------------------- refused dtype states
# Each: the state numpy trusts, what stock pickle.load then suffers (in a child
# process), and the scanner's refusal.

_FAR = 1 << 30  # an offset or size far outside any small buffer: a reliable crash


def _refused_and_crashes(payload: Any, then: str, tmp_path: Path, why: str) -> None:
    data = pickle.dumps(payload, protocol=4)
    assert unsafe(scan(data, tmp_path), why), scan(data, tmp_path)
    run = loads_in_subprocess(data, then, tmp_path)
    assert crashed(run), (run.returncode, run.stderr[-500:])


def test_object_dtype_with_flags_zero_is_refused(tmp_path: Path) -> None:
    """An object dtype whose flags deny objects: numpy copies raw bytes where it keeps
    object pointers, and dereferences the attacker's 0x4141... on first use."""
    bad = dtype("O8", (3, "|", None, None, None, -1, -1, 0))
    _refused_and_crashes(array(bad, (1,), b"\x41" * 8), "print(repr(value[0]))", tmp_path, "flags")


def test_struct_with_object_field_but_no_object_flags_is_refused(tmp_path: Path) -> None:
    fields = {"a": (np.dtype("<i8"), 0), "b": (np.dtype("O"), 8)}
    bad = dtype("V16", struct_state(fields, 16, flags=16))  # numpy computes 27
    raw = b"\x00" * 8 + b"\x41" * 8
    _refused_and_crashes(array(bad, (1,), raw), "print(repr(value[0]['b']))", tmp_path, "flags")


def test_flags_claiming_objects_on_plain_data_are_refused(tmp_path: Path) -> None:
    """The other way round: object flags on a dtype of plain bytes (numpy would treat
    the bytes as references). Refused without a crash to show: numpy never writes it."""
    bad = dtype("f8", (3, "<", None, None, None, -1, -1, 63))
    assert unsafe(scan(pickle.dumps(array(bad, (1,), [1.5]), protocol=4), tmp_path))


def test_field_outside_the_item_is_refused(tmp_path: Path) -> None:
    bad = dtype("V8", struct_state({"a": (np.dtype("<i8"), _FAR)}, 8))
    _refused_and_crashes(array(bad, (1,), b"\x00" * 8), "print(value['a'][0])", tmp_path, "outside")


def test_fields_on_a_numeric_dtype_are_refused(tmp_path: Path) -> None:
    """numpy sets whatever fields it is given, on any copied descriptor: a float with
    a field far past its 8 bytes."""
    state = (3, "<", None, ("a",), {"a": (np.dtype("<i8"), _FAR)}, -1, -1, 16)
    bad = dtype("f8", state)
    _refused_and_crashes(
        array(bad, (1,), b"\x00" * 8), "print(value['a'][0])", tmp_path, "given fields"
    )


def test_subarray_larger_than_its_item_is_refused(tmp_path: Path) -> None:
    """A subarray dtype of 8 bytes claiming 2**28 float64s: a field of that type views
    2 GiB past the array."""
    sub = dtype("V8", (3, "|", (np.dtype("<f8"), (1 << 28,)), None, None, 8, 8, 0))
    bad = dtype("V8", struct_state({"a": (sub, 0)}, 8))
    _refused_and_crashes(
        array(bad, (1,), b"\x00" * 8), "print(value['a'][0, -1])", tmp_path, "subarray"
    )


def test_datetime_state_without_its_unit_is_refused(tmp_path: Path) -> None:
    """A datetime dtype with a version 3 state: numpy reads the unit from a metadata
    tuple it was never given (a NULL pointer) while loading."""
    bad = dtype("M8", (3, "<", None, None, None, -1, -1, 0))
    _refused_and_crashes(array(bad, (1,), b"\x00" * 8), "print(value)", tmp_path, "unit")


def test_object_field_overlapping_another_field_is_refused(tmp_path: Path) -> None:
    """Writing the int field rewrites the object pointer it overlaps: numpy
    dereferences the written value."""
    fields = {"o": (np.dtype("O"), 0), "i": (np.dtype("<i8"), 0)}
    bad = dtype("V8", struct_state(fields, 8, flags=27))
    _refused_and_crashes(
        array(bad, (1,), [(None, 0)]),
        "value['i'][0] = 0x4141414141414141; print(repr(value['o'][0]))",
        tmp_path,
        "overlap",
    )


@pytest.mark.parametrize(
    ("spec", "state"),
    [
        # names that are not the field keys
        ("V8", (3, "|", None, ("a", "b"), {"a": (np.dtype("<i8"), 0)}, 8, 1, 16)),
        (
            "V8",
            (3, "|", None, ("a",), {"a": (np.dtype("<i8"), 0), "b": (np.dtype("i1"), 0)}, 8, 1, 16),
        ),
        # a unicode size that is not whole characters, a size disagreeing with the spec
        ("U3", (3, "<", None, None, None, 13, 4, 8)),
        ("V8", (3, "|", None, None, None, 16, 1, 0)),
        # an alignment numpy never computes for these fields
        (
            "V16",
            (
                3,
                "|",
                None,
                ("a", "b"),
                {"a": (np.dtype("i1"), 0), "b": (np.dtype("<f8"), 4)},
                16,
                8,
                16,
            ),
        ),
        ("V8", (3, "|", None, None, None, 8, 4, 0)),
        # a size for a type whose size numpy fixes; a version numpy never writes
        ("f4", (3, "<", None, None, None, 8, 8, 0)),
        ("f8", (2, "<", None, None, None, -1, -1, 0)),
        ("i8", (3, "x", None, None, None, -1, -1, 0)),
    ],
)
def test_inconsistent_dtype_states_are_refused(spec: str, state: Any, tmp_path: Path) -> None:
    data = pickle.dumps(array(dtype(spec, state), (0,), b""), protocol=4)
    assert unsafe(scan(data, tmp_path))


def test_every_dtype_in_a_pickle_is_checked_not_only_joblibs(tmp_path: Path) -> None:
    """A bad dtype anywhere (an estimator's parameter, a dict value) is refused."""
    bad = dtype("O8", (3, "|", None, None, None, -1, -1, 0))
    assert unsafe(scan(pickle.dumps({"params": {"dtype": bad}}, protocol=4), tmp_path))
    assert unsafe(scan(joblib_bytes({"dtype": bad}), tmp_path, "model.joblib"))


def test_dtype_built_twice_is_refused(tmp_path: Path) -> None:
    """numpy's __setstate__ keeps the fields of the first state when the second has
    none: a consistent 1 GiB struct shrunk to 8 bytes keeps its far field."""
    first = struct_state({"a": (np.dtype("<i8"), _FAR)}, _FAR + 8)
    second = (3, "|", None, None, None, 8, 1, 16)
    shrunk = ops(dtype(f"V{_FAR + 8}", first)) + ops(second) + b"b"
    state = b"(" + ops(1) + ops((1,)) + shrunk + ops(False) + ops(b"\x00" * 8) + b"t"
    data = whole(ops(_RECONSTRUCT) + ops((np.ndarray, (0,), b"b")) + b"R" + state + b"b")
    assert unsafe(scan(data, tmp_path), "built twice")
    run = loads_in_subprocess(data, "print(value['a'][0])", tmp_path)
    assert crashed(run), (run.returncode, run.stderr[-500:])


def test_dtype_built_after_an_array_used_it_is_refused(tmp_path: Path) -> None:
    """The array is checked with the dtype as it was; a later BUILD changes the
    descriptor the array shares: fields far outside its 8-byte items."""
    memo = 200
    unbuilt = ops(dtype("V8", None)) + b"q" + bytes([memo]) + b"0"
    state = b"(" + ops(1) + ops((1,)) + b"h" + bytes([memo]) + ops(False) + ops(b"\x00" * 8) + b"t"
    made = ops(_RECONSTRUCT) + ops((np.ndarray, (0,), b"b")) + b"R" + state + b"b"
    late = b"h" + bytes([memo]) + ops(struct_state({"a": (np.dtype("<i8"), _FAR)}, 8)) + b"b0"
    data = whole(unbuilt + made + late)
    assert unsafe(scan(data, tmp_path), "built after an array")
    run = loads_in_subprocess(data, "print(value['a'][0])", tmp_path)
    assert crashed(run), (run.returncode, run.stderr[-500:])


# ---------------------------------------------------------------- joblib's byte count


def _joblib_with_payload(dt: Reduce, count: int, data: bytes) -> bytes:
    """A joblib file holding one array of `count` items of `dt`, with `data` as its
    bytes, then a call of builtins.print that joblib runs after reading them."""
    import malicious_corpus as mc

    wrapper_state = {
        "subclass": np.ndarray,
        "shape": (count,),
        "order": "C",
        "dtype": dt,
        "allow_mmap": False,
    }
    wrapper = (
        mc.sglobal("joblib.numpy_pickle", "NumpyArrayWrapper")
        + mc.EMPTY_TUPLE
        + mc.NEWOBJ
        + ops(wrapper_state)
        + mc.BUILD
    )
    payload = mc.call(mc.sglobal("builtins", "print"), mc.ustr("PAYLOAD RAN")) + b"0"
    return mc.proto(4) + wrapper + data + payload + mc.STOP


def _joblib_runs_payload(data: bytes, tmp_path: Path) -> bool:
    path = tmp_path / "payload.joblib"
    path.write_bytes(data)
    code = f"import joblib; joblib.load({str(path)!r})"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    return "PAYLOAD RAN" in run.stdout


def test_shared_descriptor_state_does_not_move_joblibs_data_end(tmp_path: Path) -> None:
    """dtype('f8', False, False) is numpy's shared descriptor: its state (size 16) is
    ignored, joblib reads 8 bytes per item and runs what follows. The scanner reads
    as joblib does, and sees the call."""
    dt = dtype("f8", (3, "<", None, None, None, 16, 8, 0), copy=False)
    data = _joblib_with_payload(dt, 4, b"\x00" * 32)
    assert _joblib_runs_payload(data, tmp_path)
    findings = scan(data, tmp_path, "model.joblib")
    assert any("builtins.print" in f for f in findings), findings


def test_size_from_state_for_a_fixed_type_is_refused(tmp_path: Path) -> None:
    """'f4' is 4 bytes whatever its state says (numpy ignores elsize for it): a scanner
    skipping 8 bytes per item would hide the call joblib runs. Refused outright."""
    dt = dtype("f4", (3, "<", None, None, None, 8, 8, 0))
    data = _joblib_with_payload(dt, 4, b"\x00" * 16)
    # joblib reads 16 bytes (4 × 4), then runs the call placed right after them.
    assert _joblib_runs_payload(data, tmp_path)
    assert unsafe(scan(data, tmp_path, "model.joblib"), "whose size numpy fixes")


@pytest.mark.parametrize("name", sorted(_real_dtypes()))
def test_joblib_array_byte_count_is_joblibs(name: str, tmp_path: Path) -> None:
    """For real dtypes, the bytes the scanner consumes for an array are the bytes
    joblib reads: the model's item size times the count is the array's nbytes."""
    real = _real_dtypes()[name]
    if real.hasobject or not real.itemsize:
        return  # an object array is a nested pickle; an empty item holds no bytes
    values = np.zeros(5, dtype=real)
    value = symbolic(joblib_bytes(values), tmp_path, joblib_file=True)
    assert isinstance(value, ArrayValue)
    assert value.nbytes == values.nbytes


# ---------------------------------------------------------------- ndarray, scalar, masked


def test_object_array_list_shorter_than_its_shape_is_refused(tmp_path: Path) -> None:
    """numpy's _setlist_pkl takes one list item per element without checking the
    list's length: a 4-million-element array from a one-item list reads far past it."""
    _refused_and_crashes(
        array(np.dtype("O"), (1 << 22,), [1]), "print(value[-1])", tmp_path, "one item per element"
    )


def test_array_data_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    """numpy 2 refuses data whose length is not shape × itemsize; the scanner does too
    (whatever numpy version loads the file)."""
    data = pickle.dumps(array(np.dtype("<i8"), (4,), b"\x00" * 8), protocol=4)
    assert unsafe(scan(data, tmp_path), "length")
    assert "buffer size does not match" in loads_in_subprocess(data, "", tmp_path).stderr


def test_array_of_a_dtype_that_is_not_a_dtype_is_refused(tmp_path: Path) -> None:
    data = pickle.dumps(array(np.float64, (1,), b"\x00" * 8), protocol=4)
    assert unsafe(scan(data, tmp_path), "not a numpy.dtype")


def test_array_class_called_directly_is_refused(tmp_path: Path) -> None:
    """ndarray(shape, dtype, buffer, offset, strides) is never how numpy pickles an
    array: the scanner would have to trust the offset and strides."""
    data = pickle.dumps(Reduce(np.ndarray, ((2,), np.dtype("u1"), b"ab", 0, (1,))), protocol=4)
    assert unsafe(scan(data, tmp_path), "called directly")


def test_array_built_twice_is_refused(tmp_path: Path) -> None:
    again = (
        ops(array(np.dtype("u1"), (2,), b"ab"))
        + ops((1, (2 << 20,), np.dtype("u1"), False, b""))
        + b"b"
    )
    assert unsafe(scan(whole(again), tmp_path), "already built")


def test_scalar_with_short_data_is_refused(tmp_path: Path) -> None:
    """numpy refuses scalar data shorter than the item; the scanner wants exactly one
    item, as numpy writes."""
    scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
    for raw in (b"\x00" * 4, b"\x00" * 9):
        data = pickle.dumps(Reduce(scalar, (np.dtype("<f8"), raw)), protocol=4)
        assert unsafe(scan(data, tmp_path), "exactly one item")
    short = pickle.dumps(Reduce(scalar, (np.dtype("<f8"), b"\x00" * 4)), protocol=4)
    assert "too small" in loads_in_subprocess(short, "", tmp_path).stderr


def test_scalar_of_an_object_dtype_without_object_flags_is_refused(tmp_path: Path) -> None:
    """scalar() reads the data of a dtype without the pointer flag as raw bytes."""
    scalar = np._core.multiarray.scalar  # type: ignore[attr-defined]
    bad = dtype("O8", (3, "|", None, None, None, -1, -1, 0))
    data = pickle.dumps(Reduce(scalar, (bad, b"\x41" * 8)), protocol=4)
    assert unsafe(scan(data, tmp_path), "flags")
    assert crashed(loads_in_subprocess(data, "print(repr(value))", tmp_path))


def test_masked_array_mask_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    real = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    func, args, state = cast("tuple[Any, tuple[Any, ...], tuple[Any, ...]]", real.__reduce__())
    short = Reduce(func, args, (*state[:5], b"\x00", *state[6:]))
    data = pickle.dumps(short, protocol=4)
    assert unsafe(scan(data, tmp_path), "mask")
    assert scan(pickle.dumps(Reduce(func, args, state), protocol=4), tmp_path) == []


# ---------------------------------------------------------------- random generators

_PICKLE_HELPERS = np.random._pickle  # type: ignore[attr-defined]
_BIT_GENERATOR_CTOR = getattr(_PICKLE_HELPERS, "__bit_generator_ctor")
_RANDOMSTATE_CTOR = getattr(_PICKLE_HELPERS, "__randomstate_ctor")
_GENERATOR_CTOR = getattr(_PICKLE_HELPERS, "__generator_ctor")


@pytest.mark.parametrize("pos", [625, 1 << 30, -1])
def test_mt19937_position_out_of_range_is_refused(pos: int, tmp_path: Path) -> None:
    """MT19937's next draw reads key[pos] unchecked: the first draw crashes."""
    state = np.random.MT19937(0).state
    state["state"]["pos"] = pos
    for payload in (
        Reduce(_BIT_GENERATOR_CTOR, ("MT19937",), state),  # numpy 1.x's form
        Reduce(_BIT_GENERATOR_CTOR, (np.random.MT19937,), (state, None)),  # numpy 2's
    ):
        data = pickle.dumps(payload, protocol=4)
        assert unsafe(scan(data, tmp_path), "MT19937 pos")
    if pos == 1 << 30:
        run = loads_in_subprocess(data, "print(np.random.Generator(value).random())", tmp_path)
        assert crashed(run), (run.returncode, run.stderr[-500:])


def test_randomstate_with_mt19937_position_out_of_range_is_refused(tmp_path: Path) -> None:
    state = np.random.RandomState(0).get_state(legacy=False)
    state["state"]["pos"] = 1 << 30
    for args in (("MT19937", _BIT_GENERATOR_CTOR), (np.random.MT19937(0),)):
        data = pickle.dumps(Reduce(_RANDOMSTATE_CTOR, args, state), protocol=4)
        assert unsafe(scan(data, tmp_path), "MT19937 pos")
    run = loads_in_subprocess(data, "print(value.random_sample())", tmp_path)
    assert crashed(run), (run.returncode, run.stderr[-500:])


def test_philox_buffer_position_out_of_range_is_refused(tmp_path: Path) -> None:
    """Philox draws buffer[buffer_pos] while it is below 4: a negative one reads
    before the buffer."""
    state = np.random.Philox(0).state
    state["buffer_pos"] = -(1 << 28)
    data = pickle.dumps(Reduce(_BIT_GENERATOR_CTOR, ("Philox",), state), protocol=4)
    assert unsafe(scan(data, tmp_path), "buffer_pos")
    run = loads_in_subprocess(data, "print(np.random.Generator(value).integers(1 << 62))", tmp_path)
    assert crashed(run), (run.returncode, run.stderr[-500:])


def test_generator_state_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    """numpy 1.x's Generator form hands its state to the named bit generator: a key
    of the wrong length or dtype is not numpy's."""
    state = np.random.MT19937(0).state
    state["state"]["key"] = np.zeros(10, dtype=np.uint32)
    data = pickle.dumps(
        Reduce(_GENERATOR_CTOR, ("MT19937", _BIT_GENERATOR_CTOR), state), protocol=4
    )
    assert unsafe(scan(data, tmp_path), "MT19937 key")


def test_generator_ctors_call_only_numpys_generators(tmp_path: Path) -> None:
    """__generator_ctor calls the constructor it is handed, __bit_generator_ctor any
    class: only numpy's own are allowed there."""
    for payload in (
        Reduce(_GENERATOR_CTOR, ("MT19937", np.dtype)),
        Reduce(_BIT_GENERATOR_CTOR, (np.ndarray,)),
        Reduce(_BIT_GENERATOR_CTOR, ("Nonexistent",)),
    ):
        assert unsafe(scan(pickle.dumps(payload, protocol=4), tmp_path)), payload.args


def test_seed_sequence_pool_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    real = np.random.SeedSequence(5)
    func, args, state = cast("tuple[Any, tuple[Any, ...], tuple[Any, ...]]", real.__reduce__())
    bad = Reduce(func, args, (state[0], state[1], np.zeros(2, dtype=np.uint32), 4, state[4]))
    assert unsafe(scan(pickle.dumps(bad, protocol=4), tmp_path), "SeedSequence pool")
    assert scan(pickle.dumps(real, protocol=4), tmp_path) == []


# ---------------------------------------------------------------- generated dtypes

_LEAVES = ["<i1", "<i2", ">i4", "<i8", "<u2", "<f4", ">f8", "<c8", "?", "S3", "<U2", "O", "V2"]
_LEAVES += ["<M8[s]", "<m8[7ms]"]


def _structured(children: st.SearchStrategy[np.dtype[Any]]) -> st.SearchStrategy[np.dtype[Any]]:
    fields = st.lists(children, min_size=1, max_size=4)
    packed = st.tuples(fields, st.booleans()).map(
        lambda t: np.dtype([(f"f{i}", d) for i, d in enumerate(t[0])], align=t[1])
    )
    # Explicit offsets with gaps and a padded item (numpy's dict form).
    gapped = st.tuples(fields, st.lists(st.integers(0, 5), min_size=5, max_size=5)).map(
        lambda t: _gapped(t[0], t[1])
    )
    subarray = st.tuples(children, st.lists(st.integers(1, 3), min_size=1, max_size=2)).map(
        lambda t: np.dtype((t[0], tuple(t[1])))
    )
    return st.one_of(packed, gapped, subarray)


def _gapped(fields: list[np.dtype[Any]], gaps: list[int]) -> np.dtype[Any]:
    offsets, end = [], 0
    for field, gap in zip(fields, gaps, strict=False):
        offsets.append(end + gap)
        end += gap + field.itemsize
    return np.dtype(
        {
            "names": [f"g{i}" for i in range(len(fields))],
            "formats": fields,
            "offsets": offsets,
            "itemsize": end + gaps[-1],
        }
    )


_DTYPES = st.recursive(st.sampled_from(_LEAVES).map(np.dtype), _structured, max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(real=_DTYPES, protocol=st.sampled_from([2, 4, 5]))
def test_generated_dtypes_are_modelled_exactly(real: np.dtype[Any], protocol: int) -> None:
    """Any dtype numpy builds (nested, aligned, gapped, subarrays, objects, datetimes)
    is modelled as numpy holds it, and an array of it scans clean."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tmp_path = Path(folder)
        value = symbolic(pickle.dumps(real, protocol=protocol), tmp_path)
        assert isinstance(value, numpy_dtype.DtypeObj)
        _same_layout(value.model, real)
        assert scan(pickle.dumps(np.zeros(2, dtype=real), protocol=protocol), tmp_path) == []


def test_joblib_object_array_is_an_array_value(tmp_path: Path) -> None:
    """joblib pickles an object array inside its file: the value is that array."""
    value = symbolic(
        joblib_bytes(np.array([1, "a", None], dtype=object)), tmp_path, joblib_file=True
    )
    assert isinstance(value, ArrayValue) and value.shape == (3,)
    assert value.objects is not None and value.ints() is None


def test_reconstruct_before_its_build_is_numpys_placeholder(tmp_path: Path) -> None:
    """_reconstruct alone makes an empty int8 array: modelled as that, not built."""
    data = pickle.dumps(Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b")), protocol=4)
    value = symbolic(data, tmp_path)
    assert isinstance(value, ArrayValue) and not value.built
    assert value.shape == (0,) and value.ints() == []


# ---------------------------------------------------------------- differential: mutated states


def _mutations(rng: random.Random, state: tuple[Any, ...]) -> tuple[Any, ...]:
    """One random change to a dtype state numpy wrote: a size, an alignment, flags,
    an offset, a subarray shape, a byte order, a version."""
    mutated = list(state)
    choice = rng.randrange(7)
    if choice == 0:
        mutated[5] = max(-1, state[5] + rng.choice([-8, -4, -1, 1, 4, 8, 1 << 20]))
    elif choice == 1:
        mutated[6] = rng.choice([-1, 1, 2, 4, 8, 16, 3])
    elif choice == 2:
        mutated[7] = rng.choice([0, 8, 16, 24, 27, 63, 144, -112, 155, 1])
    elif choice == 3 and state[4] is not None and state[3]:
        name = rng.choice(state[3])
        fields = dict(state[4])
        field = fields[name]
        fields[name] = (field[0], max(0, field[1] + rng.choice([-8, -1, 1, 4, 8, 1 << 20])))
        mutated[4] = fields
    elif choice == 4 and state[2] is not None:
        base, shape = state[2]
        mutated[2] = (base, tuple(n + rng.choice([-1, 1, 7]) for n in shape))
    elif choice == 5:
        mutated[1] = rng.choice(["<", ">", "|", "="])
    else:
        mutated[0] = rng.choice([1, 2, 3, 4, 5])
    return tuple(mutated)


def _zero(model: numpy_dtype.Dtype) -> Any:
    """An item numpy's setitem takes for a dtype holding objects (a list pickle)."""
    if model.fields is not None:
        return tuple(_zero(field.dtype) for field in model.fields)
    if model.subarray is not None:
        base, shape = model.subarray
        item = _zero(base)
        for n in reversed(shape):
            item = [item] * n
        return item
    return {"O": None, "U": "", "S": b"", "V": b""}.get(model.kind, 0)


def test_states_the_scanner_passes_do_not_hurt_numpy(tmp_path: Path) -> None:
    """Differential: random mutations of real dtype states. Every array the scanner
    passes loads in a child process with exactly the item size and object flag the
    scanner modelled, and survives touching every field; the rest are refused."""
    rng = random.Random(20261201)
    reals = [d for d in _real_dtypes().values() if not d.isbuiltin]
    passed: list[tuple[bytes, int, bool]] = []
    refused = 0
    for _ in range(400):
        real = rng.choice(reals)
        _, args, state = cast("tuple[Any, tuple[Any, ...], tuple[Any, ...]]", real.__reduce__())
        candidate = dtype(args[0], _mutations(rng, state))
        if scan(pickle.dumps(candidate, protocol=2), tmp_path):
            refused += 1
            continue
        value = symbolic(pickle.dumps(candidate, protocol=2), tmp_path)
        assert isinstance(value, numpy_dtype.DtypeObj)
        model = value.model
        raw: Any = [_zero(model)] * 2 if model.has_object else b"\x00" * (2 * model.itemsize)
        data = pickle.dumps(array(candidate, (2,), raw), protocol=2)
        assert scan(data, tmp_path) == []
        passed.append((data, model.itemsize, model.has_object))
    assert passed and refused, (len(passed), refused)
    folder = tmp_path / "passed"
    folder.mkdir()
    for i, (data, _, _) in enumerate(passed):
        (folder / f"{i}.pkl").write_bytes(data)
    code = textwrap.dedent(
        f"""
        import pickle, sys
        for i in range({len(passed)}):
            with open(f"{folder}/{{i}}.pkl", "rb") as f:
                try:
                    value = pickle.load(f)
                except Exception as exc:  # numpy 1.x refuses flags above 127
                    print("refused", type(exc).__name__)
                    continue
            uses = [value.tobytes, lambda: repr(value), value.copy, value.tolist]
            for name in value.dtype.names or ():
                uses += [lambda n=name: value[n].copy(), lambda n=name: repr(value[n])]
            for use in uses:
                try:  # numpy may refuse a use (an exception); it must not crash
                    use()
                except Exception:
                    pass
            print(value.dtype.itemsize, value.dtype.hasobject)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr[-1000:]
    seen = [tuple(line.split()) for line in run.stdout.splitlines()]
    assert seen == [(str(size), str(has)) for _, size, has in passed]


def test_joblib_content_is_read_only_when_asked_and_the_scan_resumes(tmp_path: Path) -> None:
    """joblib array data in a plain file is skipped by the scan and read when a
    validator first asks for it (mid-scan, from where the scan is, which it resumes):
    an array nobody checks costs no read and no budget."""
    arrays = {"asked": tree_nodes(), "ignored": np.arange(1000, dtype=np.int64), "last": 7}
    path = tmp_path / "lazy.joblib"
    path.write_bytes(joblib_bytes(arrays))
    fd = os.open(path, os.O_RDONLY)
    asked: list[ArrayValue] = []

    def validator_reads(vm: PickleMachine, wrapper: Obj, offset: int) -> Any:
        made = read_joblib_array(vm, wrapper, offset)
        if not asked:  # the first array: a validator reads it at once
            asked.append(made)
            assert made.ints("left_child") == [1, -1, 3, -1]
        return made

    try:
        machine = PickleMachine(
            FileSource(fd, path.stat().st_size), lambda use: None, validator_reads
        )
        value = machine.run()
        left = machine.budget.left
        assert left == ContentBudget.DEFAULT - tree_nodes().nbytes
        assert value.items["last"] == 7 and value.items["ignored"].shape == (1000,)
        assert list(value.items["ignored"].ints() or ()) == list(range(1000))
        assert machine.budget.left == left - 8000
    finally:
        os.close(fd)
