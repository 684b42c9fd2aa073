"""PyTorch checkpoints, read without torch: the zip format, the legacy format and the legacy tar.

`torch.load` reads three layouts (torch/serialization.py):
- zip (torch >= 1.6): `<prefix>/data.pkl` is a pickle whose tensors name their storages
  through persistent ids `('storage', storage_type, key, location, numel)`; each storage is
  the raw member `<prefix>/data/<key>` of exactly `numel` elements. PyTorch's reader takes
  the prefix from the first central-directory name and finds names ignoring ASCII case. A
  `constants.pkl` makes it a TorchScript archive, which torch.load hands to torch.jit.load.
- legacy (`_use_new_zipfile_serialization=False`): five pickles in a row (magic number,
  protocol version, system info, the object with persistent ids
  `('storage', storage_type, root_key, location, numel, view_metadata)`, the list of storage
  keys), then each storage as an int64 element count and its raw bytes.
- tar (torch < 0.4): members `storages`, `tensors` (pickles between raw records) and `pickle`
  (the object, whose persistent ids are storage or tensor keys); tried first on any file.

The pickles are scanned like any other, with PyTorch's own globals allowed only here
(`TORCH_GLOBALS`: the rebuild functions torch.save writes for tensors and parameters, the
storage classes and dtypes it names, `torch.device` and `torch.Size`), each checked by a state
validator: a tensor must lie inside a storage the file holds. Everything else is refused: a
whole `nn.Module` names the user's class, TorchScript runs code, quantized and subclassed
tensors call rebuild functions this scanner does not vouch for.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from integrity.safety import states
from integrity.safety.allowlist import AllowList, Verdict
from integrity.safety.pickle_vm import PickleError, PickleMachine, product
from integrity.safety.streams import FileSource, Source, StreamError
from integrity.safety.symbols import Global, Obj, Opaque, SDict, SList

if TYPE_CHECKING:
    import tarfile

    from integrity.safety.scanner import _Scan

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
TAR_RECORDS = frozenset({"pickle", "storages", "tensors"})
MAX_STORAGES = 1 << 20  # storages or tensors a legacy file may declare
MAX_DIMS = 64

# Element sizes of the storage classes torch.save names in persistent ids (torch.storage's
# _dtype_to_storage_type_map, less the quantized ones, which need _rebuild_qtensor).
STORAGE_ITEMSIZE: dict[tuple[str, str], int] = {
    ("torch", "DoubleStorage"): 8,
    ("torch", "FloatStorage"): 4,
    ("torch", "HalfStorage"): 2,
    ("torch", "BFloat16Storage"): 2,
    ("torch", "LongStorage"): 8,
    ("torch", "IntStorage"): 4,
    ("torch", "ShortStorage"): 2,
    ("torch", "CharStorage"): 1,
    ("torch", "ByteStorage"): 1,
    ("torch", "BoolStorage"): 1,
    ("torch", "ComplexDoubleStorage"): 16,
    ("torch", "ComplexFloatStorage"): 8,
    # Newer dtypes are saved as bytes plus a dtype (_rebuild_tensor_v3).
    ("torch.storage", "UntypedStorage"): 1,
}
# dtypes torch pickles by name (`torch.float32`), with their element sizes.
DTYPE_ITEMSIZE: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "bool": 1,
    "complex128": 16,
    "complex64": 8,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
}
# The tensor types the legacy tar format records beside each tensor (never called).
_TENSOR_TYPES = (
    "DoubleTensor",
    "FloatTensor",
    "HalfTensor",
    "BFloat16Tensor",
    "LongTensor",
    "IntTensor",
    "ShortTensor",
    "CharTensor",
    "ByteTensor",
    "BoolTensor",
)
REBUILD_TENSOR_V2 = Global("torch._utils", "_rebuild_tensor_v2")
REBUILD_TENSOR_V3 = Global("torch._utils", "_rebuild_tensor_v3")
REBUILD_PARAMETER = Global("torch._utils", "_rebuild_parameter")
ORDERED_DICT = Global("collections", "OrderedDict")

TORCH_GLOBALS: dict[tuple[str, str], str] = {
    (REBUILD_TENSOR_V2.module, REBUILD_TENSOR_V2.name): (
        "makes a tensor view of a storage the file holds (checked: inside the storage)"
    ),
    (REBUILD_TENSOR_V3.module, REBUILD_TENSOR_V3.name): (
        "the same, for dtypes saved as raw bytes plus a dtype (checked likewise)"
    ),
    (REBUILD_PARAMETER.module, REBUILD_PARAMETER.name): (
        "wraps a rebuilt tensor in nn.Parameter (checked: its data is a rebuilt tensor)"
    ),
    ("torch", "device"): "names a device; checked: a device name and an optional index",
    ("torch", "Size"): "a tuple subclass for shapes; checked: one tuple of sizes",
    **dict.fromkeys(STORAGE_ITEMSIZE, "a storage class torch names in persistent ids; not called"),
    **dict.fromkeys((("torch", n) for n in DTYPE_ITEMSIZE), "a dtype, pickled by name; not called"),
    **dict.fromkeys((("torch", n) for n in _TENSOR_TYPES), "a legacy tar tensor type; not called"),
}
_LOCATION = re.compile(r"^[a-z][a-z0-9_]{0,31}(:[0-9]{1,6})?$")


class TorchAllowList(AllowList):
    """The allow-list inside a PyTorch checkpoint's pickles: the user's list, plus torch's
    own rebuild globals (which are refused anywhere else)."""

    def __init__(self, base: AllowList) -> None:
        super().__init__()
        self._base = base

    def verdict(self, module: str, name: str) -> Verdict:
        if (module, name) in TORCH_GLOBALS:
            return Verdict(True)
        return self._base.verdict(module, name)


@dataclass
class TorchStorage(Opaque):
    """A storage a persistent id resolved to: `size` bytes of elements of `itemsize`."""

    itemsize: int = 1


# ---------------------------------------------------------------- state validators


@states.on_call(
    *(f"{module}:{name}" for module, name in STORAGE_ITEMSIZE),
    *(f"torch:{name}" for name in DTYPE_ITEMSIZE),
    *(f"torch:{name}" for name in _TENSOR_TYPES),
)
def _never_called(made: Obj) -> Any:
    raise states.UnsafeState("torch.save only names it (a storage type or a dtype), never calls it")


@states.on_build(
    *(f"{g.module}:{g.name}" for g in (REBUILD_TENSOR_V2, REBUILD_TENSOR_V3, REBUILD_PARAMETER)),
    "torch:device",
    "torch:Size",
)
def _never_built(target: Obj, state: Any) -> Any:
    # BUILD on a tensor calls Tensor.__setstate__, which re-points it at any storage and
    # sets its hooks: torch.save never writes one.
    raise states.UnsafeState("torch.save never sets state on what it rebuilds")


def _is_index(value: Any) -> bool:
    return type(value) is int and value >= 0


def _check_view(storage: Any, offset: Any, size: Any, stride: Any, itemsize: int) -> None:
    """A tensor of `size` and `stride` from element `offset` lies inside the storage."""
    if not isinstance(storage, TorchStorage):
        raise states.UnsafeState("the storage is not one a persistent id of this file names")
    if not _is_index(offset):
        raise states.UnsafeState("the storage offset is not a non-negative integer")
    if not (isinstance(size, tuple) and isinstance(stride, tuple)) or len(size) != len(stride):
        raise states.UnsafeState("size and stride are not tuples of the same length")
    if len(size) > MAX_DIMS or not all(_is_index(n) for n in size + stride):
        raise states.UnsafeState("size and stride are not non-negative integers")
    if product(size) == 0:
        return
    last = offset + sum((n - 1) * step for n, step in zip(size, stride, strict=True))
    if (last + 1) * itemsize > storage.size:
        raise states.UnsafeState(
            f"the tensor reaches byte {(last + 1) * itemsize} of a storage of {storage.size} bytes"
        )


def _check_common(made: Obj, counts: tuple[int, ...]) -> tuple[Any, ...]:
    args = made.args
    if len(args) not in counts:
        raise states.UnsafeState(f"called with {len(args)} arguments, not as torch.save writes")
    requires_grad, hooks = args[4], args[5]
    if type(requires_grad) is not bool:
        raise states.UnsafeState("requires_grad is not a bool")
    if not (isinstance(hooks, Obj) and hooks.callable == ORDERED_DICT and hooks.args == ()):
        raise states.UnsafeState("backward hooks are not an empty OrderedDict")
    metadata = args[max(counts) - 1] if len(args) == max(counts) else None
    if metadata is not None and not (isinstance(metadata, SDict) and not metadata.items):
        raise states.UnsafeState("tensor metadata is set (torch.save writes it for conj/neg views)")
    return args


@states.on_call(f"{REBUILD_TENSOR_V2.module}:{REBUILD_TENSOR_V2.name}")
def _rebuild_tensor_v2(made: Obj) -> Any:
    storage, offset, size, stride = _check_common(made, (6, 7))[:4]
    _check_view(storage, offset, size, stride, getattr(storage, "itemsize", 1))
    return made


@states.on_call(f"{REBUILD_TENSOR_V3.module}:{REBUILD_TENSOR_V3.name}")
def _rebuild_tensor_v3(made: Obj) -> Any:
    args = _check_common(made, (7, 8))
    dtype = args[6]
    if not (isinstance(dtype, Global) and dtype.module == "torch" and dtype.name in DTYPE_ITEMSIZE):
        raise states.UnsafeState("the dtype is not one torch pickles by name")
    _check_view(args[0], args[1], args[2], args[3], DTYPE_ITEMSIZE[dtype.name])
    return made


@states.on_call(f"{REBUILD_PARAMETER.module}:{REBUILD_PARAMETER.name}")
def _rebuild_parameter(made: Obj) -> Any:
    if len(made.args) != 3:
        raise states.UnsafeState("called with arguments torch.save does not write")
    data, requires_grad, hooks = made.args
    if not (isinstance(data, Obj) and data.callable in (REBUILD_TENSOR_V2, REBUILD_TENSOR_V3)):
        raise states.UnsafeState("its data is not a rebuilt tensor")
    if type(requires_grad) is not bool:
        raise states.UnsafeState("requires_grad is not a bool")
    if not (isinstance(hooks, Obj) and hooks.callable == ORDERED_DICT and hooks.args == ()):
        raise states.UnsafeState("backward hooks are not an empty OrderedDict")
    return made


@states.on_call("torch:device")
def _device(made: Obj) -> Any:
    args = made.args
    if not (1 <= len(args) <= 2 and isinstance(args[0], str) and _LOCATION.match(args[0])):
        raise states.UnsafeState("not a device name")
    if len(args) == 2 and not _is_index(args[1]):
        raise states.UnsafeState("the device index is not a non-negative integer")
    return made


@states.on_call("torch:Size")
def _size(made: Obj) -> Any:
    args = made.args
    if not (len(args) == 1 and isinstance(args[0], tuple) and all(_is_index(n) for n in args[0])):
        raise states.UnsafeState("not one tuple of sizes")
    return made


# ---------------------------------------------------------------- persistent ids

PersistentLoad = Callable[[PickleMachine, Any, int], Any]


def _refuse(vm: PickleMachine, offset: int, why: str) -> PickleError:
    return vm._fail("persistent-id", f"persistent id {why}", offset)


def _storage_itemsize(vm: PickleMachine, offset: int, value: Any) -> int:
    if isinstance(value, Global) and (value.module, value.name) in STORAGE_ITEMSIZE:
        return STORAGE_ITEMSIZE[(value.module, value.name)]
    raise _refuse(vm, offset, "names no storage class torch.save writes")


def _storage_fields(vm: PickleMachine, pid: Any, offset: int, length: int) -> tuple[Any, ...]:
    """The fields of a ('storage', ...) persistent id, checked as far as they are alike."""
    if not (isinstance(pid, tuple) and len(pid) == length):
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            raise _refuse(
                vm, offset, "('module', ...): a whole nn.Module, whose class the loader imports"
            )
        raise _refuse(vm, offset, f"is not a {length}-field ('storage', ...) tuple")
    if pid[0] != "storage":
        raise _refuse(vm, offset, f"of type {pid[0]!r}: torch.load only knows 'storage'")
    _, _, key, location, numel = pid[:5]
    if not isinstance(key, str) or len(key) > 256:
        raise _refuse(vm, offset, "has a storage key that is not a short string")
    if not (isinstance(location, str) and _LOCATION.match(location)):
        raise _refuse(vm, offset, "has a location that is not a device name")
    if not _is_index(numel):
        raise _refuse(vm, offset, "has an element count that is not a non-negative integer")
    return pid


def zip_persistent_load(storage_sizes: dict[bytes, list[int]], prefix: bytes) -> PersistentLoad:
    """torch.load's persistent_load for the zip format: the storage `data/<key>` must be in
    the archive with exactly numel elements."""
    loaded: dict[str, TorchStorage] = {}

    def load(vm: PickleMachine, pid: Any, offset: int) -> Any:
        _, storage_type, key, _, numel = _storage_fields(vm, pid, offset, 5)
        itemsize = _storage_itemsize(vm, offset, storage_type)
        if key in loaded:
            return loaded[key]  # torch reuses the storage loaded first for a key
        name = prefix + b"data/" + key.encode("utf-8", "surrogatepass").lower()
        sizes = storage_sizes.get(name)
        if not sizes:
            raise _refuse(vm, offset, f"names storage data/{key}, which the archive does not hold")
        if any(size != numel * itemsize for size in sizes):
            raise _refuse(
                vm,
                offset,
                f"says storage data/{key} holds {numel * itemsize} bytes; the archive's "
                f"member holds {sizes[0]}",
            )
        loaded[key] = TorchStorage("torch-storage", numel * itemsize, itemsize=itemsize)
        return loaded[key]

    return load


@dataclass
class _Declared:
    """Storages the legacy format's object declares, by root key: (itemsize, numel)."""

    storages: dict[str, tuple[int, int]] = field(default_factory=dict)


