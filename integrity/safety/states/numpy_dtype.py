"""numpy.dtype: the descriptor numpy will hold, computed exactly from the pickle.

numpy pickles a dtype as `numpy.dtype(spec, False, True)` and a BUILD whose
state numpy's C `arraydescr_setstate` takes on trust: item size, alignment,
flags, fields and subarray are copied in unchecked. A state whose flags deny
an object field makes numpy read raw bytes as object pointers; a field offset
past the item reads and writes out of bounds; a wrong item size makes joblib
read a different number of bytes than the scanner skips. So the scanner
computes, from the call and the state, the descriptor numpy will end with
(`Dtype`), and refuses every state that is not one numpy itself writes:

- the spec is one numpy's `__reduce__` writes ('f8', 'S5', 'U3', 'V16', 'M8',
  'O8'...); its size is numpy's fixed size, never taken from the state for a
  type whose size numpy fixes ('f4' is 4 bytes whatever the state says);
- `dtype(spec, align, copy=False)` of a fixed type is numpy's shared builtin
  descriptor: `__setstate__` returns at once (its fields are None), so the
  state is ignored, as numpy ignores it;
- a state is the version 3 or 4 tuple; its flags are exactly the flags numpy
  computes for that layout (numpy 1.x wrote them as a signed char: -112 for
  an aligned struct, which numpy reads as 16); fields and subarray only on a
  void type; fields in the item, no overlap involving an object field, names
  equal to the field keys, a subarray's size its base size times its shape,
  alignment the one numpy computes; datetime types carry their unit;
- a dtype is built at most once, and never after an array or another dtype
  used it: numpy's `__setstate__` mutates a descriptor that arrays share.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from integrity.safety.states import UnsafeState, on_build, on_call
from integrity.safety.symbols import ArrayValue, Global, Obj, Opaque, SDict

NUMPY_DTYPE = Global("numpy", "dtype")
CODECS_ENCODE = Global("_codecs", "encode")
BYTES = Global("builtins", "bytes")
_BUFFERS = ("bytes", "bytearray", "buffer")

# numpy's descriptor flags (ndarraytypes.h): what NPY_OBJECT_DTYPE_FLAGS and
# NPY_FROM_FIELDS are made of.
ITEM_REFCOUNT = 0x01
LIST_PICKLE = 0x02
ITEM_IS_POINTER = 0x04
NEEDS_INIT = 0x08
NEEDS_PYAPI = 0x10
USE_GETITEM = 0x20
ALIGNED_STRUCT = 0x80
OBJECT_FLAGS = (
    LIST_PICKLE | USE_GETITEM | ITEM_IS_POINTER | ITEM_REFCOUNT | NEEDS_INIT | NEEDS_PYAPI
)
FROM_FIELDS = NEEDS_INIT | LIST_PICKLE | ITEM_REFCOUNT | NEEDS_PYAPI

MAX_DIMS = 32  # numpy 1.x's limit (2.x allows 64): a subarray within both
MAX_INT = (1 << 31) - 1  # numpy keeps item sizes and subarray dimensions in a C int
DATETIME_UNITS = frozenset(
    ["Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as", "generic"]
)

# The specs numpy's __reduce__ writes for types whose size numpy fixes:
# spec -> (kind, item size, alignment, flags). A state never changes these
# sizes (numpy only takes elsize and alignment from it for S, U and V).
_FIXED: dict[str, tuple[str, int, int, int]] = {
    "b1": ("b", 1, 1, 0),
    "i1": ("i", 1, 1, 0),
    "i2": ("i", 2, 2, 0),
    "i4": ("i", 4, 4, 0),
    "i8": ("i", 8, 8, 0),
    "u1": ("u", 1, 1, 0),
    "u2": ("u", 2, 2, 0),
    "u4": ("u", 4, 4, 0),
    "u8": ("u", 8, 8, 0),
    "f2": ("f", 2, 2, 0),
    "f4": ("f", 4, 4, 0),
    "f8": ("f", 8, 8, 0),
    "f16": ("f", 16, 16, 0),
    "c8": ("c", 8, 4, 0),
    "c16": ("c", 16, 8, 0),
    "c32": ("c", 32, 16, 0),
    "O8": ("O", 8, 8, OBJECT_FLAGS),
    # datetime64 and timedelta64: a new descriptor at every call (never builtin)
    "M8": ("M", 8, 8, 0),
    "m8": ("m", 8, 8, 0),
}
# Flexible specs: a kind and a canonical decimal count (no sign, no leading zero).
_FLEXIBLE = re.compile(r"^([SUV])(0|[1-9][0-9]{0,9})$")
# (alignment, flags) numpy gives a plain S, U or V descriptor.
_FLEXIBLE_LEAF = {"S": (1, 0), "U": (4, NEEDS_INIT), "V": (1, 0)}
_ORDERS = ("<", ">", "|", "=")


@dataclass(frozen=True)
class Field:
    name: str
    dtype: Dtype
    offset: int
    title: str | None = None


@dataclass(frozen=True)
class Dtype:
    """A numpy descriptor as numpy will hold it after the call and its BUILD.

    `kind` is numpy's kind character (b i u f c O M m S U V); `byteorder` as
    pickled ('<', '>', '|', or '='); `fields` in numpy's `names` order (None for
    an unstructured type); `subarray` is (base, shape) or None.
    """

    kind: str
    itemsize: int
    byteorder: str
    alignment: int
    flags: int
    fields: tuple[Field, ...] | None = None
    subarray: tuple[Dtype, tuple[int, ...]] | None = None
    has_object: bool = False
    builtin: bool = False  # numpy's shared descriptor: its __setstate__ does nothing

    def field(self, name: str) -> Field | None:
        for entry in self.fields or ():
            if entry.name == name:
                return entry
        return None


INT8 = Dtype("i", 1, "|", 1, 0, builtin=True)  # _reconstruct's placeholder dtype


@dataclass
class DtypeObj(Obj):
    """The symbol a numpy.dtype call pushes: the call, and the descriptor numpy holds."""

    model: Dtype = field(default_factory=lambda: Dtype("V", 0, "|", 1, 0))
    built: bool = False  # a BUILD set its state
    used: bool = False  # an array or another dtype took it: no BUILD may change it now


def dtype_of(value: Any) -> Dtype:
    """The descriptor a symbol stands for, for a validator that builds on it (an
    array's dtype, a field's dtype). Marks it used: a later BUILD on it, which would
    change it under its user's feet, is refused. Raises UnsafeState for anything
    that is not a numpy.dtype the scanner modelled."""
    if not isinstance(value, DtypeObj):
        raise UnsafeState("the dtype is not a numpy.dtype the scanner could model")
    value.used = True
    return value.model


@on_call("numpy:dtype")
def dtype_call(made: Obj) -> DtypeObj:
    args = made.args
    if made.keywords:
        raise UnsafeState("numpy.dtype called with keyword arguments: numpy never writes that")
    if len(args) != 3 or type(args[0]) is not str:
        raise UnsafeState("numpy.dtype called with arguments numpy never writes")
    spec, align, copy = args
    # numpy writes False, True (numpy 1.x before 1.?: 0, 1); align does nothing to a
    # plain spec.
    if not all(type(flag) in (bool, int) and flag in (0, 1) for flag in (align, copy)):
        raise UnsafeState("numpy.dtype's align and copy flags are not booleans")
    return DtypeObj(made.callable, made.args, model=_spec_model(spec, bool(copy)))


def _spec_model(spec: str, copy: bool) -> Dtype:
    fixed = _FIXED.get(spec)
    if fixed is not None:
        kind, size, alignment, flags = fixed
        # numpy's builtin descriptors are shared (fields is None); copy=True gives a
        # fresh one. Datetime types are always fresh.
        builtin = not copy and kind not in "Mm"
        order = "|" if size == 1 or kind == "O" else "="
        return Dtype(kind, size, order, alignment, flags, has_object=kind == "O", builtin=builtin)
    match = _FLEXIBLE.match(spec)
    if match is None:
        raise UnsafeState(f"dtype spec {spec!r} is not one numpy writes")
    kind, count = match.group(1), int(match.group(2))
    size = 4 * count if kind == "U" else count
    if size > MAX_INT:
        raise UnsafeState(f"dtype spec {spec!r} is larger than numpy allows")
    alignment, flags = _FLEXIBLE_LEAF[kind]
    order = "=" if kind == "U" else "|"
    # 'S0', 'U0', 'V0' are numpy's shared unsized descriptors.
    return Dtype(kind, size, order, alignment, flags, builtin=not copy and count == 0)


@on_build("numpy:dtype")
def dtype_build(target: Obj, state: Any) -> Obj:
    if not isinstance(target, DtypeObj):
        raise UnsafeState("BUILD on a numpy.dtype the scanner did not model")
    if target.model.builtin:
        # numpy's __setstate__ returns before reading the state: it changes nothing.
        return target
    if target.built:
        raise UnsafeState(
            "numpy.dtype built twice: numpy's __setstate__ keeps parts of the first "
            "state the second does not replace; numpy never writes that"
        )
    if target.used:
        raise UnsafeState(
            "numpy.dtype built after an array or another dtype used it: numpy would "
            "change the descriptor under that user"
        )
    target.model = _state_model(target.model, state)
    target.state = state
    target.built = True
    return target


def _state_model(before: Dtype, state: Any) -> Dtype:
    """The descriptor numpy holds once `state` is set on a fresh `before`."""
    if not isinstance(state, tuple) or len(state) not in (8, 9):
        raise UnsafeState("numpy.dtype state is not the tuple numpy writes")
    version, order, subarray, names, fields, elsize, alignment, flags = state[:8]
    if (type(version), version, len(state)) not in ((int, 3, 8), (int, 4, 9)):
        raise UnsafeState("numpy.dtype state version is not one numpy writes")
    if type(order) is not str or order not in _ORDERS:
        raise UnsafeState("numpy.dtype byte order is not one numpy writes")
    if not all(type(v) is int for v in (elsize, alignment, flags)):
        raise UnsafeState("numpy.dtype state has sizes that are not integers")
    kind = before.kind
    if kind in "Mm":
        if len(state) != 9:
            # numpy reads a datetime unit from a metadata it was not given (a NULL
            # pointer in numpy's C code).
            raise UnsafeState("numpy.dtype datetime state without its unit")
        _check_datetime_metadata(state[8])
    elif len(state) == 9 and not (state[8] is None or _plain_dict(state[8])):
        raise UnsafeState("numpy.dtype metadata is not a dict")
    if kind != "V" and (subarray is not None or names is not None or fields is not None):
        raise UnsafeState(f"numpy.dtype of kind {kind!r} given fields or a subarray")
    if kind not in "SUV":
        # numpy keeps its own size and alignment for these: it writes -1, -1.
        if (elsize, alignment) != (-1, -1):
            raise UnsafeState("numpy.dtype state gives a size to a type whose size numpy fixes")
        _check_flags(_normalized(flags), before.flags, aligned_ok=False)
        return Dtype(
            kind,
            before.itemsize,
            order,
            before.alignment,
            before.flags,
            None,
            None,
            before.has_object,
        )
    if elsize != before.itemsize:
        raise UnsafeState("numpy.dtype state item size disagrees with its spec")
    if kind in "SU":
        if (alignment, _normalized(flags)) != (before.alignment, before.flags):
            raise UnsafeState("numpy.dtype state alignment or flags are not numpy's")
        return Dtype(kind, elsize, order, alignment, before.flags)
    if subarray is not None:
        if names is not None or fields is not None:
            raise UnsafeState("numpy.dtype state has both fields and a subarray")
        return _subarray_model(subarray, elsize, alignment, flags, order)
    if (names is None) != (fields is None):
        raise UnsafeState("numpy.dtype state has names without fields or fields without names")
    if fields is None:
        if (alignment, _normalized(flags)) != (1, 0):
            raise UnsafeState("numpy.dtype state alignment or flags are not numpy's")
        return Dtype("V", elsize, order, 1, 0)
    return _struct_model(names, fields, elsize, alignment, flags, order)


def _plain_dict(value: Any) -> bool:
    return isinstance(value, SDict) and not value.other


def _check_datetime_metadata(metadata: Any) -> None:
    if not isinstance(metadata, tuple) or len(metadata) != 2:
        raise UnsafeState("numpy.dtype datetime metadata is not numpy's")
    if not (metadata[0] is None or _plain_dict(metadata[0])):
        raise UnsafeState("numpy.dtype datetime metadata is not a dict")
    unit = metadata[1]
    if not isinstance(unit, tuple) or len(unit) != 4:
        raise UnsafeState("numpy.dtype datetime unit is not numpy's")
    base, num, den, events = unit
    found = bytes_of(base)
    name = found[1].decode("ascii", "replace") if found and found[1] is not None else base
    if type(name) is not str or name not in DATETIME_UNITS:
        raise UnsafeState("numpy.dtype datetime unit is not one numpy knows")
    if type(num) is not int or not 1 <= num <= MAX_INT or (den, events) != (1, 1):
        raise UnsafeState("numpy.dtype datetime unit multiplier is not numpy's")


def bytes_of(value: Any) -> tuple[int, bytes | None] | None:
    """(length, the bytes if kept) of a bytes-like symbol as numpy reads it, or None
    when it is not bytes: bytes, a bytearray or buffer (protocol 5), protocols
    0-2's `_codecs.encode(text, 'latin1')` and `bytes()`."""
    if isinstance(value, bytes):
        return len(value), value
    if isinstance(value, Opaque):
        return (value.size, value.data) if value.kind in _BUFFERS else None
    if isinstance(value, Obj) and not isinstance(value, ArrayValue) and not value.keywords:
        if value.callable == BYTES and value.args == ():
            return 0, b""
        if value.callable == CODECS_ENCODE and len(value.args) == 2:
            text, encoding = value.args
            if type(text) is str and encoding in ("latin1", "latin-1"):
                try:
                    data = text.encode("latin1")
                except UnicodeEncodeError:
                    return None
                return len(data), data
    return None


