"""scipy's sparse matrices: the index arrays its C++ sparsetools trust.

A CSR/CSC/COO matrix is pickled as its `__dict__` (shape, data, index
arrays) and unpickled without a check; the first product, `toarray()` or
conversion hands the arrays to C++ loops that index memory with them. An
`indptr` past the data or an index past the shape reads and writes out of
bounds. The validator checks what scipy's own `check_format` checks, before
any of it is allowed: pointer arrays start at 0, never decrease, end within
the data; indices lie within the shape; index arrays are one integer type.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from integrity.safety.states import UnsafeState, on_build
from integrity.safety.states.library_arrays import (
    MAX_INDEX,
    array,
    in_range,
    ints,
    keep,
    plain_int,
)
from integrity.safety.symbols import ArrayValue, Obj, SDict

_FLAGS = frozenset(
    ["maxprint", "_has_canonical_format", "_has_sorted_indices", "has_canonical_format"]
)
# scipy < 1.8 kept the format name in the dict; scipy < 1.13 coo kept row and col.
_OLD = frozenset(["format", "_shape", "row", "col", "coords"])


def _state(state: Any, what: str) -> SDict:
    if not isinstance(state, SDict) or state.other:
        raise UnsafeState(f"{what} state is not a dict of names")
    unknown = set(state.items) - _FLAGS - _OLD - {"data", "indices", "indptr"}
    if unknown:
        raise UnsafeState(f"{what} state holds names scipy never writes: {sorted(unknown)}")
    return state


def _shape(state: SDict, what: str) -> tuple[int, int]:
    shape = state.get("_shape")
    if not isinstance(shape, tuple) or len(shape) != 2:
        raise UnsafeState(f"{what} shape is not two sizes")
    return plain_int(shape[0], f"{what} shape"), plain_int(shape[1], f"{what} shape")


def _index(value: Any, what: str) -> tuple[ArrayValue, Sequence[int]]:
    index = array(value, what, ndim=1)
    if index.dtype is None or index.dtype.kind != "i" or index.dtype.itemsize not in (4, 8):
        raise UnsafeState(f"{what} is not an int32 or int64 array")
    return index, ints(index, what)


@on_build("scipy.sparse._csr:csr_matrix", "scipy.sparse._csc:csc_matrix")
def compressed_build(target: Obj, state: Any) -> Obj:
    what = target.callable.name
    state = _state(state, what)
    rows, columns = _shape(state, what)
    major, minor = (rows, columns) if what.startswith("csr") else (columns, rows)
    pointer_array, pointers = _index(state.get("indptr"), f"{what} indptr")
    index_array, indices = _index(state.get("indices"), f"{what} indices")
    if pointer_array.dtype != index_array.dtype:
        raise UnsafeState(f"{what} indptr and indices are not one integer type")
    data = array(state.get("data"), f"{what} data", ndim=1)
    if len(pointers) != major + 1 or pointers[0] != 0:
        raise UnsafeState(f"{what} indptr is not one start per row (or column) plus the end")
    if any(b < a for a, b in itertools.pairwise(pointers)):
        raise UnsafeState(f"{what} indptr decreases")
    if pointers[-1] > min(len(indices), data.shape[0]):
        raise UnsafeState(f"{what} indptr runs past its indices or data: out-of-bounds access")
    in_range(indices[: pointers[-1]], 0, minor, f"{what} indices")
    return keep(target, state)


@on_build("scipy.sparse._coo:coo_matrix")
def coordinate_build(target: Obj, state: Any) -> Obj:
    state = _state(state, "coo_matrix")
    shape = _shape(state, "coo_matrix")
    coords = state.get("coords")
    if coords is None:
        coords = (state.get("row"), state.get("col"))
    if not isinstance(coords, tuple) or len(coords) != 2:
        raise UnsafeState("coo_matrix coordinates are not a row and a column array")
    data = array(state.get("data"), "coo_matrix data", ndim=1)
    for axis, (value, size) in enumerate(zip(coords, shape, strict=True)):
        _, positions = _index(value, f"coo_matrix coordinates {axis}")
        if len(positions) != data.shape[0]:
            raise UnsafeState("coo_matrix coordinates are not one per value")
        in_range(positions, 0, min(size, MAX_INDEX), f"coo_matrix coordinates {axis}")
    return keep(target, state)