def _legacy_persistent_load(declared: _Declared) -> PersistentLoad:
    def load(vm: PickleMachine, pid: Any, offset: int) -> Any:
        _, storage_type, key, _, numel, view = _storage_fields(vm, pid, offset, 6)
        itemsize = _storage_itemsize(vm, offset, storage_type)
        if len(declared.storages) >= MAX_STORAGES:
            raise _refuse(vm, offset, "declares more storages than the scanner follows")
        itemsize, numel = declared.storages.setdefault(key, (itemsize, numel))
        if view is None:
            return TorchStorage("torch-storage", numel * itemsize, itemsize=itemsize)
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)):
            raise _refuse(vm, offset, "has a view that is not (key, offset, size)")
        _, start, length = view
        if not (_is_index(start) and _is_index(length) and start + length <= numel):
            raise _refuse(vm, offset, "has a view outside its storage")
        return TorchStorage("torch-storage", length * itemsize, itemsize=itemsize)

    return load


# ---------------------------------------------------------------- running a pickle


@dataclass
class _Outcome:
    ok: bool
    value: Any = None


def _run(
    scan: _Scan, source: Source, persistent_load: PersistentLoad | None, *, torch: bool
) -> _Outcome:
    """One pickle as torch.load reads it (its C unpickler), findings into the scan. `torch`:
    torch's globals are allowed (the object's pickles, never the plain ones around them)."""
    base = scan.allowlist
    if torch:
        scan.allowlist = TorchAllowList(base)
    vm = PickleMachine(source, scan.check_global)
    vm.persistent_load = persistent_load
    vm.python = False  # torch.load reads with the C unpickler, which ignores frames
    vm.on_problem = scan._problem
    try:
        return _Outcome(True, vm.run())
    except PickleError as exc:
        scan.add(exc.code, exc.message, exc.offset)
    except StreamError as exc:
        scan.add("bad-compression", str(exc), source.tell())
    finally:
        scan.allowlist = base
    return _Outcome(False)


