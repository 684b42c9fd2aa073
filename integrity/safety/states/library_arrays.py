"""What the library validators ask of the arrays and numbers in a state.

scikit-learn, pandas and scipy index memory with the integers in their arrays
(a tree's child indexes, a sparse matrix's column indexes, a block's item
positions) without checking them. A validator needs those integers: an array
whose content the scanner did not keep cannot be checked, and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from integrity.safety.states import UnsafeState
from integrity.safety.symbols import ArrayValue, Global, Obj, SDict, SList

MAX_INDEX = (1 << 63) - 1  # an intp


def array(value: Any, what: str, ndim: int | None = None) -> ArrayValue:
    """The ndarray a state holds, built, with `ndim` dimensions when given."""
    if not isinstance(value, ArrayValue) or not value.built or value.dtype is None:
        raise UnsafeState(f"{what} is not an ndarray the scanner could follow")
    if ndim is not None and len(value.shape) != ndim:
        raise UnsafeState(f"{what} has {len(value.shape)} dimensions, not {ndim}")
    return value


def ints(value: ArrayValue, what: str, field: str | None = None) -> Sequence[int]:
    """An integer array's (or field's) values; refuses what the scanner did not keep."""
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
