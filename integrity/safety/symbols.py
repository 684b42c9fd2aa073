"""The values the symbolic pickle machine works with: symbols, never real objects.

A global is a name (never imported), a call is the name and its arguments
(never made), containers hold symbols. The machine (`pickle_vm`), joblib's
array data (`arrays`) and the state validators (`states`) share them.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from integrity.safety.states.numpy_dtype import Dtype


@dataclass(frozen=True)
class Global:
    module: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class Obj:
    """The result of calling an allowed global (REDUCE, NEWOBJ, INST, OBJ)."""

    callable: Global
    args: tuple[Any, ...]
    state: Any = None
    # NEWOBJ_EX's keyword arguments (None for the other calls).
    keywords: SDict | None = None


@dataclass
class Opaque:
    """A value the scanner does not keep (large bytes, an array read from raw data)."""

    kind: str
    size: int = 0
    # The bytes, when kept within the file's content budget (a bytearray's).
    data: bytes | None = None


@dataclass
class SList:
    items: list[Any] = field(default_factory=list)
    # A state validator checked an object holding this list (by reference): the
    # pickle may not change it any more.
    checked: bool = False


@dataclass
class SDict:
    items: dict[Any, Any] = field(default_factory=dict)
    # Keys that are not hashable symbols are kept here.
    other: list[tuple[Any, Any]] = field(default_factory=list)

    def get(self, key: str) -> Any:
        return self.items.get(key)


@dataclass
class SSet:
    items: list[Any] = field(default_factory=list)


class ContentBudget:
    """How many bytes of array content one file's scan may keep in memory.

    Array content is kept for the state validators (a tree's child indexes, a
    sparse matrix's indices): within this budget, never beyond it. What was not
    kept is None to a validator, which then refuses what it cannot check."""

    DEFAULT = 256 << 20

    def __init__(self, limit: int = DEFAULT) -> None:
        self.left = limit

    def take(self, n: int) -> bool:
        """Reserve n bytes; False (and nothing reserved) when they do not fit."""
        if n > self.left:
            return False
        self.left -= n
        return True


# struct codes for numpy's integer, boolean and float kinds, by (kind, size).
_CODES = {
    ("b", 1): "?",
    ("i", 1): "b",
    ("i", 2): "h",
    ("i", 4): "i",
    ("i", 8): "q",
    ("u", 1): "B",
    ("u", 2): "H",
    ("u", 4): "I",
    ("u", 8): "Q",
    ("f", 2): "e",
    ("f", 4): "f",
    ("f", 8): "d",
}
_NATIVE = "<" if sys.byteorder == "little" else ">"


@dataclass
class ArrayValue(Obj):
    """An ndarray the pickle makes, as numpy will hold it: for state validators.

    Made for every ndarray the scanner follows: joblib's NumpyArrayWrapper once its
    data is read (`callable` numpy.ndarray), `numpy.core.multiarray._reconstruct` /
    `numpy._core.multiarray._reconstruct` once its BUILD set the state
    (version, shape, dtype, is_fortran, rawdata), `_frombuffer` (protocol 5).
    Until its BUILD, a `_reconstruct` array is what numpy makes first, an empty
    int8 array of shape (0,), with `built=False`.

    - `dtype`: the descriptor numpy holds (`states.numpy_dtype.Dtype`: kind,
      itemsize, byteorder, fields (name, dtype, offset), subarray, has_object);
    - `shape`: a tuple of ints; `order`: 'C' or 'F', the memory order of `data`
      ('K' for a protocol 5 array of another layout: its memory order is neither);
    - `data`: the raw bytes when they were kept (integer, boolean and structured
      dtypes, within the file's `ContentBudget`), else None. Joblib data in a plain
      file is read only when a validator first asks for it (`data`, `ints`):
      scanning never reads an array nobody checks;
    - `objects`: an object array's items (the symbolic list), else None;
    - `ints(field)` / `floats(field)`: the values of the array (or of one field of
      a structured array), flattened in memory order, or None when the content was
      not kept, the field does not exist or is not of that kind. A field that is a
      subarray gives its elements in order, item after item.

    A validator that needs content it was not given raises UnsafeState: never
    guess. Decoding uses memoryview.cast and struct; numpy is never imported.
    """

    dtype: Dtype | None = None
    shape: tuple[int, ...] = ()
    order: str = "C"
    kept: bytes | None = None  # the content read so far (see `data`)
    objects: Any = None
    built: bool = False
    # Reads the content on first use (joblib data in a seekable file), once.
    reader: Callable[[], bytes | None] | None = field(default=None, repr=False, compare=False)

    @property
    def data(self) -> bytes | None:
        if self.kept is None and self.reader is not None:
            reader, self.reader = self.reader, None
            self.kept = reader()
        return self.kept

    @data.setter
    def data(self, value: bytes | None) -> None:
        self.kept, self.reader = value, None

    @property
    def size(self) -> int:
        """Number of elements (numpy's `size`)."""
        count = 1
        for n in self.shape:
            count *= n
        return count

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize if self.dtype is not None else 0

    def ints(self, field: str | None = None) -> Sequence[int] | None:
        """Integer (or boolean) values, flattened in memory order; None if not kept."""
        return cast("Sequence[int] | None", self._values(field, "biu"))

    def floats(self, field: str | None = None) -> Sequence[float] | None:
        """Float values (f2, f4, f8), flattened in memory order; None if not kept."""
        return cast("Sequence[float] | None", self._values(field, "f"))

    def _values(self, name: str | None, kinds: str) -> Sequence[Any] | None:
        dtype, data = self.dtype, self.data
        if dtype is None or data is None or len(data) != self.nbytes:
            return None
        offset = 0
        if name is not None:
            member = dtype.field(name)
            if member is None:
                return None
            offset, dtype = member.offset, member.dtype
        elif dtype.fields is not None:
            return None
        count = 1
        if dtype.subarray is not None:
            dtype, shape = dtype.subarray
            for n in shape:
                count *= n
        code = _CODES.get((dtype.kind, dtype.itemsize))
        if code is None or dtype.kind not in kinds or dtype.fields is not None:
            return None
        order = ">" if dtype.byteorder == ">" else "<" if dtype.byteorder == "<" else _NATIVE
        itemsize = self.dtype.itemsize if self.dtype is not None else 0
        if itemsize == 0 or self.size == 0:
            return []
        # memoryview casts native single-character formats ('e' is not one).
        if offset == 0 and count * dtype.itemsize == itemsize and order == _NATIVE and code != "e":
            view: Any = memoryview(data)
            return cast("Sequence[Any]", view.cast(code))
        tail = itemsize - offset - count * dtype.itemsize
        layout = struct.Struct(f"{order}{offset}x{count}{code}{tail}x")
        if count == 1:
            return [item[0] for item in layout.iter_unpack(data)]
        return [value for item in layout.iter_unpack(data) for value in item]