# ---------------------------------------------------------------- zip format


@dataclass(frozen=True)
class ZipView:
    """How PyTorch's reader sees a zip: names under the first member's folder, found
    ignoring ASCII case (miniz)."""

    prefix: bytes  # lower-cased, with its "/"
    torchscript: bool

    def is_pickle(self, raw_name: bytes) -> bool:
        return raw_name.lower() == self.prefix + b"data.pkl"

    def is_storage(self, raw_name: bytes) -> bool:
        return raw_name.lower().startswith(self.prefix + b"data/")

    def storages(self, entries: Iterable[tuple[bytes, int]]) -> dict[bytes, list[int]]:
        """Sizes of every member a storage lookup may find, by lower-cased name."""
        found: dict[bytes, list[int]] = {}
        for raw_name, size in entries:
            if self.is_storage(raw_name):
                found.setdefault(raw_name.lower(), []).append(size)
        return found


def zip_view(names: list[bytes]) -> ZipView | None:
    """The archive as torch.load reads it, or None if torch.load reads no pickle from it."""
    if not names or b"/" not in names[0]:
        return None  # PyTorch's reader refuses an archive whose first name has no folder
    prefix = names[0][: names[0].index(b"/") + 1]
    lowered = {name.lower() for name in names}
    # torch.load takes an archive with constants.pkl for TorchScript (an exact name).
    torchscript = prefix + b"constants.pkl" in names
    if not torchscript and prefix.lower() + b"data.pkl" not in lowered:
        return None
    return ZipView(prefix.lower(), torchscript)


