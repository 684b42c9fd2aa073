"""Small pickles that cost a careless scanner far more than their size: memo-shared wide
tuples, long names and keys used again and again through the memo, many joblib arrays on a
deep stack. Each builder takes a scale and returns the file's bytes; the bytes grow linearly
with the scale, so a linear scan's time does too. Shared by
tests/test_safety_vm_semantics.py and benchmarks/bench_pathological.py.

`pickle.load` reads each of them in time linear in its size (the wide tuples in
microseconds): none of them makes the unpickler itself do superlinear work.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

PROTO4 = b"\x80\x04"
STOP = b"."


def _binget(key: int) -> bytes:
    return b"h" + bytes([key]) if key < 256 else b"j" + struct.pack("<I", key)


def _binput(key: int) -> bytes:
    return b"q" + bytes([key]) if key < 256 else b"r" + struct.pack("<I", key)


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def wide_shared_tuples(width: int) -> bytes:
    """Four levels of tuples, each `width` references to the one below through the memo,
    handed to a call: a walk of the arguments visits width**4 leaves."""
    body = b"(" + b"N" * width + b"t" + _binput(0) + b"0"
    for level in range(1, 4):
        body += b"(" + _binget(level - 1) * width + b"t" + _binput(level) + b"0"
    return PROTO4 + b"cos\nsystem\n" + body + _binget(3) + b"R" + STOP


def calls_on_one_wide_tuple(calls: int) -> bytes:
    """One tuple of `calls` items in the memo, passed as the arguments of `calls` calls."""
    head = b"cos\nsystem\n" + _binput(0) + b"(" + b"N" * calls + b"t" + _binput(1) + b"0"
    return PROTO4 + head + (_binget(0) + _binget(1) + b"R0") * calls + b"N" + STOP


def long_names_many_times(uses: int, length: int = 60_000) -> bytes:
    """A module and a name of `length` characters each, memoized, resolved `uses` times."""
    head = _unicode("a" * length) + _binput(0) + _unicode("b" * length) + _binput(1) + b"0"
    return PROTO4 + head + b"0" + (_binget(0) + _binget(1) + b"\x930") * uses + b"N" + STOP


def long_keys_many_times(uses: int, length: int = 60_000) -> bytes:
    """A dict whose key is a long integer, and two equal long strings (distinct objects),
    each set again `uses` times: hashing or comparing them costs their length each time."""
    number = b"\x8b" + struct.pack("<i", length) + b"\x01" * length
    first = _unicode("k" * length)
    body = b"}" + number + _binput(0) + b"0" + first + _binput(1) + b"0"
    body += first + _binput(2) + b"0"
    body += b"h\x01Ns" + (_binget(0) + b"Ns" + _binget(2) + b"Ns") * uses
    return PROTO4 + body + STOP


def _wrapper_state() -> bytes:
    def text(value: str) -> bytes:
        return b"\x8c" + bytes([len(value)]) + value.encode()

    dtype = (
        text("numpy") + text("dtype") + b"\x93" + text("u1") + b"\x89\x88\x87R"
        b"(K\x03" + text("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    items = [
        (text("subclass"), text("numpy") + text("ndarray") + b"\x93"),
        (text("shape"), b"K\x01\x85"),
        (text("order"), text("C")),
        (text("dtype"), dtype),
    ]
    return b"}(" + b"".join(k + v for k, v in items) + b"u"


def arrays_on_a_deep_stack(arrays: int, depth: int = 50_000) -> bytes:
    """`depth` open MARKs, then `arrays` one-byte joblib arrays (wrapper class and state
    from the memo), each popped after its data. Their data byte is no opcode."""
    wrapper = b"\x8c\x13joblib.numpy_pickle\x8c\x11NumpyArrayWrapper\x93" + _binput(0)
    first = wrapper + b")\x81" + _wrapper_state() + _binput(1) + b"b\x00" + b"0"
    again = _binget(0) + b")\x81" + _binget(1) + b"b\x00" + b"0"
    return PROTO4 + b"(" * depth + first + again * (arrays - 1) + b"N" + STOP


def rebuilt_wrapper_wide_shape(builds: int, width: int = 10_000) -> bytes:
    """A wrapper whose state has a shape of `width` dimensions, built `builds` times."""
    state = _wrapper_state().replace(b"K\x01\x85", b"(" + b"K\x01" * width + b"t")
    wrapper = b"\x8c\x13joblib.numpy_pickle\x8c\x11NumpyArrayWrapper\x93)\x81" + _binput(0)
    body = wrapper + state + _binput(1) + b"b0"
    body += (_binget(0) + _binget(1) + b"b0") * builds
    return PROTO4 + body + b"N" + STOP


# name -> (builder, the scale the tests use)
PATHOLOGICAL: dict[str, tuple[Callable[[int], bytes], int]] = {
    "wide_shared_tuples": (wide_shared_tuples, 1000),
    "calls_on_one_wide_tuple": (calls_on_one_wide_tuple, 20_000),
    "long_names_many_times": (long_names_many_times, 20_000),
    "long_keys_many_times": (long_keys_many_times, 20_000),
    "arrays_on_a_deep_stack": (arrays_on_a_deep_stack, 3000),
    "rebuilt_wrapper_wide_shape": (rebuilt_wrapper_wide_shape, 3000),
}
