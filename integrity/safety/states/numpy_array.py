"""numpy's arrays and scalars: the sizes numpy's C code trusts, checked.

Every ndarray the pickle makes becomes an `ArrayValue` (symbols.py) that the
state validators of other libraries read (a tree's nodes, a sparse matrix's
indices). numpy writes an array as:

- `_reconstruct(ndarray, (0,), b'b')` and a BUILD with (1, shape, dtype,
  is_fortran, rawdata): rawdata is bytes of exactly shape × itemsize (numpy 2
  checks; a mismatch is never written), or, for a dtype holding objects, a list
  of exactly one item per element (numpy's `_setlist_pkl` reads the list
  without checking its length: a short list is an out-of-bounds read);
- `_frombuffer(buffer, dtype, shape, order[, axis_order])` at protocol 5;
- `numpy.ma`'s `_mareconstruct(MaskedArray, ndarray, (0,), 'b')` and a BUILD
  with the array state, mask bytes and fill value;
- a scalar as `scalar(dtype, bytes)` with exactly itemsize bytes (an object
  scalar as `scalar(dtype('O'), obj)`).

Anything else (a direct call of `ndarray` or `MaskedArray`, a second BUILD
on an array, a BUILD on a scalar) is not something numpy writes: refused.
"""

from __future__ import annotations

import math
from typing import Any

from integrity.safety.states import UnsafeState, on_build, on_call
from integrity.safety.states.numpy_dtype import (
    INT8,
    MAX_DIMS,
    Dtype,
    bytes_of,
    dtype_of,
    keeps_content,
)
from integrity.safety.symbols import ArrayValue, Global, Obj, SList

NDARRAY = Global("numpy", "ndarray")
MASKED_ARRAYS = (Global("numpy.ma.core", "MaskedArray"), Global("numpy.ma", "MaskedArray"))
_RECONSTRUCT = ("numpy.core.multiarray:_reconstruct", "numpy._core.multiarray:_reconstruct")
_FROMBUFFER = ("numpy.core.numeric:_frombuffer", "numpy._core.numeric:_frombuffer")
_SCALAR = ("numpy.core.multiarray:scalar", "numpy._core.multiarray:scalar")
_MARECONSTRUCT = "numpy.ma.core:_mareconstruct"


def _no_keywords(made: Obj) -> None:
    if made.keywords:
        raise UnsafeState("called with keyword arguments: numpy never writes that")


def _shape(value: Any) -> tuple[int, ...]:
    if (
        not isinstance(value, tuple)
        or len(value) > MAX_DIMS
        or not all(type(n) is int and n >= 0 for n in value)
    ):
        raise UnsafeState("array shape is not a tuple of sizes")
    return value


def _is_b(typecode: Any) -> bool:
    """numpy's placeholder typecode 'b' (bytes, or text in older pickles)."""
    if typecode == "b":
        return True
    found = bytes_of(typecode)
    return found is not None and found[1] == b"b"


@on_call(*_RECONSTRUCT)
def reconstruct_call(made: Obj) -> ArrayValue:
    _no_keywords(made)
    if len(made.args) != 3:
        raise UnsafeState("_reconstruct called with arguments numpy never writes")
    subtype, shape, typecode = made.args
    if subtype != NDARRAY or shape != (0,) or not _is_b(typecode):
        raise UnsafeState(
            "_reconstruct called with arguments numpy never writes (it writes ndarray, (0,), b'b')"
        )
    return _placeholder(made)


@on_call(_MARECONSTRUCT)
def mareconstruct_call(made: Obj) -> ArrayValue:
    _no_keywords(made)
    if len(made.args) != 4:
        raise UnsafeState("_mareconstruct called with arguments numpy never writes")
    subtype, baseclass, shape, typecode = made.args
    if subtype not in MASKED_ARRAYS or baseclass != NDARRAY or shape != (0,):
        raise UnsafeState("_mareconstruct called with classes numpy never writes")
    if not _is_b(typecode):
        raise UnsafeState("_mareconstruct called with a typecode numpy never writes")
    return _placeholder(made)


def _placeholder(made: Obj) -> ArrayValue:
    """What the call makes before its BUILD: an empty int8 array of shape (0,)."""
    return ArrayValue(made.callable, (), dtype=INT8, shape=(0,), kept=b"")


@on_call("numpy:ndarray", *(f"{g.module}:{g.name}" for g in MASKED_ARRAYS))
def direct_array_call(made: Obj) -> Obj:
    raise UnsafeState(
        "an array class called directly (numpy pickles arrays through _reconstruct, "
        "_frombuffer or _mareconstruct): its buffer, offset and strides would be trusted"
    )