def scan_data_pkl(
    scan: _Scan, source: Source, view: ZipView, storage_sizes: dict[bytes, list[int]]
) -> None:
    """`<prefix>/data.pkl`: the object, its storages resolved through persistent ids."""
    outcome = _run(scan, source, zip_persistent_load(storage_sizes, view.prefix), torch=True)
    if outcome.ok:
        scan._trailing(source, False)


# ---------------------------------------------------------------- legacy format


def is_legacy(fd: int) -> bool:
    """The file opens with the pickled magic number of torch's legacy format."""
    from integrity.safety.archives import ChunkSource

    # The magic number's pickle is a few bytes: read no more than it may take.
    vm = PickleMachine(ChunkSource(iter([os.pread(fd, 128, 0)])), _no_globals)
    vm.limit = 64
    try:
        value = vm.run()
    except (PickleError, StreamError):
        return False
    return type(value) is int and value == MAGIC_NUMBER


def _no_globals(use: Any) -> None:
    raise PickleError("malformed", "not torch's magic number", use.offset)


def scan_legacy(scan: _Scan, fd: int, size: int) -> None:
    """The legacy format, read as torch.load reads it: every pickle, then the raw storages."""
    source = FileSource(fd, size)

    def next_pickle(load: PersistentLoad | None = None) -> _Outcome:
        if source.tell() >= size:
            return _Outcome(False)  # pickle.load raises EOFError: torch.load stops there
        return _run(scan, source, load, torch=load is not None)

    for expected in (MAGIC_NUMBER, PROTOCOL_VERSION, None):
        outcome = next_pickle()
        if not outcome.ok:
            return
        if expected is not None and not (type(outcome.value) is int and outcome.value == expected):
            return  # torch.load raises here: nothing after it is read
    declared = _Declared()
    if not next_pickle(_legacy_persistent_load(declared)).ok:
        return
    keys = next_pickle()
    if not keys.ok:
        return
    here = source.tell()
    if not (isinstance(keys.value, SList) and all(isinstance(k, str) for k in keys.value.items)):
        scan.add("malformed", "the storage key list is not a list of strings", here)
        return
    listed: list[str] = keys.value.items
    missing = sorted(set(declared.storages) - set(listed))
    if missing:
        scan.add(
            "persistent-id",
            f"persistent ids name storages the file does not hold: {', '.join(missing[:5])}",
            here,
        )
    if len(set(listed)) != len(listed) or not set(listed) <= set(declared.storages):
        scan.add(
            "malformed",
            "the storage key list repeats keys or names storages no persistent id declares",
            here,
        )
        return
    for key in listed:
        itemsize, numel = declared.storages[key]
        if not _raw_record(scan, source, itemsize, numel, f"storage {key!r}"):
            return
    if source.read(1):
        scan.add(
            "trailing-data",
            "data follows the last storage: not a file the scanner can vouch for",
            source.tell() - 1,
        )


