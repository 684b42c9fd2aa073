"""The only way this project loads a model: scan first, then unpickle with the same allow-list.

Defence in depth: even if the scanner had a bug, the unpickler's `find_class`
refuses every global the allow-list refuses, so a malicious file fails to load
instead of running. Scanner and loader read the same open file through the
same decoder (`integrity.safety.streams`), so they see the same bytes.
"""

from __future__ import annotations

import inspect
import os
import pickle
from pathlib import Path
from typing import Any

from integrity.files import PathProblem, open_regular_file
from integrity.safety.allowlist import AllowList
from integrity.safety.pickle_vm import python3_name
from integrity.safety.scanner import ScanResult, detect_format, scan_fd
from integrity.safety.streams import DecompressingSource, FileSource, Source, StreamError


class UnsafeModelError(Exception):
    """The file did not pass the safety scan, or the loader met a refused global."""

    def __init__(self, message: str, scan: ScanResult | None = None) -> None:
        super().__init__(message)
        self.scan = scan


class _SourceFile:
    """A Source as the read/readline file object the unpickler wants."""

    def __init__(self, source: Source) -> None:
        self._source = source

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise UnsafeModelError("the loader tried to read a whole stream at once")
        return self._source.read(n)

    def readline(self, limit: int = -1) -> bytes:
        return self._source.readline(limit if limit > 0 else 1 << 20)


def _restricted_find_class(allowlist: AllowList, proto: int, module: str, name: str) -> None:
    # Checked under the name find_class will import (after Python 2 mapping).
    module, name = python3_name(proto, module, name)
    verdict = allowlist.verdict(module, name)
    if not verdict.allowed:
        raise UnsafeModelError(f"refused to load global {module}.{name}: {verdict.description}")


def _refuse_persistent_id(unpickler: Any, pid: Any) -> Any:
    raise UnsafeModelError("refused a persistent id")


def _restricted_joblib_unpickler(allowlist: AllowList) -> type[Any]:
    """joblib's unpickler, held to the allow-list, nested object arrays included."""
    from joblib.numpy_pickle import NumpyArrayWrapper, NumpyUnpickler

    class RestrictedUnpickler(pickle._Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # pickle._Unpickler sets proto only at a PROTO opcode (protocol 2+).
            _restricted_find_class(allowlist, getattr(self, "proto", 0), module, name)
            return super().find_class(module, name)

        persistent_load = _refuse_persistent_id

    class RestrictedArrayWrapper(NumpyArrayWrapper):  # type: ignore[misc]
        """joblib's wrapper, but a nested object array goes through the restricted
        unpickler (older joblib versions used a plain pickle.load there)."""

        def read_array(self, unpickler: Any, *args: Any, **kwargs: Any) -> Any:
            if self.dtype.hasobject:
                return RestrictedUnpickler(unpickler.file_handle).load()
            return super().read_array(unpickler, *args, **kwargs)

    class RestrictedNumpyUnpickler(NumpyUnpickler):  # type: ignore[misc]
        def find_class(self, module: str, name: str) -> Any:
            _restricted_find_class(allowlist, self.proto, module, name)
            if python3_name(self.proto, module, name) == (
                "joblib.numpy_pickle",
                "NumpyArrayWrapper",
            ):
                return RestrictedArrayWrapper
            return super().find_class(module, name)

        persistent_load = _refuse_persistent_id

    return RestrictedNumpyUnpickler


def _open_regular(path: Path) -> int:
    try:
        fd, _ = open_regular_file(path, follow_symlinks=False)
    except PathProblem as problem:
        raise UnsafeModelError(f"{path}: {problem.detail}") from None
    return fd


def load_model(path: Path, allowlist: AllowList | None = None) -> Any:
    """Scan `path`, then load it with the restricted unpickler. Raises UnsafeModelError."""
    allowlist = allowlist or AllowList()
    fd = _open_regular(path)
    try:
        scan = scan_fd(fd, str(path), allowlist)
        if not scan.safe:
            first = scan.findings[0]
            raise UnsafeModelError(f"{path}: unsafe: {first.message}", scan)
        # Detected again, not taken from the scan: the loader must stay safe even
        # if the scan were wrong (the tests load every attack with it bypassed).
        fmt = detect_format(os.pread(fd, 8, 0))
        size = os.fstat(fd).st_size
        if scan.format.startswith("torch") or scan.format == "tar":
            raise UnsafeModelError(f"{path}: {scan.format} files are scanned, not loaded")
        if fmt == "pickle":
            source: Source = FileSource(fd, size)
        elif fmt.startswith("joblib-") and fmt != "joblib-legacy":
            source = DecompressingSource(fd, size, fmt.removeprefix("joblib-"))
        elif scan.format == "skops":
            return _load_skops(fd, path, allowlist)
        else:
            raise UnsafeModelError(f"{path}: {scan.format} files are not loadable models")
        joblib_unpickler = _restricted_joblib_unpickler(allowlist)
        kwargs: dict[str, Any] = {}
        if "ensure_native_byte_order" in inspect.signature(joblib_unpickler.__init__).parameters:
            kwargs["ensure_native_byte_order"] = True
        unpickler = joblib_unpickler(str(path), _SourceFile(source), **kwargs)
        try:
            return unpickler.load()
        except StreamError as exc:
            raise UnsafeModelError(f"{path}: {exc}") from None
    finally:
        os.close(fd)


def _load_skops(fd: int, path: Path, allowlist: AllowList) -> Any:
    """From the file that was scanned (the open fd), not the path, which may have been
    replaced since."""
    from skops.io import get_untrusted_types, load

    with open(fd, "rb", closefd=False) as handle:
        untrusted = get_untrusted_types(file=handle)
        for name in untrusted:
            module, _, attr = name.rpartition(".")
            if not allowlist.verdict(module, attr).allowed:
                raise UnsafeModelError(f"{path}: refused skops type {name}")
        handle.seek(0)
        return load(handle, trusted=untrusted)
