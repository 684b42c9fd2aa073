"""numpy.dtype: its C __setstate__ trusts sizes, offsets and flags it is given."""

from __future__ import annotations

from typing import Any

from integrity.safety.states import UnsafeState, on_build
from integrity.safety.symbols import Obj, SDict


@on_build("numpy:dtype")
def dtype_state(target: Obj, state: Any) -> Obj:
    if not _numpy_dtype_state(state):
        raise UnsafeState(
            "numpy.dtype state in a shape numpy never writes: numpy can crash loading it"
        )
    target.state = state
    return target


def _numpy_dtype_state(state: Any) -> bool:
    """Whether a dtype's BUILD state has the shape numpy's __reduce__ writes:
    (3, byteorder, subarray, names, fields, elsize, alignment, flags), plus
    metadata at version 4. numpy's C __setstate__ trusts what it is given."""
    if not isinstance(state, tuple) or len(state) not in (8, 9):
        return False
    version, order, subarray, names, fields, elsize, alignment, flags = state[:8]
    if (version, len(state)) not in ((3, 8), (4, 9)) or order not in ("<", ">", "|", "="):
        return False
    if subarray is not None and not (isinstance(subarray, tuple) and len(subarray) == 2):
        return False
    if names is not None and not (isinstance(names, tuple) and all(type(n) is str for n in names)):
        return False
    if fields is not None and not isinstance(fields, SDict):
        return False
    if (names is None) != (fields is None):
        return False
    return all(type(v) is int for v in (elsize, alignment, flags))
