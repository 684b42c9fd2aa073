"""pandas' block manager: the item positions its Cython code writes through.

A DataFrame is stored as blocks, each holding some of its columns; a block's
placement says which. pandas' `BlockManager` builds its column-to-block maps
(`blknos`, `blklocs`) by writing at each placement with bounds checks off:
a placement outside the frame writes out of the map's buffer, and the heap is
corrupt on the first column access. pandas itself only checks that the
placements' total is the number of columns. The validator checks that the
placements are exactly the column positions 0..n-1, each once, each block
placed for as many columns as its values hold, and that the columns' index is
that long where the state sets it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from integrity.safety.states import UnsafeState, on_build, on_call
from integrity.safety.states.library_arrays import array, hold, ints, keep, no_keywords, plain_int
from integrity.safety.symbols import ArrayValue, Global, Obj, SDict, SList

SLICE = Global("builtins", "slice")
UNPICKLE_BLOCK = Global("pandas._libs.internals", "_unpickle_block")
NEW_INDEX = Global("pandas.core.indexes.base", "_new_Index")
_STATE_VERSION = "0.14.1"  # the only state pandas reads (older ones are refused by pandas)


def placement(value: Any, what: str) -> Sequence[int]:
    """The item positions of a block placement: a slice or an integer array."""
    if isinstance(value, Obj) and value.callable == SLICE:
        parts = list(value.args) + [None] * (3 - len(value.args))
        if len(value.args) not in (1, 2, 3):
            raise UnsafeState(f"{what} placement is not a slice pandas writes")
        if len(value.args) == 1:
            parts = [None, value.args[0], None]
        start = 0 if parts[0] is None else plain_int(parts[0], f"{what} placement")
        stop = plain_int(parts[1], f"{what} placement")
        step = 1 if parts[2] is None else plain_int(parts[2], f"{what} placement", 1)
        return range(start, stop, step)
    return ints(array(value, f"{what} placement", ndim=1), f"{what} placement")


def values_shape(value: Any, what: str) -> tuple[int, ...]:
    """The shape of a block's values: an ndarray, or a pandas array over one."""
    if isinstance(value, ArrayValue):
        return array(value, what).shape
    state = value.state if isinstance(value, Obj) else None
    if isinstance(state, tuple) and len(state) in (2, 3):
        return array(state[1], what).shape
    raise UnsafeState(f"{what} values are not an array the scanner follows")


def index_length(value: Any) -> int | None:
    """The length of a pandas Index made by _new_Index, when the pickle says it."""
    if not isinstance(value, Obj) or value.callable != NEW_INDEX or len(value.args) != 2:
        return None
    cls, fields = value.args
    if not isinstance(cls, Global) or not isinstance(fields, SDict):
        return None
    if cls.name == "RangeIndex":
        bounds = [fields.get(key) for key in ("start", "stop", "step")]
        if all(type(n) is int for n in bounds) and bounds[2] != 0:
            return len(range(*bounds))
        return None
    try:
        shape = values_shape(fields.get("data"), "pandas Index")
    except UnsafeState:
        return None
    return shape[0] if len(shape) == 1 else None


def _check_blocks(blocks: list[tuple[Any, Any, int]], items: int | None, what: str) -> None:
    """Blocks given as (values, placement, ndim): placements are 0..n-1, each once."""
    seen: set[int] = set()
    total = 0
    for values, locations, ndim in blocks:
        positions = placement(locations, what)
        shape = values_shape(values, f"{what} block")
        count = shape[0] if ndim == 2 and len(shape) == 2 else 1
        if len(positions) != count:
            raise UnsafeState(f"{what} block is placed at {len(positions)} columns, holds {count}")
        total += len(positions)
        seen.update(positions)
    if len(seen) != total or (total and (min(seen) < 0 or max(seen) >= total)):
        raise UnsafeState(
            f"{what} block placements are not the column positions 0..{total - 1}, each once: "
            "pandas writes through them unchecked (heap corruption)"
        )
    if items is not None and items != total:
        raise UnsafeState(f"{what} blocks hold {total} columns, its columns index {items}")


