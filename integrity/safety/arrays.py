"""joblib's raw array data, followed exactly as joblib's loader reads it.

joblib writes an ndarray as a NumpyArrayWrapper object in the pickle and the
array's bytes right after that object's BUILD opcode: a padding byte and
padding (when the wrapper has an alignment), then shape × itemsize bytes; an
array of Python objects is a nested pickle instead. The scanner reads the
shape and dtype from the wrapper's symbolic state, skips exactly those bytes
(never loading them) and keeps scanning after them, or scans the nested pickle.
The dtype is modelled exactly as numpy holds it (`states.numpy_dtype`); the
array becomes an `ArrayValue`, with its bytes kept for integer and structured
dtypes (the state validators read them) within the file's content budget.
"""

from __future__ import annotations

from typing import Any

from integrity.safety.pickle_vm import Global, Obj, PickleMachine, SDict, product
from integrity.safety.states import UnsafeState
from integrity.safety.states.numpy_dtype import dtype_of, keeps_content
from integrity.safety.symbols import ArrayValue

MAX_NESTING = 8
_WRAPPER_KEYS = {"subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes"}
NDARRAY = Global("numpy", "ndarray")


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
        dtype = dtype_of(state.get("dtype"))
    except UnsafeState as exc:
        raise vm._fail("unsafe-state", f"NumpyArrayWrapper: {exc.message}", offset) from None
    has_object, itemsize = dtype.has_object, dtype.itemsize
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
        nested.budget = vm.budget
        # What the nested pickle makes is what joblib returns for the wrapper.
        return nested.run()
    if vm.shadow is not None:
        # Raw bytes joblib skips unread: plain pickle.load reads them as opcodes.
        # (An object array's nested pickle is scanned as a pickle already; read
        # on by pickle.load, its memo gets would fetch the outer pickle's memo.)
        vm.shadow(vm)
    if state.items.get("numpy_array_alignment_bytes") is not None:
        padding = vm.read(1)[0]
        vm.skip(padding)
    nbytes = count * itemsize
    data = None
    # Content the state validators read (integers, structures) is kept within the
    # budget; the rest is skipped unread.
    if keeps_content(dtype) and vm.budget.take(nbytes):
        data = vm.read(nbytes)
    else:
        vm.skip(nbytes)
    order = "F" if state.get("order") == "F" else "C"
    return ArrayValue(NDARRAY, (), dtype=dtype, shape=shape, order=order, data=data, built=True)