def _raw_record(scan: _Scan, source: Source, itemsize: int, numel: int | None, what: str) -> bool:
    """An int64 element count, then that many elements (torch's _set_from_file): the count
    must be `numel` (if known) and the data all there."""
    here = source.tell()
    head = source.read(8)
    if len(head) < 8:
        scan.add("truncated", f"{what}: the file ends before its data", here)
        return False
    (count,) = struct.unpack("<q", head)
    if count < 0 or (numel is not None and count != numel):
        scan.add(
            "malformed",
            f"{what} records {count} elements where its persistent id says {numel}",
            here,
        )
        return False
    if source.skip(count * itemsize) < count * itemsize:
        scan.add("truncated", f"{what}: the file ends inside its data", here)
        return False
    return True


# ---------------------------------------------------------------- legacy tar


def scan_tar(scan: _Scan, tar: tarfile.TarFile, members: list[tarfile.TarInfo]) -> None:
    """torch < 0.4's tar: `storages`, then `tensors`, then `pickle`, as torch.load reads them
    (it stops at the first that is missing)."""
    from integrity.safety.archives import ChunkSource, file_chunks

    by_name = {m.name: m for m in members}  # tarfile finds the last member of a name
    objects: dict[int, TorchStorage] = {}
    for record in ("storages", "tensors", "pickle"):
        member = by_name.get(record)
        if member is None:
            return
        scan.member = record
        stream = tar.extractfile(member) if member.isfile() else None
        if stream is None:
            scan.add("malformed", "not a regular file: torch.load extracts it and reads it", None)
            return
        source = ChunkSource(file_chunks(stream))
        try:
            if record == "storages":
                _tar_storages(scan, source, objects)
            elif record == "tensors":
                _tar_tensors(scan, source, objects)
            else:
                _run(scan, source, _tar_persistent_load(objects), torch=True)
        except _Stop:
            return
    scan.member = None


