"""Differential tests: the scanner's verdict against what every real loader does.

A "safe" verdict is a claim about every loader a user may run. Hypothesis generates inputs
aimed at the places where a static reader and an unpickler can part ways, the scanner reads
each, and every file it passes is loaded, in a sandboxed subprocess (tests/sandbox.py), by
the C unpickler (`pickle.load`), the pure-Python one (`pickle._Unpickler`), `joblib.load`,
`numpy.load(allow_pickle=True)` and this project's `load_model`. The properties:

1. Only reported globals: for a file the scan passes, every global any loader resolves is
   one the scan reported in `globals_used` (the sandbox refuses the others, so a payload
   never runs: the refusal is the failure).
2. Same array bytes: joblib reads array data exactly at the spans the scan skipped
   (`ScanResult.array_spans`; `NumpyArrayWrapper.read_array` is instrumented to record
   the offsets it reads from and to).
3. No crash: no loader process dies of a signal on a file the scan passed.
4. Not a pickle means not loadable: for a file the scan calls "not-pickle", every loader
   fails before it resolves any global.

The generators (each with a payload, a call of a global the allow-list refuses):
- openings: no PROTO, then opcodes a sniffing scanner may take for the end of a pickle
  where an unpickler reads on (BUILD with a falsy state on a non-object; SETITEMS, APPENDS,
  ADDITEMS after an empty MARK; text INT/LONG/FLOAT with a NUL byte, leading zeros, signs,
  underscores, whitespace; PERSID, EXT, frames, memo keys), then the payload;
- joblib files, raw and compressed: NumpyArrayWrapper states over every numpy dtype spec
  (with and without numpy's state, copy False/True, structured and subarray dtypes, object
  arrays), alignment padding, second BUILDs on the memoized wrapper, payloads after the
  array data and inside it (plain pickle.load reads array data as opcodes);
- `.npy` and `.npz` files with object dtypes in every spelling (numpy.load unpickles them).

Each property test generates and scans in-process (the scanner never runs what it reads),
then loads every accepted file in one batch; the test fails listing every violation, the
first few shrunk by `minimize` (delta debugging through the sandbox) to a short reproducer
(hex). Settings are derandomized so CI runs the same examples every time;
SAFETY_FUZZ_SCALE=N multiplies the example counts (a campaign), SAFETY_FUZZ_REPORT=FILE
appends each test's figures to FILE as JSON lines.

Bypasses these properties found are kept below as explicit cases, one per mechanism
(`BYPASSES`): each is shown to fool its loaders and to be refused by the scan. The
generators tag each input with the known mechanisms it uses; a violation of an input so
tagged is counted but does not fail the property test while that mechanism's reproducer
still passes the scan (its own explicit case fails then, and names the mechanism).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import struct
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from malicious_corpus import sglobal, ustr
from sandbox import MODES, LoadJob, LoadOutcome, Sandbox
from test_safety_fuzz import COMPRESSORS, OPCODE, npy

from integrity.safety.allowlist import AllowList
from integrity.safety.scanner import ScanResult, scan_path

SCALE = float(os.environ.get("SAFETY_FUZZ_SCALE", "1"))
REPORT = os.environ.get("SAFETY_FUZZ_REPORT")
ALLOWLIST = AllowList()  # the default allow-list: the verdict users get
MAX_MINIMIZED = 5  # violations shrunk per test run (each shrink costs sandbox round trips)


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


DIFFERENTIAL = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)

Pair = tuple[str, str]


# ---------------------------------------------------------------- payloads

# Each pushes one value: a call of a global the default allow-list refuses. The sandbox's
# gated find_class refuses them (never imported), and its audit hook stops a shell anyway.
PAYLOADS: list[bytes] = [
    b"cposix\nsystem\n(S'true'\ntR",  # GLOBAL (protocol 0 text)
    sglobal("posix", "system") + b"(" + ustr("true") + b"tR",  # STACK_GLOBAL
    b"(S'true'\niposix\nsystem\n",  # INST
    b"cbuiltins\neval\n(S'1'\ntR",
    b"cos\nsystem\n",  # resolving the global is enough to be a violation
]
PAYLOAD = st.sampled_from(PAYLOADS)


# ---------------------------------------------------------------- openings


# A generated input: its bytes, and the known bypass mechanisms (BYPASSES) it uses.
Generated = tuple[bytes, frozenset[str]]
Piece = tuple[bytes, str | None]  # opcodes, and the known mechanism they use, if any
_NUL_MECHANISM = {
    b"I": "int-text-stops-at-nul",
    b"L": "long-text-stops-at-nul",
    b"F": "float-text-stops-at-nul",
}


def _text_numbers() -> st.SearchStrategy[Piece]:
    """INT, LONG and FLOAT text arguments the C and Python parsers read differently."""
    spellings = st.one_of(
        st.sampled_from(
            [
                "1\x00",
                "1\x00x",
                "0\x00",
                "\x00",
                "01",
                "08",
                "010",
                "007",
                "00",
                "0x10",
                "0o7",
                "0b1",
                "+1",
                "-0",
                "--1",
                "1_0",
                "_1",
                " 1",
                "1 ",
                "\t1",
                "1\r",
                "1e3",
                "1.",
                ".5",
                "inf",
                "nan",
                "0x1p3",
                "1L",
                "\u0663",
                "9" * 20,
                "9" * 20 + "\x00",
            ]
        ),
        st.text(alphabet="0123456789+-_ .\x00\teLxnai", max_size=6),
    )
    opcode = st.sampled_from([b"I", b"L", b"F"])
    return st.tuples(opcode, spellings).map(
        lambda t: (
            t[0] + t[1].encode("utf-8").replace(b"\n", b"") + b"\n",
            _NUL_MECHANISM[t[0]] if "\x00" in t[1] else None,
        )
    )


_TARGETS = [b"N", b"K\x00", b"K\x01", b")", b"]", b"}", b"\x88", b"\x89", b"U\x00", b"C\x00"]
_TARGETS += [b"\x8c\x00", b"I00\n", b"I01\n", b"F0.0\n", b"\x8f", b"(t", b"(l", b"(d"]
_FALSY = [b"N", b"\x89", b"K\x00", b")", b"]", b"}", b"U\x00", b"C\x00", b"\x8c\x00", b"I00\n"]
_FALSY += [b"F0.0\n", b"J\x00\x00\x00\x00", b"\x8a\x00", b"(t", b"\x8f"]


def _falsy_builds() -> st.SearchStrategy[Piece]:
    """BUILD with a falsy state on something that is not an object: a no-op in both
    unpicklers for None, and for other falsy states in some."""
    return st.tuples(st.sampled_from(_TARGETS), st.sampled_from(_FALSY)).map(
        lambda t: (
            t[0] + t[1] + b"b",
            "build-none-state-on-non-object" if t[1] == b"N" else "build-falsy-state-on-non-object",
        )
    )


_EMPTY_MARK_MECHANISM = {
    b"u": "setitems-after-empty-mark",
    b"e": "appends-after-empty-mark",
    b"\x90": "additems-after-empty-mark",
}


def _empty_mark_ops() -> st.SearchStrategy[Piece]:
    """A container opcode after an empty MARK, on a target that may not be a container."""
    ops = [b"u", b"e", b"\x90", b"d", b"l", b"t", b"\x91", b"1", b"a", b"s"]
    return st.tuples(st.sampled_from(_TARGETS), st.sampled_from(ops)).map(
        lambda t: (t[0] + b"(" + t[1], _EMPTY_MARK_MECHANISM.get(t[1]))
    )


_ODD = [
    b"Pabc\n",  # PERSID
    b"NQ",  # BINPERSID
    b"\x82\x01",  # EXT1
    b"\x83\x01\x00",
    b"\x84\x01\x00\x00\x00",
    b"\x82\x00",
    b"\x95" + struct.pack("<Q", 0),  # FRAME without PROTO
    b"\x95" + struct.pack("<Q", 1),
    b"\x80\x02",  # PROTO in the middle
    b"\x80\x05",
    b"Np08\n",  # PUT with a leading zero
    b"Np 1\n",
    b"Np-1\n",
    b"Np1_0\n",
    b"g0\n",
    b"N\x94h\x00",
    b"S'\x00'\n",
    b'S"x"\n',
    b"V\\u0041\n",
    b"N2",
    b"0",
    b"1",
    b"(",
    b"\x97",  # NEXT_BUFFER
    b"N\x98",  # READONLY_BUFFER
]


def _untagged(pieces: st.SearchStrategy[bytes]) -> st.SearchStrategy[Piece]:
    return pieces.map(lambda b: (b, None))


def _opening_piece() -> st.SearchStrategy[Piece]:
    return st.one_of(
        _falsy_builds(),
        _empty_mark_ops(),
        _text_numbers(),
        _text_numbers().map(lambda piece: (piece[0] + b"0", piece[1])),
        _untagged(st.sampled_from(_ODD)),
        _untagged(OPCODE),
    )


@st.composite
def openings(draw: st.DrawFn) -> Generated:
    """No PROTO (so the scanner sniffs), a misleading opening, then a payload."""
    pieces = draw(st.lists(_opening_piece(), min_size=1, max_size=4))
    separator = draw(st.sampled_from([b"", b"0", b"1", b"(", b"N", b"00"]))
    end = draw(st.sampled_from([b".", b"", b"0N."]))
    data = b"".join(b for b, _ in pieces) + separator + draw(PAYLOAD) + end
    return data, frozenset(tag for _, tag in pieces if tag is not None)


# ---------------------------------------------------------------- joblib files


def _integer(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def encode(value: Any) -> bytes:
    """Opcodes that push `value` (the plain values numpy's and joblib's states hold)."""
    if value is None:
        return b"N"
    if value is True or value is False:
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return _integer(value)
    if isinstance(value, str):
        return ustr(value)
    if isinstance(value, bytes):
        return b"C" + bytes([len(value)]) + value if len(value) < 256 else b"B" + value
    if isinstance(value, tuple):
        return b"(" + b"".join(encode(v) for v in value) + b"t"
    if isinstance(value, dict):
        return b"}(" + b"".join(encode(k) + encode(v) for k, v in value.items()) + b"u"
    if isinstance(value, np.dtype):
        return encode_dtype(_canonical(value))
    raise TypeError(f"cannot encode {type(value).__name__}")


def dtype_ops(spec: str, align: bool, copy: bool, state: tuple[Any, ...] | None) -> bytes:
    """numpy.dtype(spec, align, copy), then BUILD with `state` unless it is None."""
    out = sglobal("numpy", "dtype") + encode((spec, align, copy)) + b"R"
    return out if state is None else out + encode(state) + b"b"


def encode_dtype(
    dtype: DtypeSpec,
    *,
    copy: bool = True,
    state: bool = True,
    flags: int | None = None,
    elsize: int | None = None,
    shift: int = 0,
) -> bytes:
    """numpy.dtype(spec, align, copy) with numpy's own BUILD state (as numpy pickles it),
    or without it, or with another `copy`, object `flags`, item size, or field offsets
    moved by `shift`; `spec` as given, not only numpy's own spelling of it."""
    spec, real = dtype
    reduced: Any = real.__reduce__()
    _, (_, align, _), numpy_state = reduced
    edited = list(numpy_state)
    if flags is not None:
        edited[7] = flags
    if elsize is not None:
        edited[5] = elsize
    if shift and isinstance(edited[4], dict):
        edited[4] = {k: (v[0], v[1] + shift, *v[2:]) for k, v in edited[4].items()}
    return dtype_ops(spec, align, copy, tuple(edited) if state else None)


