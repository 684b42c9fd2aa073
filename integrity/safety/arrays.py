"""joblib's raw array data, followed exactly as joblib's loader reads it.

joblib writes an ndarray as a NumpyArrayWrapper object in the pickle and the
array's bytes right after that object's BUILD opcode: a padding byte and
padding (when the wrapper has an alignment), then shape × itemsize bytes; an
array of Python objects is a nested pickle instead. The scanner reads the
shape and dtype from the wrapper's symbolic state, skips exactly those bytes
(never loading them) and keeps scanning after them, or scans the nested pickle.
"""

from __future__ import annotations

import re
from typing import Any

from integrity.safety.pickle_vm import Global, Obj, Opaque, PickleMachine, SDict, product

MAX_NESTING = 8
NUMPY_DTYPE = Global("numpy", "dtype")
_WRAPPER_KEYS = {"subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes"}
# At most 9 digits: sizes numpy can have, and int() never meets its digit limit.
_SPEC = re.compile(r"^([biufcSUVOMm])(\d{0,9})$")


class DtypeError(ValueError):
    pass


def dtype_layout(dtype: Any, depth: int = 0) -> tuple[bool, int]:
    """(has Python objects, item size in bytes) of a symbolic numpy.dtype(...) call.

    Accepts the forms numpy's own pickling produces; anything else is refused.
    """
    if depth > MAX_NESTING:
        raise DtypeError("dtype nested too deeply")
    if not isinstance(dtype, Obj) or dtype.callable != NUMPY_DTYPE:
        raise DtypeError("dtype is not a numpy.dtype")
    if not dtype.args or type(dtype.args[0]) is not str:
        raise DtypeError("dtype spec is not a string")
    match = _SPEC.match(dtype.args[0])
    if not match:
        raise DtypeError(f"unsupported dtype spec {dtype.args[0]!r}")
    kind, digits = match.group(1), match.group(2)
    count = int(digits) if digits else 0
    has_object = kind == "O"
    if kind in "biufcSV":
        size = count
    elif kind == "U":
        size = 4 * count
    else:  # O, M, m: pointer-sized or 8-byte values
        size = count or 8
    state = dtype.state
    if state is None:
        if size <= 0 and kind != "O":
            raise DtypeError("dtype without a size")
        return has_object, size
    if not isinstance(state, tuple) or len(state) < 8:
        raise DtypeError("dtype state is not numpy's")
    subarray, names, fields, elsize, flags = state[2], state[3], state[4], state[5], state[7]
    if type(elsize) is not int or type(flags) is not int:
        raise DtypeError("dtype state has non-integer sizes")
    if subarray is not None:
        if not isinstance(subarray, tuple) or len(subarray) != 2:
            raise DtypeError("dtype subarray is not numpy's")
        base_object, _ = dtype_layout(subarray[0], depth + 1)
        has_object = has_object or base_object
    if fields is not None:
        if not isinstance(fields, SDict) or fields.other or not isinstance(names, tuple):
            raise DtypeError("dtype fields are not numpy's")
        for entry in fields.items.values():
            if not isinstance(entry, tuple) or len(entry) < 2:
                raise DtypeError("dtype field is not numpy's")
            field_object, _ = dtype_layout(entry[0], depth + 1)
            has_object = has_object or field_object
    if elsize > 0:
        if size and size != elsize:
            raise DtypeError("dtype item size disagrees with its spec")
        size = elsize
    elif elsize != -1 or size <= 0:
        raise DtypeError("dtype without a valid item size")
    # numpy marks dtypes holding objects in bit 0 of the flags; a state that
    # disagrees with its own fields is not one numpy wrote.
    if bool(flags & 1) != has_object:
        raise DtypeError("dtype object flag disagrees with its fields")
    return has_object, size


def read_joblib_array(vm: PickleMachine, wrapper: Obj, offset: int) -> Any:
    """Consume the data joblib stores after a NumpyArrayWrapper (the BUILD at `offset`)."""
    state = wrapper.state
    if not isinstance(state, SDict) or state.other or not set(state.items) <= _WRAPPER_KEYS:
        raise vm._fail("malformed", "NumpyArrayWrapper state is not joblib's", offset)
    if not isinstance(state.get("subclass"), Global):
        raise vm._fail("malformed", "NumpyArrayWrapper subclass is not a named class", offset)
    shape = state.get("shape")
    if not isinstance(shape, tuple):
        raise vm._fail("malformed", "NumpyArrayWrapper shape is not a tuple", offset)
    count = product(shape)
    if count is None:
        raise vm._fail("malformed", "NumpyArrayWrapper shape is not a tuple of sizes", offset)
    if state.get("order") not in ("C", "F"):
        raise vm._fail("malformed", "NumpyArrayWrapper order is not 'C' or 'F'", offset)
    try:
        has_object, itemsize = dtype_layout(state.get("dtype"))
    except DtypeError as exc:
        raise vm._fail("malformed", f"NumpyArrayWrapper {exc}", offset) from None
    if vm.first_array is None:
        # Plain pickle.load reads on from here as opcodes (the scanner's second pass);
        # from here on this machine follows joblib's reading alone.
        vm.first_array = vm.source.tell()
        vm.c = False
    # The array's bytes are read from the file, not from a pickle frame: a
    # frame still open here means the scanner and the loader would disagree.
    if vm.frame_end is not None and vm.source.tell() < vm.frame_end:
        raise vm._fail("bad-frame", "array data starts inside a pickle frame", offset)
    vm.frame_end = None
    if has_object:
        if vm.depth >= MAX_NESTING:
            raise vm._fail("malformed", "object arrays nested too deeply", offset)
        # joblib reads it with a plain unpickler: no raw array data inside.
        nested = PickleMachine(vm.source, vm.check_global, None, depth=vm.depth + 1)
        nested.c = False  # joblib's plain pure-Python Unpickler alone reads it
        nested.run()
        return Opaque("object array")
    start = vm.source.tell()
    if state.items.get("numpy_array_alignment_bytes") is not None:
        padding = vm.read(1)[0]
        vm.skip(padding)
    nbytes = count * itemsize
    vm.skip(nbytes)
    vm.array_spans.append((start, vm.source.tell()))
    return Opaque("array", nbytes)
