"""pandas' arrays over an ndarray (Categorical, DatetimeArray, StringArray).

pandas pickles them with Cython's `__pyx_unpickle_NDArrayBacked(cls, checksum,
None)` and a BUILD state `(dtype, ndarray[, attributes])` that
`NDArrayBacked.__setstate__` takes as it is: nothing ties the ndarray to the
dtype. The validator does: a Categorical's codes are integers within its
categories (-1 for missing), a DatetimeArray holds datetime64 values, a
StringArray holds Python objects. The unpickle helper makes only these
classes, with its state left to BUILD, as pandas writes it.
"""

from __future__ import annotations

from typing import Any

from integrity.safety.states import UnsafeState, on_build, on_call
from integrity.safety.states.library_arrays import (
    array,
    in_range,
    ints,
    keep,
    made_class,
    no_keywords,
    plain_int,
)
from integrity.safety.states.numpy_dtype import dtype_of
from integrity.safety.states.pandas_internals import index_length
from integrity.safety.states.stdlib_reconstructor import build_as_made_class
from integrity.safety.symbols import ArrayValue, Global, Obj, SDict

_SPELLINGS = {
    "Categorical": ("pandas", "pandas.core.arrays.categorical"),
    "DatetimeArray": ("pandas.arrays", "pandas.core.arrays.datetimes"),
    "StringArray": ("pandas.arrays", "pandas.core.arrays.string_"),
}
BACKED = {Global(module, name) for name, modules in _SPELLINGS.items() for module in modules}
CATEGORICAL_DTYPES = {
    Global("pandas", "CategoricalDtype"),
    Global("pandas.core.dtypes.dtypes", "CategoricalDtype"),
}
UNPICKLE = "pandas._libs.arrays:__pyx_unpickle_NDArrayBacked"


@on_call(UNPICKLE)
def unpickle_backed_call(made: Obj) -> Obj:
    no_keywords(made)
    if len(made.args) != 3 or made.args[0] not in BACKED:
        raise UnsafeState("NDArrayBacked's unpickle helper makes only pandas' own arrays")
    plain_int(made.args[1], "Cython unpickle checksum")
    if made.args[2] is not None:
        raise UnsafeState(
            "NDArrayBacked's unpickle helper is given a state: pandas sets it by BUILD"
        )
    return made


on_build(UNPICKLE)(build_as_made_class)


def _backed_state(state: Any, what: str) -> tuple[Any, ArrayValue]:
    if not isinstance(state, tuple) or len(state) not in (2, 3):
        raise UnsafeState(f"{what} state is not (dtype, ndarray[, attributes])")
    if len(state) == 3 and not isinstance(state[2], SDict):
        raise UnsafeState(f"{what} attributes are not a dict")
    return state[0], array(state[1], f"{what} values")


def _categories(dtype: Any) -> int:
    if made_class(dtype) not in CATEGORICAL_DTYPES or not isinstance(dtype, Obj):
        raise UnsafeState("Categorical dtype is not a CategoricalDtype")
    fields = dtype.state
    categories = None
    if isinstance(fields, SDict):  # pandas < 3 named them _categories
        categories = fields.get("categories") or fields.get("_categories")
    count = index_length(categories)
    if count is None:
        raise UnsafeState("Categorical categories have no length the scanner can follow")
    return count


@on_build(*(f"{g.module}:{g.name}" for g in BACKED if g.name == "Categorical"))
def categorical_build(target: Obj, state: Any) -> Obj:
    dtype, codes = _backed_state(state, "Categorical")
    if len(codes.shape) != 1:
        raise UnsafeState("Categorical codes are not one-dimensional")
    in_range(ints(codes, "Categorical codes"), -1, _categories(dtype), "Categorical codes")
    return keep(target, state)


@on_build(*(f"{g.module}:{g.name}" for g in BACKED if g.name == "DatetimeArray"))
def datetime_array_build(target: Obj, state: Any) -> Obj:
    dtype, values = _backed_state(state, "DatetimeArray")
    if dtype_of(dtype).kind != "M" or values.dtype is None or values.dtype.kind != "M":
        raise UnsafeState("DatetimeArray does not hold datetime64 values of a datetime64 dtype")
    return keep(target, state)


@on_build(*(f"{g.module}:{g.name}" for g in BACKED if g.name == "StringArray"))
def string_array_build(target: Obj, state: Any) -> Obj:
    _, values = _backed_state(state, "StringArray")
    if values.dtype is None or values.dtype.kind != "O":
        raise UnsafeState("StringArray does not hold Python objects")
    return keep(target, state)


@on_build(*(f"{g.module}:{g.name}" for g in CATEGORICAL_DTYPES))
def categorical_dtype_build(target: Obj, state: Any) -> Obj:
    # Kept once and copied: a Categorical's codes are checked against these categories.
    return keep(target, state)
