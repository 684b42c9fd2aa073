"""What the library validators ask of the arrays and numbers in a state.

scikit-learn, pandas and scipy index memory with the integers in their arrays
(a tree's child indexes, a sparse matrix's column indexes, a block's item
positions) without checking them. A validator needs those integers: an array
whose content the scanner did not keep cannot be checked, and is refused.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from integrity.safety.states import UnsafeState
from integrity.safety.states.numpy_dtype import bytes_of, dtype_of
from integrity.safety.symbols import ArrayValue, Global, Obj, SDict, SList

MAX_INDEX = (1 << 63) - 1  # an intp


def no_keywords(made: Obj) -> None:
    """The libraries' pickles never call with keyword arguments (NEWOBJ_EX): a keyword
    would pass around the positional arguments a call validator checks."""
    if made.keywords is not None and (made.keywords.items or made.keywords.other):
        raise UnsafeState(f"{made.callable.qualified} called with keyword arguments")


def array(value: Any, what: str, ndim: int | None = None) -> ArrayValue:
    """The ndarray a state holds, built, with `ndim` dimensions when given."""
    if not isinstance(value, ArrayValue) or not value.built or value.dtype is None:
        raise UnsafeState(f"{what} is not an ndarray the scanner could follow")
    if ndim is not None and len(value.shape) != ndim:
        raise UnsafeState(f"{what} has {len(value.shape)} dimensions, not {ndim}")
    return value


# memoryview codes of native integer fields, by (kind, size).
_FIELD_CODES = {("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q"}
_FIELD_CODES |= {("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "Q", ("b", 1): "B"}
_NATIVE = ("<", "=", "|") if sys.byteorder == "little" else (">", "=", "|")


def _strided_field(value: ArrayValue, name: str) -> Sequence[int] | None:
    """A native integer field whose offset and the item size are multiples of its size,
    as a strided view of the bytes (no copy): a forest's node fields, fast. None where
    `ArrayValue.ints` must decode it."""
    dtype, data = value.dtype, value.data
    member = dtype.field(name) if dtype is not None else None
    if dtype is None or data is None or member is None or member.dtype.subarray is not None:
        return None
    size, offset, step = member.dtype.itemsize, member.offset, dtype.itemsize
    code = _FIELD_CODES.get((member.dtype.kind, size))
    if code is None or member.dtype.byteorder not in _NATIVE or offset % size or step % size:
        return None
    if len(data) != value.size * step or step == 0:
        return None
    raw: Any = memoryview(data)  # cast() is typed for literal codes only
    values: Sequence[int] = raw.cast(code)[offset // size :: step // size]
    return values


def ints(value: ArrayValue, what: str, field: str | None = None) -> Sequence[int]:
    """An integer array's (or field's) values; refuses what the scanner did not keep."""
    values = _strided_field(value, field) if field is not None else None
    if values is None:
        values = value.ints(field)
    if values is None:
        name = what if field is None else f"{what} field {field!r}"
        raise UnsafeState(
            f"{name}: its integers are not in the scan (not an integer array, or too large "
            "to keep), so they cannot be checked"
        )
    return values


def in_range(values: Sequence[int], low: int, high: int, what: str) -> None:
    """Every value in [low, high)."""
    if len(values) and (min(values) < low or max(values) >= high):
        raise UnsafeState(f"{what} lie outside [{low}, {high})")


def plain_int(value: Any, what: str, low: int = 0, high: int = MAX_INDEX) -> int:
    if type(value) is not int or not low <= value <= high:
        raise UnsafeState(f"{what} is not an int in [{low}, {high}]")
    return value


def integer(value: Any) -> int | None:
    """A plain int, or the value of a numpy integer scalar (numpy.int64(3) pickles as
    `scalar(dtype, bytes)`); None for anything else."""
    if type(value) is int:
        return value
    if not isinstance(value, Obj) or value.callable.name != "scalar" or len(value.args) != 2:
        return None
    try:
        dtype = dtype_of(value.args[0])
    except UnsafeState:
        return None
    found = bytes_of(value.args[1])
    if dtype.kind not in "iu" or found is None or found[1] is None:
        return None
    big = dtype.byteorder == ">" or (dtype.byteorder in "=|" and sys.byteorder == "big")
    return int.from_bytes(found[1], "big" if big else "little", signed=dtype.kind == "i")


def plain_number(value: Any, what: str) -> float:
    if type(value) not in (int, float):
        raise UnsafeState(f"{what} is not a plain number")
    return float(value)


def state_dict(
    state: Any, what: str, keys: set[str], optional: frozenset[str] = frozenset()
) -> SDict:
    """A BUILD state that is a dict of exactly `keys` (plus any of `optional`)."""
    if not isinstance(state, SDict) or state.other:
        raise UnsafeState(f"{what} state is not a dict of names")
    missing = keys - set(state.items)
    extra = set(state.items) - keys - optional
    if missing or extra:
        raise UnsafeState(
            f"{what} state is not the dict its library writes (missing {sorted(missing)}, "
            f"unexpected {sorted(map(str, extra))})"
        )
    return state


def made_class(value: Any) -> Global | None:
    """The class of an object a pickle makes: the callable of NEWOBJ or REDUCE, or the
    class a factory (copyreg._reconstructor, newObj, __pyx_unpickle_*) is given."""
    if not isinstance(value, Obj):
        return None
    name = value.callable.name
    factory = name in ("_reconstructor", "newObj") or name.startswith("__pyx_unpickle_")
    if factory and value.args and isinstance(value.args[0], Global):
        return value.args[0]
    return value.callable


def keep(target: Obj, state: Any) -> Obj:
    """Give a checked BUILD state to its object, and hold the pickle to it.

    Once: the libraries write one state per object, and a second BUILD would change
    (or, on a Python object, merge into) what was checked. A dict state is copied:
    the object keeps its values, not the pickle's dict, which may still change. Lists
    in the state are the object's own (by reference): the pickle may not change them.
    """
    if target.state is not None:
        raise UnsafeState(
            f"{target.callable.qualified} is built twice: its library writes one state"
        )
    if isinstance(state, SDict):
        state = SDict(dict(state.items), list(state.other))
        hold(list(state.items.values()))
    elif isinstance(state, tuple):
        hold(list(state))
    target.state = state
    return target


def hold(values: list[Any], depth: int = 0) -> None:
    """Lists among `values` (an object holds them by reference) may no longer change."""
    for value in values:
        if isinstance(value, SList) and not value.checked:
            value.checked = True
            if depth < 4:
                hold(value.items, depth + 1)
        elif isinstance(value, tuple) and depth < 4:
            hold(list(value), depth + 1)