def _normalized(flags: int) -> int:
    """The flags numpy reads: numpy 1.x wrote them as a signed char, which numpy
    (both majors) maps back by adding 128 to a value in [-128, 0)."""
    return flags + 128 if -128 <= flags < 0 else flags


def _check_flags(flags: int, expected: int, *, aligned_ok: bool) -> None:
    """Exactly the flags numpy computes for the layout (ALIGNED_STRUCT may be set on
    a struct laid out as numpy aligns; numpy 1.x's signed form drops it)."""
    if flags == expected or (aligned_ok and flags == expected | ALIGNED_STRUCT):
        return
    if (flags ^ expected) & ITEM_REFCOUNT:
        raise UnsafeState(
            "numpy.dtype flags disagree with its object fields: numpy would read raw "
            "bytes as object pointers, or object pointers as raw bytes"
        )
    raise UnsafeState(f"numpy.dtype flags {flags} are not the {expected} numpy computes")


def _subarray_model(subarray: Any, elsize: int, alignment: int, flags: int, order: str) -> Dtype:
    if not isinstance(subarray, tuple) or len(subarray) != 2:
        raise UnsafeState("numpy.dtype subarray is not numpy's (base, shape)")
    base, shape = dtype_of(subarray[0]), subarray[1]
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_DIMS
        or not all(type(n) is int and 0 <= n <= MAX_INT for n in shape)
    ):
        raise UnsafeState("numpy.dtype subarray shape is not a tuple of sizes")
    if base.itemsize * math.prod(shape) != elsize:
        raise UnsafeState(
            "numpy.dtype subarray size is not its base size times its shape: numpy "
            "would read past the item"
        )
    if alignment != base.alignment:
        raise UnsafeState("numpy.dtype subarray alignment is not its base's")
    _check_flags(_normalized(flags), base.flags, aligned_ok=False)
    return Dtype(
        "V",
        elsize,
        order,
        alignment,
        base.flags,
        subarray=(base, shape),
        has_object=base.has_object,
    )