class _Stop(Exception):
    """A legacy tar record that cannot be followed (a finding was added): torch.load fails
    there, or the scanner cannot say what it would do."""


def _tar_records(scan: _Scan, source: Source, what: str) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """The records of `storages` or `tensors`: a count, then per record a pickle of
    (key, ..., ...) followed by raw data the caller reads. Offsets come with each."""
    count = _run(scan, source, None, torch=False)
    if not count.ok:
        raise _Stop
    if not (_is_index(count.value) and count.value <= MAX_STORAGES):
        scan.add("malformed", f"the {what} count is not a small non-negative integer", None)
        raise _Stop
    for _ in range(count.value):
        here = source.tell()
        args = _run(scan, source, None, torch=True)
        if not args.ok:
            raise _Stop
        value = args.value
        if not (isinstance(value, tuple) and len(value) == 3 and _is_index(value[0])):
            scan.add("malformed", f"a {what} record is not (key, ..., ...)", here)
            raise _Stop
        yield here, value


def _tar_storages(scan: _Scan, source: Source, objects: dict[int, TorchStorage]) -> None:
    for here, (key, _, storage_type) in _tar_records(scan, source, "storage"):
        if not (
            isinstance(storage_type, Global)
            and (storage_type.module, storage_type.name) in STORAGE_ITEMSIZE
        ):
            scan.add("malformed", "a storage record names no storage class", here)
            raise _Stop
        itemsize = STORAGE_ITEMSIZE[(storage_type.module, storage_type.name)]
        start = source.tell()
        if not _raw_record(scan, source, itemsize, None, "a storage"):
            raise _Stop
        objects[key] = TorchStorage("torch-storage", source.tell() - start - 8, itemsize=itemsize)
    views = _run(scan, source, None, torch=False)
    if not views.ok:
        raise _Stop
    if not isinstance(views.value, SList):
        scan.add("malformed", "the storage views are not a list", None)
        raise _Stop
    for view in views.value.items:
        if not (
            isinstance(view, tuple)
            and len(view) == 4
            and all(_is_index(v) for v in view)
            and view[1] in objects
            and (view[2] + view[3]) * objects[view[1]].itemsize <= objects[view[1]].size
        ):
            scan.add("malformed", "a storage view is not inside its storage", None)
            raise _Stop
        root = objects[view[1]]
        objects[view[0]] = TorchStorage(
            "torch-storage", view[3] * root.itemsize, itemsize=root.itemsize
        )


def _tar_tensors(scan: _Scan, source: Source, objects: dict[int, TorchStorage]) -> None:
    for here, (key, storage_key, _) in _tar_records(scan, source, "tensor"):
        storage = objects.get(storage_key) if type(storage_key) is int else None
        if storage is None:
            scan.add("malformed", "a tensor record does not name a storage of the file", here)
            raise _Stop
        head = source.read(8)
        (ndim,) = struct.unpack("<i", head[:4]) if len(head) == 8 else (-1,)
        if not 0 <= ndim <= MAX_DIMS:
            scan.add("malformed", "a tensor record's dimension count is not sane", here)
            raise _Stop
        raw = source.read(16 * ndim + 8)
        if len(raw) < 16 * ndim + 8:
            scan.add("truncated", "a tensor record is cut off", here)
            raise _Stop
        fields = struct.unpack(f"<{2 * ndim + 1}q", raw)
        try:
            _check_view(
                storage, fields[-1], fields[:ndim], fields[ndim : 2 * ndim], storage.itemsize
            )
        except states.UnsafeState as exc:
            scan.add("unsafe-state", f"a tensor record: {exc.message}", here)
            raise _Stop from None
        objects[key] = TorchStorage("torch-tensor", storage.size, itemsize=storage.itemsize)


def _tar_persistent_load(objects: dict[int, TorchStorage]) -> PersistentLoad:
    def load(vm: PickleMachine, pid: Any, offset: int) -> Any:
        if isinstance(pid, tuple):
            raise _refuse(vm, offset, "names a whole nn.Module's class")
        key = pid if type(pid) is int else None
        if isinstance(pid, str) and pid.isdigit() and len(pid) < 20:
            key = int(pid)
        if key is None or key not in objects:
            raise _refuse(vm, offset, "names no storage or tensor the file holds")
        return objects[key]

    return load