def _numpy_dtypes() -> list[tuple[str, np.dtype[Any]]]:
    """Every dtype spec string numpy accepts, with its dtype: type codes, names, sized codes
    in each byte order, datetime units (numpy.dtype on strings here: nothing is loaded)."""
    candidates = set(np.typecodes["All"]) | {k for k in np.sctypeDict if isinstance(k, str)}
    for code in "biufcSUVOMm?":
        for size in ("", "1", "2", "3", "4", "8", "10", "12", "16", "32"):
            for order in ("", "<", ">", "|", "="):
                candidates.add(order + code + size)
    for unit in ("Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as", "10s"):
        candidates |= {f"M8[{unit}]", f"<m8[{unit}]", f">M8[{unit}]"}
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 'a', numpy 2's alias of 'S'
        for spec in sorted(candidates):
            try:
                found.append((spec, np.dtype(spec)))
            except (TypeError, ValueError):
                continue
    return found


NUMPY_DTYPES = _numpy_dtypes()
COMPOSITE_DTYPES: list[np.dtype[Any]] = [
    np.dtype([("a", "<i4"), ("b", ">f8")]),
    np.dtype([("a", "<i4"), ("b", "O")]),
    np.dtype([("a", "f4", (2, 2)), ("b", "u1")]),
    np.dtype(("f4", (2,))),
    np.dtype(("O", (2,))),
    np.dtype({"names": ["x"], "formats": ["<i2"], "offsets": [4], "itemsize": 8}),
    np.dtype([("a", "u1"), ("b", "<i8")], align=True),
    np.dtype([("outer", [("inner", "<f2")])]),
]
DtypeSpec = tuple[str, np.dtype[Any]]  # the spec string written in the pickle, its dtype