def _array_content(
    target: ArrayValue, shape: Any, dtype_symbol: Any, is_fortran: Any, raw: Any
) -> None:
    """Set an array's BUILD state on `target`, as numpy's array_setstate reads it."""
    shape = _shape(shape)
    dtype = dtype_of(dtype_symbol)
    if type(is_fortran) not in (bool, int):
        raise UnsafeState("array is_fortran flag is not a boolean")
    count = math.prod(shape)
    if dtype.has_object:
        # numpy reads one list item per element, unchecked.
        if not isinstance(raw, SList) or len(raw.items) != count:
            raise UnsafeState(
                "object array data is not a list of one item per element: numpy would "
                "read past the list"
            )
        target.objects = raw
    else:
        found = bytes_of(raw)
        if found is None:
            raise UnsafeState("array data is not bytes")
        if found[0] != count * dtype.itemsize:
            raise UnsafeState("array data length is not its shape times its item size")
        target.data = found[1] if keeps_content(dtype) else None
    target.dtype = dtype
    target.shape = shape
    target.order = "F" if is_fortran else "C"
    target.built = True


def _unbuilt(target: Obj) -> ArrayValue:
    if not isinstance(target, ArrayValue) or target.built:
        raise UnsafeState("BUILD on an array already built: numpy never writes that")
    return target


@on_build(*_RECONSTRUCT)
def reconstruct_build(target: Obj, state: Any) -> ArrayValue:
    array = _unbuilt(target)
    if not isinstance(state, tuple) or len(state) != 5 or (type(state[0]), state[0]) != (int, 1):
        raise UnsafeState("ndarray state is not numpy's (1, shape, dtype, is_fortran, data)")
    _array_content(array, *state[1:])
    return array


@on_build(_MARECONSTRUCT)
def mareconstruct_build(target: Obj, state: Any) -> ArrayValue:
    array = _unbuilt(target)
    if not isinstance(state, tuple) or len(state) != 7 or (type(state[0]), state[0]) != (int, 1):
        raise UnsafeState("MaskedArray state is not numpy's 7-tuple")
    _array_content(array, *state[1:5])
    assert array.dtype is not None
    mask = bytes_of(state[5])
    if mask is None or mask[0] != array.size * _mask_itemsize(array.dtype):
        raise UnsafeState("MaskedArray mask is not one boolean per element")
    return array


def _mask_itemsize(dtype: Dtype) -> int:
    """Item size of numpy.ma's make_mask_descr(dtype): a packed boolean per leaf."""
    if dtype.fields is not None:
        return sum(_mask_itemsize(f.dtype) for f in dtype.fields)
    if dtype.subarray is not None:
        base, shape = dtype.subarray
        return math.prod(shape) * _mask_itemsize(base)
    return 1


@on_build("numpy:ndarray", *_FROMBUFFER, *_SCALAR)
def rebuilt(target: Obj, state: Any) -> Obj:
    raise UnsafeState("BUILD on an array or scalar numpy already made: numpy never writes that")


@on_call(*_FROMBUFFER)
def frombuffer_call(made: Obj) -> ArrayValue:
    _no_keywords(made)
    if len(made.args) not in (4, 5):
        raise UnsafeState("_frombuffer called with arguments numpy never writes")
    buffer, dtype_symbol, shape, order = made.args[:4]
    shape = _shape(shape)
    axis_order = made.args[4] if len(made.args) == 5 else None
    if order not in ("C", "F", "K") or (order == "K") != (axis_order is not None):
        raise UnsafeState("_frombuffer order is not numpy's")
    if axis_order is not None and (
        not isinstance(axis_order, tuple) or sorted(axis_order) != list(range(len(shape)))
    ):
        raise UnsafeState("_frombuffer axis order is not a permutation of the axes")
    dtype = dtype_of(dtype_symbol)
    found = bytes_of(buffer)
    if found is None:
        raise UnsafeState("_frombuffer buffer is not bytes")
    if dtype.has_object or dtype.itemsize == 0:
        raise UnsafeState("_frombuffer of a dtype numpy cannot read from a buffer")
    if found[0] != math.prod(shape) * dtype.itemsize:
        raise UnsafeState("_frombuffer buffer length is not its shape times its item size")
    data = found[1] if keeps_content(dtype) else None
    if axis_order is not None:
        # numpy reshapes in C order, then transposes: memory is neither C nor F.
        shape = tuple(shape[axis] for axis in axis_order)
    return ArrayValue(
        made.callable, (), dtype=dtype, shape=shape, order=order, kept=data, built=True
    )


@on_call(*_SCALAR)
def scalar_call(made: Obj) -> Obj:
    _no_keywords(made)
    if len(made.args) not in (1, 2):
        raise UnsafeState("scalar called with arguments numpy never writes")
    dtype = dtype_of(made.args[0])
    if dtype.kind == "O" and dtype.fields is None and dtype.subarray is None:
        return made  # the object itself is the scalar
    if dtype.has_object:
        raise UnsafeState("scalar of a structured dtype holding objects: numpy never writes it")
    if len(made.args) == 2:
        found = bytes_of(made.args[1])
        if found is None or found[0] != dtype.itemsize:
            raise UnsafeState("scalar data is not exactly one item of its dtype")
    return made
