"""Write the PyTorch checkpoints under tests/data/torch/, with real torch, and prove each loads.

The tests read these files without torch (CI has none). Run it in a separate environment:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0
    /tmp/torchvenv/bin/python scripts/make_torch_fixtures.py

Each benign file is loaded back with `torch.load(weights_only=False)` (the loader the scanner
vouches for) and compared with what was saved; each malicious one is checked to be what it
claims (its payload is named in the pickle, or its storage is missing), never loaded.
The legacy tar format (torch < 0.4) cannot be written by torch any more: it is built here
byte by byte as torch's own reader (torch.serialization's legacy_load) reads it, and loaded
with torch to prove it.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "torch"


class RunsShell:
    """Pickled as os.system(...): the classic payload, inside data.pkl."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo PWNED-by-torch-fixture",))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def _mixed(*, legacy: bool = False) -> dict[str, Any]:
    """What training checkpoints hold beside weights: views, parameters, other dtypes, an
    optimizer's state, a device, a shape, a dtype."""
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    grid = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    mixed = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "column_view": grid[:, 1],  # a strided view into a larger storage
        "row_view": grid[2],
        "parameter": torch.nn.Parameter(torch.zeros(2)),
        "ints": torch.tensor([1, 2, 3], dtype=torch.int32),
        "flags": torch.tensor([True, False]),
        "half": torch.ones(2, dtype=torch.float16),
        "uint16": torch.zeros(3, dtype=torch.uint16),  # saved with _rebuild_tensor_v3
        "empty": torch.zeros(0, 5),
        "scalar": torch.tensor(3.5),
        "device": torch.device("cpu"),
        "shape": torch.Size([2, 3]),
        "dtype": torch.float32,
        "epoch": 7,
    }
    if legacy:  # torch's legacy format cannot load an untyped storage back
        del mixed["uint16"]
    return mixed


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _save(name: str, obj: Any, **kwargs: Any) -> Path:
    path = OUT / name
    torch.save(obj, path, **kwargs)
    loaded = torch.load(path, weights_only=False)
    if not isinstance(obj, torch.nn.Module):
        assert _same(obj, loaded), name
    return path


def _rewrite_zip(source: Path, target: Path, drop: str = "", cut: str = "") -> None:
    """A copy of a torch zip without member `drop`, or with member `cut` one byte short."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            if info.filename.endswith(drop) and drop:
                continue
            data = old.read(info)
            if cut and info.filename.endswith(cut):
                data = data[:-1]
            new.writestr(info, data)


def _legacy_tar(path: Path, tensor_pickle: bytes | None = None) -> None:
    """torch < 0.4's tar: one float storage of 6 elements, one 2x3 tensor on it, and the
    object {'weight': <that tensor>} whose persistent id is the tensor's key."""
    storages = pickle.dumps(1, protocol=2)
    storages += pickle.dumps((7, "cpu", torch.FloatStorage), protocol=2)
    storages += struct.pack("<q", 6) + struct.pack("<6f", 0, 1, 2, 3, 4, 5)
    storages += pickle.dumps([], protocol=2)  # storage views
    tensors = pickle.dumps(1, protocol=2)
    tensors += pickle.dumps((11, 7, torch.FloatTensor), protocol=2)
    tensors += struct.pack("<i", 2) + b"\0" * 4 + struct.pack("<5q", 2, 3, 3, 1, 0)

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "11" if obj is _TENSOR else None

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump({"weight": _TENSOR})
    records = {
        "sys_info": pickle.dumps({"little_endian": True}, protocol=2),
        "storages": storages,
        "tensors": tensors,
        "pickle": tensor_pickle or buffer.getvalue(),
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in records.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))


_TENSOR = object()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    model = _model()
    _save("state_dict.pt", model.state_dict())
    _save("checkpoint_mixed.pt", _mixed())
    _save("state_dict_protocol4.pt", model.state_dict(), pickle_protocol=4)
    _save("legacy_state_dict.pt", model.state_dict(), _use_new_zipfile_serialization=False)
    _save("legacy_mixed.pt", _mixed(legacy=True), _use_new_zipfile_serialization=False)

    # Refused: a whole module names the user's classes; TorchScript holds code.
    _save("whole_module.pt", model)
    _save("legacy_whole_module.pt", model, _use_new_zipfile_serialization=False)
    torch.jit.script(model).save(str(OUT / "torchscript.pt"))

    # Malicious, never loaded here: os.system in the pickle (zip and legacy formats).
    for name, kwargs in (
        ("evil_os_system.pt", {}),
        ("legacy_evil_os_system.pt", {"_use_new_zipfile_serialization": False}),
    ):
        torch.save({"weight": torch.ones(2), "payload": RunsShell()}, OUT / name, **kwargs)
        assert b"system" in (OUT / name).read_bytes(), name

    # A persistent id naming a storage the archive does not hold, or holds cut short.
    _rewrite_zip(OUT / "state_dict.pt", OUT / "missing_storage.pt", drop="/data/0")
    _rewrite_zip(OUT / "state_dict.pt", OUT / "short_storage.pt", cut="/data/0")
    for name in ("missing_storage.pt", "short_storage.pt"):
        try:
            torch.load(OUT / name, weights_only=False)
        except RuntimeError:
            pass
        else:
            raise AssertionError(f"{name} loaded")

    tar_path = OUT / "legacy_tar.pt"
    _legacy_tar(tar_path)
    loaded = torch.load(tar_path, weights_only=False)
    assert torch.equal(loaded["weight"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    for path in sorted(OUT.iterdir()):
        print(f"{path.stat().st_size:8d}  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