def _canonical(dtype: np.dtype[Any]) -> DtypeSpec:
    spec: str = dtype.__reduce__()[1][0]
    return spec, dtype


def dtypes() -> st.SearchStrategy[DtypeSpec]:
    """A spec as numpy pickles it (most often: files the scan passes reach the loaders), or
    as any other spelling numpy.dtype accepts (for the same dtype)."""
    return st.one_of(
        st.sampled_from(NUMPY_DTYPES).map(lambda pair: _canonical(pair[1])),
        st.sampled_from(NUMPY_DTYPES).map(lambda pair: _canonical(pair[1])),
        st.sampled_from([_canonical(d) for d in COMPOSITE_DTYPES]),
        st.sampled_from(NUMPY_DTYPES),
    )


WRAPPER = sglobal("joblib.numpy_pickle", "NumpyArrayWrapper")
# Opcodes that parse from either of their bytes on (push None, pop it): where a reader lands
# in a run of them it reads on, whatever offset it lands at.
LANDING_STRIP = b"N0"


@dataclass
class JoblibBuilder:
    """Assembles a joblib file's pickle; tracks the memo so later opcodes can refer back."""

    memo: int = 0
    parts: list[bytes] = field(default_factory=list)

    def memoize(self) -> int:
        self.parts.append(b"\x94")
        self.memo += 1
        return self.memo - 1


# The same mechanisms met by the scanner's look-ahead through joblib array data.
LOOKAHEAD_MECHANISM = {
    "build-none-state-on-non-object": "lookahead-build-none-state",
    "setitems-after-empty-mark": "lookahead-setitems-after-empty-mark",
    "int-text-stops-at-nul": "lookahead-int-text-stops-at-nul",
}
UINT8 = dtype_ops("u1", False, True, None)
_STATE_MECHANISM = {
    "copy-false": "shared-dtype-descriptor-ignores-state",
    "elsize": "fixed-size-dtype-itemsize-from-state",
    "offsets": "dtype-field-offset-outside-item",
}


def _wrapper_state(draw: st.DrawFn, dtype: DtypeSpec, shape: tuple[int, ...]) -> Piece:
    """joblib's wrapper state, sometimes with the dtype spelled another way."""
    kinds = ["numpy"] * 6 + ["no-state", "copy-false", "flags", "elsize", "offsets"]
    how = draw(st.sampled_from(kinds))
    if how == "numpy":
        ops = encode_dtype(dtype)
    elif how == "no-state":
        ops = encode_dtype(dtype, state=False, copy=draw(st.booleans()))
    elif how == "copy-false":
        ops = encode_dtype(dtype, copy=False)
    elif how == "flags":
        ops = encode_dtype(dtype, flags=draw(st.sampled_from([0, 1, 63, 27])))
    elif how == "elsize":
        itemsize = dtype[1].itemsize
        ops = encode_dtype(dtype, elsize=draw(st.sampled_from([2 * itemsize, 1, 0, -1, 8])))
    else:
        ops = encode_dtype(dtype, shift=draw(st.sampled_from([1, dtype[1].itemsize, 2**30])))
    state = wrapper_state(
        shape,
        ops,
        order=draw(st.sampled_from(["C", "C", "F"])),
        allow_mmap=draw(st.booleans()),
        aligned=draw(st.booleans()),
    )
    return state, _STATE_MECHANISM.get(how)