def _struct_model(
    names: Any, fields: Any, elsize: int, alignment: int, flags: int, order: str
) -> Dtype:
    if not isinstance(names, tuple) or not all(type(n) is str for n in names):
        raise UnsafeState("numpy.dtype names are not a tuple of strings")
    if not _plain_dict(fields):
        raise UnsafeState("numpy.dtype fields are not a dict of named fields")
    if len(set(names)) != len(names):
        raise UnsafeState("numpy.dtype names repeat")
    entries = fields.items
    members: list[Field] = []
    titles: set[Any] = set()
    for name in names:
        if name not in entries:
            raise UnsafeState(f"numpy.dtype field {name!r} is named but not defined")
        members.append(_field(name, entries[name], elsize))
        title = members[-1].title
        if title is not None:
            other = entries.get(title)
            if (
                title in names
                or title in titles
                or not isinstance(other, tuple)
                or len(other) != 3
                or other[0] is not entries[name][0]
                or other[1:] != (members[-1].offset, title)
            ):
                raise UnsafeState("numpy.dtype field title is not numpy's")
            titles.add(title)
    if len(entries) != len(names) + len(titles):
        raise UnsafeState("numpy.dtype fields hold keys that are neither names nor titles")
    _check_object_overlap(members)
    expected = NEEDS_PYAPI
    for member in members:
        expected |= member.dtype.flags & FROM_FIELDS
    normalized = _normalized(flags)
    widest = max((m.dtype.alignment for m in members), default=1)
    aligned_layout = all(m.offset % m.dtype.alignment == 0 for m in members) and (
        elsize % widest == 0
    )
    _check_flags(normalized, expected, aligned_ok=aligned_layout)
    if alignment != 1 and not (alignment == widest and aligned_layout):
        raise UnsafeState("numpy.dtype alignment is not the one numpy computes for its fields")
    return Dtype(
        "V",
        elsize,
        order,
        alignment,
        normalized,
        fields=tuple(members),
        has_object=any(m.dtype.has_object for m in members),
    )


