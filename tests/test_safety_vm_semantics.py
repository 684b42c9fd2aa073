"""The symbolic pickle machine against the real unpicklers, one test per mechanism.

Each reproducer is proven real first: the stock loader it targets (the C unpickler behind
`pickle.load`, the pure-Python `pickle._Unpickler` that `joblib.load` extends, or
`joblib.load` itself) runs its payload, in a forked child of a subprocess, and the payload
leaves a marker file (tests/malicious_corpus.py's machinery). Then the scan must refuse it
and name the payload's global. Files no loader unpickles must be called not a pickle, and
pathological inputs must scan in linear time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from malicious_corpus import (
    BUILD,
    EMPTY_DICT,
    EMPTY_TUPLE,
    MARK,
    MEMOIZE,
    NEWOBJ,
    NONE,
    POP,
    REDUCE,
    REPO,
    SETITEMS,
    STOP,
    Built,
    Case,
    Outcome,
    Target,
    assert_nothing_ran,
    build_corpus,
    by_name,
    dtype_ops,
    integer,
    load_corpus,
    os_system,
    os_system_text,
    proto,
    sglobal,
    tuple_of,
    ustr,
)
from pathological_inputs import PATHOLOGICAL

from integrity.safety.scanner import scan_path

SYSTEM = "os.system"


def sniffed(opening: bytes) -> Callable[[Target], bytes]:
    """A file that does not start with PROTO: `opening`, then os.system(...) in protocol 0
    text opcodes. The opening leaves nothing on the stack under the loader it targets."""
    return lambda t: opening + os_system_text(t) + STOP


def case(name: str, opening: bytes, control: str) -> Case:
    return Case(name, sniffed(opening), (SYSTEM,), control=control)


# Openings the machine used to take for a failure of every unpickler (so the file was "not a
# pickle", nothing runs), where one of them reads on: BUILD with a falsy state on a plain value,
# SETITEMS/APPENDS/ADDITEMS with an empty MARK, text numbers with a NUL byte.
BUILD_CASES = [
    case("build_none_state_on_an_int", integer(1) + NONE + BUILD + POP, "pickle"),
    case("build_none_state_on_an_int_python", integer(1) + NONE + BUILD + POP, "pickle_python"),
    case("build_zero_state_on_an_int", integer(1) + integer(0) + BUILD + POP, "pickle_python"),
    case("build_empty_dict_on_an_int", integer(1) + EMPTY_DICT + BUILD + POP, "pickle_python"),
    case("build_empty_tuple_on_none", NONE + EMPTY_TUPLE + BUILD + POP, "pickle_python"),
    case(
        "build_none_and_empty_slots_on_an_int",
        integer(1) + NONE + EMPTY_DICT + b"\x86" + BUILD + POP,
        "pickle",
    ),
]
EMPTY_MARK_CASES = [
    case("setitems_empty_mark_on_an_int", integer(1) + MARK + SETITEMS + POP, "pickle"),
    case("setitems_empty_mark_on_none_python", NONE + MARK + SETITEMS + POP, "pickle_python"),
    case("appends_empty_mark_on_an_int", integer(1) + MARK + b"e" + POP, "pickle"),
    case("additems_empty_mark_on_an_int", integer(1) + MARK + b"\x90" + POP, "pickle"),
    case("additems_empty_mark_on_a_frozenset", MARK + b"\x91" + MARK + b"\x90" + POP, "pickle"),
]
TEXT_NUMBER_CASES = [
    case("int_stops_at_nul", b"I1\x00junk\n" + POP, "pickle"),
    case("int_nothing_before_nul", b"I\x00junk\n" + POP, "pickle"),
    case("long_stops_at_nul", b"L7\x00junk\n" + POP, "pickle"),
    case("float_stops_at_nul", b"F1.5\x00junk\n" + POP, "pickle"),
    case("get_key_stops_at_nul", NONE + b"p0\n" + b"g0\x00junk\n" + POP + POP, "pickle"),
    case("put_key_stops_at_nul", NONE + b"p0\x00junk\n" + POP, "pickle"),
    # The other way round: only Python's float() takes these; the machine follows it.
    case("float_with_a_trailing_space", b"F1.5 \n" + POP, "pickle_python"),
    case("float_too_large_for_c", b"F1e999\n" + POP, "pickle_python"),
]


def _wrapper_state(shape: tuple[int, ...], *, align: bool) -> bytes:
    items = [
        (ustr("subclass"), sglobal("numpy", "ndarray")),
        (ustr("shape"), tuple_of(*(integer(n) for n in shape))),
        (ustr("order"), ustr("C")),
        (ustr("dtype"), dtype_ops("u1", "|")),
    ]
    if align:
        items.append((ustr("numpy_array_alignment_bytes"), integer(16)))
    return EMPTY_DICT + MARK + b"".join(k + v for k, v in items) + SETITEMS


def _second_build_merges(target: Target) -> bytes:
    """A wrapper (memoized) built once with an alignment, then again, from the memo, with a
    full state that has none. joblib merges the second state into the wrapper's __dict__:
    the alignment stays, it reads a padding byte and padding before the 2 data bytes. A
    scanner that replaces the state skips 2 bytes only and takes the padding for opcodes: a
    SHORT_BINBYTES that swallows the payload joblib runs."""
    payload = os_system(target)
    wrapper = sglobal("joblib.numpy_pickle", "NumpyArrayWrapper") + EMPTY_TUPLE + NEWOBJ
    first = wrapper + MEMOIZE + _wrapper_state((0,), align=True) + BUILD + b"\x00"
    second = b"h\x00" + _wrapper_state((2,), align=False) + BUILD
    hidden = b"\x02" + b"z" + b"C" + bytes([1 + len(payload)]) + b"x"
    return proto(4) + first + POP + second + hidden + payload + POP + STOP


def _array_data_starts_with_nul_int(target: Target) -> bytes:
    """A joblib array whose data bytes plain pickle.load (C) reads as opcodes: an INT that
    only C parses (it stops at the NUL), then the payload. joblib.load skips them all."""
    inner = b"I1\x00x\n" + POP + os_system(target) + POP
    wrapper = sglobal("joblib.numpy_pickle", "NumpyArrayWrapper") + EMPTY_TUPLE + NEWOBJ
    return proto(4) + wrapper + _wrapper_state((len(inner),), align=False) + BUILD + inner + STOP


MERGE_CASES = [
    Case(
        "joblib_second_build_merges_the_alignment",
        _second_build_merges,
        (SYSTEM,),
        control="joblib",
        filename="model.joblib",
    ),
]
LOOKAHEAD_CASES = [
    Case(
        "plain_load_reads_array_data_through_a_c_only_int",
        _array_data_starts_with_nul_int,
        (SYSTEM,),
        control="pickle",
        filename="model.joblib",
    ),
]


def _planted(method: str, then: Callable[[Target], bytes], func: str) -> Callable[[Target], bytes]:
    """An OrderedDict (allowed) whose BUILD state sets `method` to a dangerous function,
    then the opcode that looks it up on the object and calls it with the command."""

    def build(target: Target) -> bytes:
        made = sglobal("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
        module, name = func.split(".")
        state = EMPTY_DICT + ustr(method) + sglobal(module, name) + b"s"
        return proto(4) + made + state + BUILD + then(target) + STOP

    return build


def _argv(target: Target) -> bytes:
    return MARK + ustr("touch") + ustr(str(target.marker)) + b"e"  # extend(["touch", path])


PLANTED_CASES = [
    Case("planted_append", _planted("append", lambda t: ustr(t.shell) + b"a", SYSTEM), (SYSTEM,)),
    Case("planted_extend", _planted("extend", _argv, "subprocess.call"), ("subprocess.call",)),
    Case(
        "planted_setstate",
        _planted("__setstate__", lambda t: ustr(t.shell) + BUILD, SYSTEM),
        (SYSTEM,),
    ),
]
ALL_CASES = (
    PLANTED_CASES
    + BUILD_CASES
    + EMPTY_MARK_CASES
    + TEXT_NUMBER_CASES
    + MERGE_CASES
    + LOOKAHEAD_CASES
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:
    with build_corpus(tmp_path_factory.mktemp("vm"), ALL_CASES) as built:
        yield built


@pytest.fixture(scope="module")
def controls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Outcome, bool]]]:
    """Each case, built afresh and loaded by its stock loader: (outcome, marker made)."""
    root = tmp_path_factory.mktemp("vm-controls")
    with load_corpus(root, ALL_CASES, lambda c: c.control, wait_seconds=5) as loaded:
        yield loaded


def _assert_real_and_refused(
    case: Case, corpus: dict[str, Built], controls: dict[str, tuple[Outcome, bool]]
) -> None:
    outcome, marker_made = controls[case.name]
    assert marker_made, f"{case.control} did not run the payload: {outcome}"
    item = corpus[case.name]
    result = scan_path(item.path)
    assert not result.safe, f"{case.name}: scan says safe ({result.format})"
    assert result.format != "not-pickle"
    for name in case.globals:
        assert any(f.global_name == name for f in result.findings), result.findings
    assert_nothing_ran(item)


@by_name(BUILD_CASES)
def test_build_with_a_falsy_state_on_a_plain_value_reads_on(
    case: Case, corpus: dict[str, Built], controls: dict[str, tuple[Outcome, bool]]
) -> None:
    _assert_real_and_refused(case, corpus, controls)


@by_name(EMPTY_MARK_CASES)
def test_container_opcodes_with_an_empty_mark_read_on(
    case: Case, corpus: dict[str, Built], controls: dict[str, tuple[Outcome, bool]]
) -> None:
    _assert_real_and_refused(case, corpus, controls)


@by_name(TEXT_NUMBER_CASES)
def test_c_text_numbers_stop_at_a_nul_byte(
    case: Case, corpus: dict[str, Built], controls: dict[str, tuple[Outcome, bool]]
) -> None:
    _assert_real_and_refused(case, corpus, controls)


@by_name(MERGE_CASES)
def test_joblib_build_merges_the_wrapper_state(
    case: Case, corpus: dict[str, Built], controls: dict[str, tuple[Outcome, bool]]
) -> None:
    _assert_real_and_refused(case, corpus, controls)


@by_name(PLANTED_CASES)
def test_build_state_cannot_plant_a_method_the_unpickler_calls(
    case: Case, corpus: dict[str, Built], controls: dict[str, tuple[Outcome, bool]]
) -> None:
    _assert_real_and_refused(case, corpus, controls)


@pytest.mark.parametrize("method", ["append", "extend", "__setstate__", "add"])
def test_a_planted_method_is_refused_even_when_it_is_allowed(method: str, tmp_path: Path) -> None:
    """Whatever the planted value (here an allowed class), the later call is one the scan
    never checks: the BUILD that plants it is refused."""
    made = sglobal("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    planted = sglobal("collections", "OrderedDict")
    state = EMPTY_DICT + ustr(method) + planted + b"s"
    path = tmp_path / "planted.pkl"
    path.write_bytes(proto(4) + made + state + BUILD + STOP)
    result = scan_path(path)
    assert [f.code for f in result.findings] == ["indirect-call"]
    assert method in result.findings[0].message


@by_name(LOOKAHEAD_CASES)
def test_plain_load_through_array_data_follows_c_natures(
    case: Case, corpus: dict[str, Built], controls: dict[str, tuple[Outcome, bool]]
) -> None:
    _assert_real_and_refused(case, corpus, controls)


# ------------------------------------------------------------------ not a pickle

# What no loader unpickles (every one fails before it names a global) is not a pickle: no
# finding. An 8-byte PNG signature is NEWFALSE, then PERSID, which fails without a
# persistent_load; text whose first bytes are opcodes fails as the unpicklers fail.
NOT_PICKLES = {
    "png_signature": b"\x89PNG\r\n\x1a\n",
    "png_with_header": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01",
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "csv_starting_with_int": b"Id,Name\n1,Ann\n2,Bob\n",
    "csv_starting_with_unicode": b"Value,Weight\n1,2\n3,4\n",
    "csv_starting_with_float": b"Feature,Score\n1.5,2\n",
    # SHORT_BINSTRING of 115 bytes ("s"), not ASCII: the stock loaders fail there.
    "csv_starting_with_binstring": b"User,Name\n" + "1,Zoë\n".encode() * 40,
    "csv_int_then_build_on_it": b"I12\nb,c\n",
}


def _constant(data: bytes, target: Target) -> bytes:
    return data


def _text_case(name: str, data: bytes, control: str) -> Case:
    return Case(f"{name}-{control}", partial(_constant, data), control=control)


NOT_PICKLE_LOADS = [
    _text_case(name, data, control)
    for name, data in NOT_PICKLES.items()
    for control in ("pickle", "pickle_python")
]


@pytest.fixture(scope="module")
def not_pickle_loads(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Outcome, bool]]]:
    root = tmp_path_factory.mktemp("not-pickles")
    with load_corpus(root, NOT_PICKLE_LOADS, lambda c: c.control, wait_seconds=0) as loaded:
        yield loaded


@pytest.mark.parametrize("name", list(NOT_PICKLES))
def test_what_no_loader_unpickles_is_not_a_pickle(
    name: str, tmp_path: Path, not_pickle_loads: dict[str, tuple[Outcome, bool]]
) -> None:
    for control in ("pickle", "pickle_python"):
        outcome, _ = not_pickle_loads[f"{name}-{control}"]
        assert outcome["outcome"] == "raised", f"{control} loads it: {outcome}"
    path = tmp_path / name
    path.write_bytes(NOT_PICKLES[name])
    result = scan_path(path)
    assert (result.format, result.findings) == ("not-pickle", [])


def test_a_persistent_id_that_a_loader_with_persistent_load_calls_is_refused(
    tmp_path: Path,
) -> None:
    """Stock loaders fail at PERSID, so a PNG is not a pickle; one with a persistent_load
    reads on, so what it calls after is refused, with the persistent id named."""
    path = tmp_path / "persistent.pkl"
    path.write_bytes(b"Pos system\n(S'true'\ntR.")
    result = scan_path(path)
    assert result.format == "pickle"
    assert {f.code for f in result.findings} >= {"persistent-id", "indirect-call"}


# ------------------------------------------------------------------ array spans


def test_array_spans_are_where_joblib_keeps_the_raw_array_data(tmp_path: Path) -> None:
    import joblib
    import numpy as np

    arrays = [np.arange(5, dtype="<f8"), np.array([[1, 2], [3, 4]], dtype="<i4"), np.zeros(0)]
    path = tmp_path / "arrays.joblib"
    joblib.dump({"a": arrays[0], "b": arrays[1], "c": arrays[2]}, path)
    result = scan_path(path)
    assert result.safe, result.findings
    data = path.read_bytes()
    assert len(result.array_spans) == 3
    previous_end = 0
    for (start, end), array in zip(result.array_spans, arrays, strict=True):
        assert previous_end <= start < end <= len(data)
        padding = data[start]
        assert data[start + 1 : start + 1 + padding] == b"\xff" * padding
        assert data[start + 1 + padding : end] == array.tobytes()
        previous_end = end


def test_array_spans_count_decompressed_bytes_in_a_compressed_file(tmp_path: Path) -> None:
    import joblib
    import numpy as np

    array = np.arange(1000, dtype="<i8")
    path = tmp_path / "array.joblib.z"
    joblib.dump(array, path, compress=("zlib", 3))
    result = scan_path(path)
    assert result.safe, result.findings
    data = zlib.decompress(path.read_bytes())
    [(start, end)] = result.array_spans
    assert data[start + 1 + data[start] : end] == array.tobytes()


def test_array_spans_follow_a_second_build_of_the_same_wrapper(tmp_path: Path) -> None:
    """The memoized wrapper built again: joblib reads array data again, with the merged
    attributes (the first state's alignment: a padding byte and padding first)."""
    path = tmp_path / "rebuilt.joblib"
    payload = b"\x8c\x01x"  # a harmless string where the merge test hides its payload
    path.write_bytes(
        _second_build_merges(Target(tmp_path / "never")).replace(
            os_system(Target(tmp_path / "never")), payload + b"\x8c\x01y\x86"
        )
    )
    result = scan_path(path)
    data = path.read_bytes()
    [first, second] = result.array_spans
    assert data[first[0]] == 0 and first[1] == first[0] + 1  # padding byte 0, no data
    assert data[second[0]] == 2 and second[1] == second[0] + 1 + 2 + 2


def test_array_spans_repeat_for_a_wrapper_built_again_with_no_state(tmp_path: Path) -> None:
    """BUILD None on the memoized wrapper changes nothing, and joblib reads its data again."""
    wrapper = sglobal("joblib.numpy_pickle", "NumpyArrayWrapper") + EMPTY_TUPLE + NEWOBJ
    first = wrapper + MEMOIZE + _wrapper_state((3,), align=False) + BUILD + b"abc" + POP
    path = tmp_path / "again.joblib"
    path.write_bytes(proto(4) + first + b"h\x00" + NONE + BUILD + b"def" + STOP)
    result = scan_path(path)
    assert result.safe, result.findings
    [(start1, end1), (start2, end2)] = result.array_spans
    data = path.read_bytes()
    assert (data[start1:end1], data[start2:end2]) == (b"abc", b"def")


@pytest.mark.parametrize("content", [b"\x80\x04N.", b"plain text, not a pickle\n"])
def test_array_spans_are_empty_without_arrays(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(content)
    assert scan_path(path).array_spans == []


# ------------------------------------------------------------------ linear time

# Each input is scanned in a subprocess (a C-level loop cannot be interrupted) beside an
# ordinary pickle of similar size (many small dicts, as a model's state is), in the same
# process; its time per byte must stay within a small multiple of the ordinary one's.
LINEAR_PROBE = """
import json, pickle, sys, time
from pathlib import Path
from integrity.safety.scanner import scan_path
ordinary = Path(sys.argv[2])
rows = [{"name": f"feature_{i}", "mean": i * 0.5, "scale": 1.0, "n": i} for i in range(6000)]
ordinary.write_bytes(pickle.dumps(rows, protocol=4))
def per_byte(path):
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        scan_path(path)
        best = min(best, time.perf_counter() - start)
    return best / path.stat().st_size
print(json.dumps({"ordinary": per_byte(ordinary), "input": per_byte(Path(sys.argv[1]))}))
"""
MAX_RATIO = 12  # linear scans measure 1-4x; the superlinear ones 19x to hours


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_input_scans_in_linear_time(name: str, tmp_path: Path) -> None:
    build, scale = PATHOLOGICAL[name]
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(build(scale))
    try:
        run = subprocess.run(
            [sys.executable, "-c", LINEAR_PROBE, str(path), str(tmp_path / "ordinary.pkl")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the scan of a {path.stat().st_size}-byte {name} did not end in 120 s")
    times = json.loads(run.stdout)
    ratio = times["input"] / times["ordinary"]
    assert ratio < MAX_RATIO, f"{name}: {ratio:.1f}x an ordinary pickle's time per byte"


# ------------------------------------------------------------------ every failure, both loaders

# Openings of a file that does not start with PROTO, each followed by NONE and STOP. The
# scan calls the file not a pickle exactly when both stock unpicklers fail on it: a point
# where the machine stops as "every unpickler fails" is one where both really do.
OPENINGS = {
    "build_none": b"K\x01Nb",
    "build_zero": b"K\x01K\x00b",
    "build_empty_dict": b"K\x01}b",
    "build_empty_tuple": b"K\x01)b",
    "build_none_empty_slots": b"K\x01N}\x86b",
    "build_none_none_slots": b"K\x01NN\x86b",
    "build_empty_dict_none_slots": b"K\x01}N\x86b",
    "build_truthy_state": b"K\x01K\x01b",
    "build_short_stack": b"Nb",
    "setitems_empty": b"K\x01(u",
    "setitems_empty_nothing_below": b"(u",
    "setitems_odd": b"}(Nu",
    "appends_empty_on_int": b"K\x01(e",
    "appends_empty_on_list": b"](e",
    "additems_empty_on_int": b"K\x01(\x90",
    "additems_empty_on_set": b"\x8f(\x90",
    "additems_empty_on_frozenset": b"(\x91(\x90",
    "additems_on_frozenset": b"(\x91(K\x01\x90",
    "int_nul": b"I1\x00x\n",
    "int_only_nul": b"I\x00\n",
    "int_octal": b"I010\n",
    "int_not_a_number": b"Ix\n",
    "int_empty": b"I\n",
    "long_nul": b"L1\x00x\n",
    "long_suffix": b"L1L\n",
    "long_not_a_number": b"Lx\n",
    "float_nul": b"F1.5\x00x\n",
    "float_trailing_space": b"F1.5 \n",
    "float_underscore": b"F1_0\n",
    "float_too_large_for_c": b"F1e999\n",
    "float_bad_exponent": b"F1e\n",
    "get_nul": b"Np0\ng0\x00x\n0",
    "put_nul": b"Np0\x00x\n0",
    "put_negative": b"Np-1\n",
    "get_missing": b"g0\n",
    "binget_missing": b"h\x00",
    "pop_empty": b"0",
    "pop_mark_without_mark": b"1",
    "dup_empty": b"2",
    "dict_odd": b"(Nd",
    "stack_global_not_str": b"K\x01K\x02\x93",
    "obj_without_class": b"(o",
    "reduce_a_string": b"\x8c\x01a)R",
    "readonly_buffer_on_none": b"N\x98",
    "next_buffer": b"\x97",
    "string_unquoted": b"S'a\n",
    "binstring_negative": b"T\xff\xff\xff\xff",
    "unicode_bad_escape": b"V\\u12\n",
    "png_signature": b"\x89PNG\r\n\x1a\n",
    "unknown_opcode": b"\x00",
}
OPENING_LOADS = [
    _text_case(name, opening + b"N.", control)
    for name, opening in OPENINGS.items()
    for control in ("pickle", "pickle_python")
]


@pytest.fixture(scope="module")
def opening_loads(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[Outcome, bool]]]:
    root = tmp_path_factory.mktemp("openings")
    with load_corpus(root, OPENING_LOADS, lambda c: c.control, wait_seconds=0) as loaded:
        yield loaded


@pytest.mark.parametrize("name", list(OPENINGS))
def test_not_a_pickle_exactly_where_both_unpicklers_fail(
    name: str, tmp_path: Path, opening_loads: dict[str, tuple[Outcome, bool]]
) -> None:
    fails = {
        control: opening_loads[f"{name}-{control}"][0]["outcome"] == "raised"
        for control in ("pickle", "pickle_python")
    }
    path = tmp_path / name
    path.write_bytes(OPENINGS[name] + b"N.")
    result = scan_path(path)
    assert (result.format == "not-pickle") == all(fails.values()), (fails, result)
    if result.format == "not-pickle":
        assert result.findings == []


def test_a_byte_string_not_ascii_is_read_on_as_a_loader_given_an_encoding_would(
    tmp_path: Path,
) -> None:
    """The default loaders fail on it; pickle.load(f, encoding="latin1") reads on, so a
    file that goes on to a STOP is a pickle, with the finding, not 'not a pickle'."""
    path = tmp_path / "latin1.pkl"
    path.write_bytes(b"U\x02\xc3\xa9N.")
    result = scan_path(path)
    assert (result.format, [f.code for f in result.findings]) == ("pickle", ["not-ascii"])