def wrapper_state(
    shape: tuple[int, ...],
    dtype: bytes,
    *,
    order: str = "C",
    allow_mmap: bool = False,
    aligned: bool = False,
) -> bytes:
    """A NumpyArrayWrapper's BUILD state as joblib writes it; `dtype`: opcodes."""
    entries = [
        ustr("subclass") + sglobal("numpy", "ndarray"),
        ustr("shape") + encode(shape),
        ustr("order") + ustr(order),
        ustr("dtype") + dtype,
        ustr("allow_mmap") + encode(allow_mmap),
    ]
    if aligned:
        entries.append(ustr("numpy_array_alignment_bytes") + _integer(16))
    return b"}(" + b"".join(entries) + b"u"


def _array_data(draw: st.DrawFn, spec: DtypeSpec, shape: tuple[int, ...]) -> bytes:
    """What joblib writes after the BUILD: a nested pickle for objects, else raw bytes
    (the honest length, or another one), sometimes bytes that are opcodes."""
    dtype = spec[1]
    if dtype.hasobject:
        values = draw(st.lists(st.sampled_from([b"N", b"K\x01", ustr("x"), b")"]), max_size=3))
        inner = b"\x80\x04](" + b"".join(values) + b"e"
        return inner + draw(st.sampled_from([b".", draw(PAYLOAD) + b"a."]))
    nbytes = math.prod(shape) * dtype.itemsize
    if draw(st.integers(0, 7)) == 0:
        nbytes = max(0, nbytes + draw(st.sampled_from([-1, 1, -4, 4, -8, 8])))
    kind = draw(st.sampled_from(["zeros", "zeros", "zeros", "random", "opcodes", "strip"]))
    if nbytes > 256:
        kind = "zeros"
    if kind == "zeros":
        return bytes(nbytes)
    if kind == "random":
        return draw(st.binary(min_size=nbytes, max_size=nbytes))
    if kind == "strip":
        return (LANDING_STRIP * (nbytes // 2 + 1))[:nbytes]
    return (draw(PAYLOAD) + b"0" + b"N" * nbytes)[:nbytes]


def _padding(draw: st.DrawFn) -> bytes:
    n = draw(st.sampled_from([0, 1, 5, 15, 16, 255]))
    return bytes([n]) + draw(st.sampled_from([b"\x00", b"N", b"0"])) * n


@st.composite
def joblib_files(draw: st.DrawFn) -> Generated:
    """A joblib file of 1-3 arrays in a list, a payload somewhere after array data."""
    b = JoblibBuilder()
    tags: set[str | None] = set()
    header = draw(st.sampled_from([b"\x80\x04", b"\x80\x04", b"\x80\x02", b"\x80\x05", b""]))
    b.parts.append(header + b"](")
    count = draw(st.integers(1, 3))
    for _ in range(count):
        b.parts.append(WRAPPER + b")\x81")
        index = b.memoize() if draw(st.booleans()) else None
        if draw(st.integers(0, 5)) == 0:
            # Array data that plain pickle.load reads as opcodes: a misleading opening,
            # then a payload (joblib skips it all; the scanner's look-ahead follows it).
            opening, known = draw(openings())
            tags.update(known)
            tags.update(LOOKAHEAD_MECHANISM.get(tag) for tag in known)
            b.parts.append(wrapper_state((len(opening),), UINT8) + b"b" + opening)
            continue
        dtype = draw(dtypes())
        shape = draw(st.sampled_from([(), (0,), (1,), (2,), (3,), (2, 2), (1, 3)]))
        state, tag = _wrapper_state(draw, dtype, shape)
        tags.add(tag)
        b.parts.append(state + b"b")
        aligned = b"numpy_array_alignment_bytes" in state
        if aligned and not dtype[1].hasobject:
            b.parts.append(_padding(draw))
        b.parts.append(_array_data(draw, dtype, shape))
        if index is not None and draw(st.booleans()):
            # A second BUILD on the memoized wrapper: the unpickler merges the new state
            # into the wrapper's __dict__ (an entry the new state leaves out keeps its
            # old value), and joblib reads another array as the merged state says.
            dtype = draw(dtypes())
            shape = draw(st.sampled_from([(1,), (2,), (4,)]))
            tags.add("second-build-merges-wrapper-state")
            if draw(st.integers(0, 2)):
                state, tag = _wrapper_state(draw, dtype, shape)
                tags.add(tag)
                aligned = aligned or b"numpy_array_alignment_bytes" in state
            else:
                entries = draw(
                    st.lists(st.sampled_from(["dtype", "shape", "align", "order"]), min_size=1)
                )
                alignment = draw(st.sampled_from([b"N", b"K\x10"]))
                items = {
                    "dtype": ustr("dtype") + encode_dtype(dtype),
                    "shape": ustr("shape") + encode(shape),
                    "align": ustr("numpy_array_alignment_bytes") + alignment,
                    "order": ustr("order") + ustr("C"),
                }
                state = b"}(" + b"".join(items[e] for e in entries) + b"u"
                if "align" in entries:
                    aligned = alignment != b"N"
            b.parts.append(b"h" + bytes([index]) + state + b"b")
            if aligned and not dtype[1].hasobject:
                b.parts.append(_padding(draw))
            b.parts.append(_array_data(draw, dtype, shape))
        # After the array: a payload one time in three (most files must pass the scan, for
        # the span and crash properties), then sometimes a landing strip, so that a scan
        # that skips more bytes than joblib reads still parses (and hides the payload).
        if draw(st.integers(0, 2)) == 0:
            b.parts.append(draw(PAYLOAD))
        b.parts.append(draw(st.sampled_from([b"", LANDING_STRIP * 24])))
    b.parts.append(b"e.")
    data = b"".join(b.parts)
    method = draw(st.sampled_from([None, None, None, *COMPRESSORS]))
    known = frozenset(tag for tag in tags if tag is not None)
    return (data if method is None else COMPRESSORS[method][0](data)), known


# ---------------------------------------------------------------- npy / npz

OBJECT_DESCRS: list[object] = [
    "|O",
    "O",
    "=O",
    "<O",
    "O8",
    "object",
    "object_",
    "|O8",
    [("a", "|O")],
    [("a", "<i4"), ("b", "|O")],
    [("a", "|O", (2,))],
    [("a", [("b", "O")])],
    [("a", "object")],
]
PLAIN_DESCRS: list[object] = ["<f8", "|u1", "<i4", "|b1", "<U2", "|S3", "|V4", [("a", "<i4")]]


@st.composite
def npy_pickles(draw: st.DrawFn) -> bytes:
    """A pickle numpy.load(allow_pickle=True) would read after an object dtype."""
    header = draw(st.sampled_from([b"\x80\x02", b"\x80\x04", b"\x80\x03", b""]))
    items = draw(st.lists(st.sampled_from([b"N", b"K\x01", ustr("x"), *PAYLOADS]), max_size=3))
    return header + b"](" + b"".join(items) + b"e."


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return npy(draw(st.sampled_from(OBJECT_DESCRS)), draw(npy_pickles()))
    # A plain dtype: raw data, then bytes numpy.load never reads (a pickle load would).
    data = draw(st.binary(max_size=16))
    return npy(draw(st.sampled_from(PLAIN_DESCRS)), data + draw(npy_pickles()))


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    members = draw(st.lists(npy_files(), min_size=1, max_size=3))
    out = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(out, "w", method) as archive:
        for i, member in enumerate(members):
            name = draw(st.sampled_from([f"arr_{i}.npy", f"arr_{i}", f"m{i}.pkl"]))
            archive.writestr(name, member)
    return out.getvalue()


# ---------------------------------------------------------------- the differential


@dataclass(frozen=True)
class Scanned:
    data: bytes
    path: Path
    result: ScanResult
    label: str
    known: frozenset[str] = frozenset()  # known bypass mechanisms the input uses

    @property
    def globals(self) -> frozenset[Pair]:
        return frozenset(_globals(self.result))

    @property
    def not_pickle(self) -> bool:
        return self.result.format == "not-pickle"


def _jobs(item: Scanned) -> list[LoadJob]:
    # A file the scan calls not-pickle: every loader must fail before resolving anything.
    allowed = frozenset() if item.not_pickle else item.globals
    return [LoadJob(item.path, mode, allowed, item.label) for mode in MODES]


def violation(item: Scanned, job: LoadJob, outcome: LoadOutcome) -> tuple[str, str] | None:
    """What the loader did that the scan's verdict did not allow, if anything: (kind,
    description); the kind is what a shrunk input must still show."""
    if outcome.audit:
        return f"audit {outcome.audit}", f"the audit hook stopped it: {outcome.error}"
    if outcome.refused:
        refused = sorted(set(outcome.refused))
        scanned = sorted(job.allowed or ())
        return f"resolved {refused}", f"resolved {refused}, not in the scan's {scanned}"
    if outcome.crashed:
        return "crash", f"crashed: {outcome.error}"
    if item.not_pickle and outcome.error is None:
        return "loaded", "loaded a file the scan calls not-pickle"
    if job.mode == "joblib":
        # Raw array blocks (an object array is a nested pickle, scanned as one): where a
        # load fails part way, what it read so far.
        spans = item.result.array_spans
        reads = [(s, e) for s, e, objects in outcome.reads if not objects]
        if reads != spans[: len(reads)] or (outcome.error is None and reads != spans):
            return "spans", f"read array data at {reads}, the scan skipped {spans}"
    return None


@dataclass
class Violation:
    label: str
    mode: str
    kind: str
    what: str
    data: bytes
    minimized: bytes | None = None
    known: bool = False  # the input uses a known bypass mechanism, still open

    def __str__(self) -> str:
        shown = (self.minimized or self.data).hex()
        which = "minimized" if self.minimized is not None else "input"
        return f"{self.label} [{self.mode}]: {self.what}; {which} {shown}"


class Differential:
    """Scans inputs as they are generated, loads the accepted ones in one batch."""

    def __init__(self, folder: Path, sandbox: Sandbox, allowlist: AllowList = ALLOWLIST) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.sandbox = sandbox
        self.allowlist = allowlist
        self.items: list[Scanned] = []
        self.examples = 0
        self._counter = itertools.count()
        self.scan_seconds = 0.0

    def add(self, data: bytes, label: str, known: frozenset[str] = frozenset()) -> None:
        self.examples += 1
        path = self.folder / f"input-{next(self._counter):06d}.bin"
        path.write_bytes(data)
        start = time.perf_counter()
        result = scan_path(path, self.allowlist)
        self.scan_seconds += time.perf_counter() - start
        if result.safe:
            self.items.append(Scanned(data, path, result, label, known))
        else:
            path.unlink()

    def violations(self) -> list[Violation]:
        """Every violation; those of an input using a bypass mechanism that is still
        open (its reproducer in BYPASSES still passes the scan) are marked known."""
        still_open = open_mechanisms(self.folder / "bypass.bin")
        jobs = [(item, job) for item in self.items for job in _jobs(item)]
        outcomes = self.sandbox.load([job for _, job in jobs])
        found: list[Violation] = []
        for (item, job), outcome in zip(jobs, outcomes, strict=True):
            seen = violation(item, job, outcome)
            if seen is not None:
                known = bool(item.known & still_open)
                found.append(Violation(item.label, job.mode, *seen, item.data, known=known))
        return found

    def check(self, name: str) -> None:
        """Load everything accepted; fail listing each violation not known (the first few
        shrunk)."""
        start = time.perf_counter()
        every = self.violations()
        load_seconds = time.perf_counter() - start
        found = [v for v in every if not v.known]
        for v in found[:MAX_MINIMIZED]:
            v.minimized = minimize(v.data, partial(self.still_violates, seen=v))
        if REPORT:
            figures = {
                "test": name,
                "scale": SCALE,
                "examples": self.examples,
                "accepted": len(self.items),
                "not_pickle": sum(item.not_pickle for item in self.items),
                "loads": len(self.items) * len(MODES),
                "violations": len(every),
                "violating_inputs": len({v.data for v in every}),
                "known_violations": len(every) - len(found),
                "new_violating_inputs": len({v.data for v in found}),
                "by_mode": {m: sum(v.mode == m for v in every) for m in MODES},
                "scan_seconds": round(self.scan_seconds, 2),
                "load_seconds": round(load_seconds, 2),
                "first": [str(v) for v in found[:MAX_MINIMIZED]],
            }
            with open(REPORT, "a") as out:
                out.write(json.dumps(figures) + "\n")
        assert not found, f"{len(found)} violations; the first:\n" + "\n".join(
            str(v) for v in found[:10]
        )

    def still_violates(self, data: bytes, *, seen: Violation) -> bool:
        """Does `data` still pass the scan and make the same loader break the verdict in
        the same way?"""
        path = self.folder / "minimizing.bin"
        path.write_bytes(data)
        result = scan_path(path, self.allowlist)
        if not result.safe:
            return False
        item = Scanned(data, path, result, "minimizing")
        job = next(j for j in _jobs(item) if j.mode == seen.mode)
        (outcome,) = self.sandbox.load([job])
        now = violation(item, job, outcome)
        return now is not None and now[0] == seen.kind


def minimize(data: bytes, still_violates: Callable[[bytes], bool], tries: int = 400) -> bytes:
    """Delta debugging (ddmin) over bytes: the shortest input found, in `tries` trials,
    that still violates."""
    if not still_violates(data):
        return data  # not reproducible alone (it depended on the batch): keep it whole
    chunks = 2
    while len(data) >= 2 and tries > 0:
        size = math.ceil(len(data) / chunks)
        for start in range(0, len(data), size):
            if tries <= 0:
                return data
            tries -= 1
            candidate = data[:start] + data[start + size :]
            if candidate and still_violates(candidate):
                data = candidate
                chunks = max(chunks - 1, 2)
                break
        else:
            if size == 1:
                break
            chunks = min(len(data), chunks * 2)
    return data


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("differential-sandbox"))
    yield box
    box.close()


def run_differential(
    strategy: st.SearchStrategy[Generated], count: int, name: str, sandbox: Sandbox, folder: Path
) -> None:
    diff = Differential(folder, sandbox)

    @settings(DIFFERENTIAL, max_examples=examples(count))
    @given(strategy)
    def generate(generated: Generated) -> None:
        data, known = generated
        diff.add(data, name, known)

    generate()
    diff.check(name)


# ---------------------------------------------------------------- the properties
# Example counts fit CI (about 10 s for the three on 2 cores, the sandbox's start included).


def test_misleading_openings_match_every_loader(sandbox: Sandbox, tmp_path: Path) -> None:
    """Sniffed files (no PROTO): whatever the scan decides, every loader agrees."""
    run_differential(openings(), 300, "opening", sandbox, tmp_path)


def test_joblib_arrays_match_every_loader(sandbox: Sandbox, tmp_path: Path) -> None:
    """joblib files with wrapper states over every dtype, raw and compressed."""
    run_differential(joblib_files(), 500, "joblib", sandbox, tmp_path)


def test_npy_and_npz_match_every_loader(sandbox: Sandbox, tmp_path: Path) -> None:
    """.npy and .npz files with object dtypes, loaded by numpy.load(allow_pickle=True)."""
    files = st.one_of(npy_files(), npz_files()).map(lambda data: (data, frozenset[str]()))
    run_differential(files, 200, "npy", sandbox, tmp_path)


def test_joblib_reads_exactly_the_spans_the_scan_skipped_in_real_dumps(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The span property on files joblib itself wrote: arrays of every kind of dtype,
    aligned (joblib >= 0.13's default), raw and compressed; every array is read where the
    scan skipped it (and the instrumented read_array saw each of them)."""
    import joblib

    dtypes = [d for _, d in NUMPY_DTYPES[::5]] + COMPOSITE_DTYPES
    sized = [d for d in dtypes if d.itemsize and not d.hasobject]  # joblib cannot dump size 0
    arrays = [np.zeros((i % 4, 3), dtype=d) for i, d in enumerate(sized)]
    jobs: list[LoadJob] = []
    spans: list[list[tuple[int, int]]] = []
    for compress in (0, ("zlib", 1), ("lz4", 1)):
        path = tmp_path / f"arrays-{compress}.joblib"
        joblib.dump(arrays, path, compress=compress)
        result = scan_path(path, ALLOWLIST)
        assert result.safe, result.findings[:3]
        jobs.append(LoadJob(path, "joblib", frozenset(_globals(result)), str(compress)))
        spans.append(result.array_spans)
    for job, outcome, skipped in zip(jobs, sandbox.load(jobs), spans, strict=True):
        assert outcome.error is None, (job.label, outcome.error)
        assert len(outcome.reads) == len(arrays)
        assert [(s, e) for s, e, _ in outcome.reads] == skipped, job.label


def _globals(result: ScanResult) -> set[Pair]:
    return {(use.module, use.name) for use in result.globals_used}


# ---------------------------------------------------------------- bypasses found
# Each case below passes the scan on main, yet a stock loader resolves the payload's global
# (posix.system, which the sandbox's gate refuses: nothing runs) or crashes. Shrunk by hand
# from what the properties above found (and from the mechanisms in issue 6). Which loaders
# each one fools is asserted too, by test_bypass_reproducers_do_what_they_claim.

SHELL = b"cposix\nsystem\n(S'true'\ntR"  # posix.system('true'), one value pushed
BENIGN_GLOBALS: frozenset[Pair] = frozenset(
    {("joblib.numpy_pickle", "NumpyArrayWrapper"), ("numpy", "dtype"), ("numpy", "ndarray")}
)


def _joblib_file(*parts: bytes) -> bytes:
    return b"\x80\x04" + b"".join(parts) + b"."


def _array_read_as_opcodes(opcodes: bytes) -> bytes:
    """A joblib file whose uint8 array data is `opcodes`: joblib skips them, plain pickle
    loaders read them; the scanner's look-ahead follows them as the C unpickler would."""
    state = wrapper_state((len(opcodes),), UINT8)
    return _joblib_file(WRAPPER, b")\x81", state, b"b", opcodes, b"N")


def _fixed_size_dtype_with_state_size() -> bytes:
    """numpy.dtype('f') with a state saying 8-byte items: numpy keeps 4 ('f' is fixed), the
    scanner took the state's 8. joblib reads 7 × 4 bytes, then runs what the scanner
    skipped as the second half of the array."""
    f_state = (3, "<", None, None, None, 8, 4, 0)
    state = wrapper_state((7,), dtype_ops("f", False, True, f_state))
    hidden = (SHELL + b"0").ljust(28, b"N")
    return _joblib_file(WRAPPER, b")\x81", state, b"b", bytes(28), hidden)


def _shared_descriptor_state() -> bytes:
    """numpy.dtype('f8', False, False) is numpy's shared descriptor: numpy ignores the BUILD
    state, here one with an object field, which made the scanner read a nested pickle
    where joblib reads 8 raw bytes and then runs the payload as the outer pickle."""
    object_state = (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 8, 63)
    state = wrapper_state((1,), dtype_ops("f8", False, False, object_state))
    nested = b"C" + bytes([6 + len(SHELL) + 1]) + bytes(6) + SHELL + b"0" + b"."
    return _joblib_file(WRAPPER, b")\x81", state, b"b", nested)


def _second_build_keeps_alignment() -> bytes:
    """A second BUILD on the memoized wrapper whose state leaves out the alignment: the
    unpickler merges it into the wrapper's __dict__ (alignment 16 stays; joblib reads a
    padding byte and padding), the scanner replaced the state (no padding). What the
    scanner reads as a bytes constant joblib runs."""
    first = wrapper_state((1,), UINT8, aligned=True)
    second = wrapper_state((4,), UINT8)
    # joblib: padding byte 1, 1 byte of padding, 4 bytes of data, then SHELL;
    # the scanner: 4 bytes of data, then SHORT_BINBYTES over SHELL and its POP.
    skipped = bytes([1]) + bytes(3) + b"C" + bytes([len(SHELL) + 1])
    return _joblib_file(
        WRAPPER, b")\x81\x94", first, b"b\x00\x00", b"0h\x00", second, b"b", skipped, SHELL, b"00N"
    )


def _field_offset_outside_item() -> bytes:
    """A structured dtype whose one field lies 1 GiB past its 8-byte item: reading the
    array's elements (its first use) reads far out of bounds."""
    fields_state = (3, "|", None, ("a",), {"a": (np.dtype("<f8"), 2**30)}, 8, 8, 16)
    state = wrapper_state((4,), dtype_ops("V8", False, True, fields_state))
    return _joblib_file(WRAPPER, b")\x81", state, b"b", bytes(32))


@dataclass(frozen=True)
class Bypass:
    mechanism: str
    data: bytes
    # The loaders it fools (the payload resolves, or it crashes); "loader" (load_model)
    # only while the scan passes the file.
    loaders: tuple[str, ...]
    crash: bool = False  # the loaders crash instead of resolving the payload

    @property
    def param(self) -> Any:
        return pytest.param(self, id=self.mechanism)


STOCK = ("pickle", "python", "joblib", "numpy")
C_ONLY = ("pickle", "numpy")  # numpy.load reads a pickle with the C unpickler
PLAIN = ("pickle", "python", "numpy")  # the loaders that read joblib array data as opcodes

BYPASSES: list[Bypass] = [
    # Sniffed openings (no PROTO): the scanner's machine failed where unpicklers read on,
    # so the file was "not-pickle" (safe), and the payload after it runs.
    Bypass("build-none-state-on-non-object", b"NNb" + SHELL + b".", STOCK),
    Bypass("build-falsy-state-on-non-object", b"K\x00)b" + SHELL + b".", ("python", "joblib")),
    Bypass("setitems-after-empty-mark", b"N(u" + SHELL + b".", STOCK),
    Bypass("appends-after-empty-mark", b"N(e" + SHELL + b".", C_ONLY),
    Bypass("additems-after-empty-mark", b"N(\x90" + SHELL + b".", C_ONLY),
    Bypass("int-text-stops-at-nul", b"I1\x00\n" + SHELL + b".", C_ONLY),
    Bypass("long-text-stops-at-nul", b"L1\x00\n" + SHELL + b".", C_ONLY),
    Bypass("float-text-stops-at-nul", b"F1\x00\n" + SHELL + b".", C_ONLY),
    # joblib raw array data, read as opcodes by plain unpicklers: the look-ahead is fooled
    # by the same openings.
    Bypass("lookahead-build-none-state", _array_read_as_opcodes(b"NNb" + SHELL + b"0"), PLAIN),
    Bypass(
        "lookahead-setitems-after-empty-mark",
        _array_read_as_opcodes(b"N(u" + SHELL + b"0"),
        PLAIN,
    ),
    Bypass(
        "lookahead-int-text-stops-at-nul",
        _array_read_as_opcodes(b"I1\x00\n0" + SHELL + b"0"),
        C_ONLY,
    ),
    # joblib reads a different number of array bytes than the scanner skips.
    Bypass("second-build-merges-wrapper-state", _second_build_keeps_alignment(), ("joblib",)),
    Bypass(
        "fixed-size-dtype-itemsize-from-state",
        _fixed_size_dtype_with_state_size(),
        ("joblib",),
    ),
    Bypass("shared-dtype-descriptor-ignores-state", _shared_descriptor_state(), ("joblib",)),
    # Memory-unsafe states behind allowed globals.
    Bypass(
        "dtype-field-offset-outside-item",
        _field_offset_outside_item(),
        ("joblib", "loader"),
        crash=True,
    ),
]


def open_mechanisms(scratch: Path) -> frozenset[str]:
    """The BYPASSES mechanisms whose reproducer still passes the scan."""
    still: set[str] = set()
    for bypass in BYPASSES:
        scratch.write_bytes(bypass.data)
        if scan_path(scratch, ALLOWLIST).safe:
            still.add(bypass.mechanism)
    return frozenset(still)


@pytest.mark.parametrize("bypass", [b.param for b in BYPASSES])
def test_bypass_is_refused(bypass: Bypass, tmp_path: Path) -> None:
    """The scan must not pass a file that a stock loader reads differently from it."""
    path = tmp_path / "bypass.bin"
    path.write_bytes(bypass.data)
    result = scan_path(path, ALLOWLIST)
    assert not result.safe, f"{bypass.mechanism}: scan says safe ({result.format})"


def test_bypass_reproducers_do_what_they_claim(sandbox: Sandbox, tmp_path: Path) -> None:
    """Each reproducer is real, whatever the scanner says: the loaders it names resolve
    posix.system (refused by the gate) or crash, and the other loaders do neither."""
    jobs: list[LoadJob] = []
    for i, bypass in enumerate(BYPASSES):
        path = tmp_path / f"{i:02d}-{bypass.mechanism}.bin"
        path.write_bytes(bypass.data)
        # Stock loaders only: this project's loader loads only what the scan passes, so
        # what it does depends on the scanner under test.
        jobs += [LoadJob(path, mode, BENIGN_GLOBALS, bypass.mechanism) for mode in STOCK]
    outcomes = sandbox.load(jobs)
    wrong: list[str] = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        bypass = next(b for b in BYPASSES if b.mechanism == job.label)
        fooled = outcome.crashed if bypass.crash else ("posix", "system") in outcome.refused
        if fooled != (job.mode in bypass.loaders):
            wrong.append(f"{job.label} [{job.mode}]: fooled={fooled} ({outcome.error})")
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------- the sandbox itself


def test_sandbox_audit_hook_stops_what_the_gate_lets_through(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The second layer: with the gate opened on purpose for a shell, a file write and a
    socket, the audit hook ends the loader before any of them happens."""
    marker = tmp_path / "marker"
    cases = {
        "os.system": (("posix", "system"), ustr(f"touch {marker}")),
        "open": (("builtins", "open"), ustr(str(marker)) + ustr("w")),
        "socket.__new__": (("socket", "socket"), b""),
    }
    jobs = []
    for event, (pair, args) in cases.items():
        path = tmp_path / f"{event}.pkl"
        path.write_bytes(b"\x80\x04" + sglobal(*pair) + b"(" + args + b"tR.")
        jobs += [LoadJob(path, mode, frozenset({pair}), event) for mode in ("pickle", "joblib")]
    outcomes = sandbox.load(jobs)
    assert [(job.label, outcome.audit) for job, outcome in zip(jobs, outcomes, strict=True)] == [
        (job.label, job.label) for job in jobs
    ]
    assert all(outcome.crashed for outcome in outcomes)
    assert not marker.exists()


def test_sandbox_reports_a_crash_and_goes_on(sandbox: Sandbox, tmp_path: Path) -> None:
    """A loader killed by a signal is that job's crash; the next job runs in a new process."""
    crash = tmp_path / "crash.bin"
    crash.write_bytes(_field_offset_outside_item())
    benign = tmp_path / "benign.pkl"
    benign.write_bytes(b"\x80\x04K\x01.")
    jobs = [LoadJob(crash, "joblib", BENIGN_GLOBALS), LoadJob(benign, "pickle", frozenset())]
    restarts = sandbox.restarts
    crashed, after = sandbox.load(jobs)
    assert crashed.crashed and "-11" in (crashed.error or "")
    assert after == LoadOutcome(frozenset(), (), None)
    assert sandbox.restarts == restarts + 1