def _field(name: str, entry: Any, elsize: int) -> Field:
    if not isinstance(entry, tuple) or len(entry) not in (2, 3):
        raise UnsafeState(f"numpy.dtype field {name!r} is not numpy's (dtype, offset)")
    dtype, offset = dtype_of(entry[0]), entry[1]
    title = entry[2] if len(entry) == 3 else None
    if len(entry) == 3 and type(title) is not str:
        raise UnsafeState(f"numpy.dtype field {name!r} title is not a string")
    if type(offset) is not int or offset < 0 or offset + dtype.itemsize > elsize:
        raise UnsafeState(
            f"numpy.dtype field {name!r} lies outside the item: numpy would read and "
            "write out of bounds"
        )
    return Field(name, dtype, offset, title)


def _check_object_overlap(members: list[Field]) -> None:
    """No two fields share bytes when either holds objects (numpy refuses to make
    such a dtype: a pointer would be written as raw bytes)."""
    spans = sorted(
        (m.offset, m.offset + m.dtype.itemsize, m.dtype.has_object)
        for m in members
        if m.dtype.itemsize > 0
    )
    reach = 0  # furthest end of the fields seen so far
    object_reach = 0  # furthest end of the object fields seen so far
    for start, end, has_object in spans:
        if start < object_reach or (has_object and start < reach):
            raise UnsafeState("numpy.dtype fields overlap an object field")
        reach = max(reach, end)
        if has_object:
            object_reach = max(object_reach, end)


def keeps_content(dtype: Dtype) -> bool:
    """Whether an array of this dtype has content a validator reads: integers,
    booleans, and structures (a tree's nodes) without Python objects."""
    if dtype.has_object:
        return False
    if dtype.subarray is not None:
        return keeps_content(dtype.subarray[0])
    return dtype.kind in "biu" or dtype.fields is not None
