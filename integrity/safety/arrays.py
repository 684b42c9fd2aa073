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

from collections.abc import Callable
from typing import Any

from integrity.safety.pickle_vm import Global, Obj, PickleMachine, SDict, product
from integrity.safety.states import UnsafeState
from integrity.safety.states.numpy_dtype import dtype_of, keeps_content
from integrity.safety.streams import FileSource
from integrity.safety.symbols import ArrayValue, ContentBudget

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
        nested.budget = vm.budget
        # What the nested pickle makes is what joblib returns for the wrapper.
        return nested.run()
    start = vm.source.tell()
    if state.items.get("numpy_array_alignment_bytes") is not None:
        padding = vm.read(1)[0]
        vm.skip(padding)
    nbytes = count * itemsize
    data, reader = None, None
    # Content the state validators read (integers, structures) is kept within the
    # budget: read when a validator asks for it from a file, read now from a
    # decompressed stream; the rest is skipped unread.
    if keeps_content(dtype) and isinstance(vm.source, FileSource):
        reader = _reader(vm.source, vm.source.tell(), nbytes, vm.budget)
        vm.skip(nbytes)
    elif keeps_content(dtype) and vm.budget.take(nbytes):
        data = vm.read(nbytes)
    else:
        vm.skip(nbytes)
    vm.array_spans.append((start, vm.source.tell()))
    order = "F" if state.get("order") == "F" else "C"
    return ArrayValue(
        NDARRAY, (), dtype=dtype, shape=shape, order=order, kept=data, built=True, reader=reader
    )


def _reader(
    source: FileSource, start: int, n: int, budget: ContentBudget
) -> Callable[[], bytes | None]:
    """Reads n bytes at `start` when first asked (within the budget), and returns
    the file to where the scan is."""

    def read() -> bytes | None:
        if not budget.take(n):
            return None
        try:
            here = source.tell()
            source.seek(start)
            try:
                data = source.read(n)
            finally:
                source.seek(here)
        except (OSError, ValueError):
            return None  # the scan is over and its file closed: content not kept
        return data if len(data) == n else None

    return read