@on_call("pandas.core.indexes.base:_new_Index")
def new_index_call(made: Obj) -> Obj:
    no_keywords(made)
    # _new_Index(cls, fields) reads the dict once: later changes to the pickle's dict
    # do not reach the Index, so the length read from it is taken now.
    if len(made.args) == 2 and isinstance(made.args[1], SDict):
        fields = made.args[1]
        hold(list(fields.items.values()))
        return replace(made, args=(made.args[0], SDict(dict(fields.items), list(fields.other))))
    return made


@on_call("pandas._libs.internals:_unpickle_block")
def unpickle_block_call(made: Obj) -> Obj:
    no_keywords(made)
    if len(made.args) != 3:
        raise UnsafeState("_unpickle_block takes (values, placement, ndim)")
    values, locations, ndim = made.args
    if ndim not in (1, 2) or type(ndim) is not int:
        raise UnsafeState("_unpickle_block ndim is not 1 or 2")
    positions = placement(locations, "a pandas block")
    if positions and min(positions) < 0:
        raise UnsafeState("a pandas block placement is negative")
    values_shape(values, "a pandas block")
    return made


@on_call("pandas.core.internals.managers:BlockManager")
def block_manager_call(made: Obj) -> Obj:
    no_keywords(made)
    # BlockManager(blocks, axes): pandas verifies the total, not the positions.
    if len(made.args) != 2:
        raise UnsafeState("BlockManager is made with (blocks, axes)")
    blocks, axes = made.args
    items = blocks.items if isinstance(blocks, SList) else blocks
    if not isinstance(items, tuple | list) or not all(
        isinstance(b, Obj) and b.callable == UNPICKLE_BLOCK and len(b.args) == 3 for b in items
    ):
        raise UnsafeState("BlockManager blocks are not pandas blocks")
    axis_list = axes.items if isinstance(axes, SList) else axes
    columns = (
        index_length(axis_list[0]) if isinstance(axis_list, tuple | list) and axis_list else None
    )
    _check_blocks([b.args for b in items], columns, "BlockManager")
    hold([blocks, axes])
    return made


def _managed_blocks(state: Any, what: str) -> tuple[list[tuple[Any, Any, int]], list[Any]]:
    if not isinstance(state, tuple) or len(state) < 4 or not isinstance(state[3], SDict):
        raise UnsafeState(f"{what} state is not the one pandas writes")
    inner = state[3].get(_STATE_VERSION)
    if not isinstance(inner, SDict):
        raise UnsafeState(f"{what} state is not pandas' {_STATE_VERSION} state")
    axes, blocks = inner.get("axes"), inner.get("blocks")
    if not isinstance(axes, SList) or not isinstance(blocks, SList):
        raise UnsafeState(f"{what} axes and blocks are not lists")
    found = []
    for block in blocks.items:
        if not isinstance(block, SDict) or set(block.items) != {"values", "mgr_locs"}:
            raise UnsafeState(f"{what} block is not (values, mgr_locs)")
        found.append((block.get("values"), block.get("mgr_locs"), len(axes.items)))
    return found, axes.items


@on_build("pandas.core.internals.managers:BlockManager")
def block_manager_build(target: Obj, state: Any) -> Obj:
    blocks, axes = _managed_blocks(state, "BlockManager")
    columns = index_length(axes[0]) if len(axes) == 2 else None
    if columns is None:
        raise UnsafeState("BlockManager columns index has no length the scanner can follow")
    _check_blocks(blocks, columns, "BlockManager")
    return keep(target, state)


@on_build("pandas.core.internals.managers:SingleBlockManager")
def single_block_manager_build(target: Obj, state: Any) -> Obj:
    blocks, _ = _managed_blocks(state, "SingleBlockManager")
    if len(blocks) != 1:
        raise UnsafeState("SingleBlockManager holds more than one block")
    values, locations, _ = blocks[0]
    positions = placement(locations, "SingleBlockManager")
    length = values_shape(values, "SingleBlockManager")[0]
    if positions and not 0 <= min(positions) <= max(positions) < max(length, 1):
        raise UnsafeState("SingleBlockManager placement is outside its values")
    return keep(target, state)
