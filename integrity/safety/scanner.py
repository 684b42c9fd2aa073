"""The static safety scan: is a model file safe to load? Nothing is imported or loaded.

Formats are recognised by content, the way the loader will see them:
- pickle (protocols 0-5), and joblib files with raw array data;
- joblib files compressed with zlib, gzip, bz2, xz, lzma or lz4 (joblib's own
  magic-byte detection, streamed and bounded);
- `.npy` (an object array holds a pickle) and zip archives (`.npz`, skops).
A file in an executable format that cannot be followed to its end is unsafe.

An uncompressed joblib file is read the way both its loaders read it:
joblib.load skips raw array data, plain pickle.load reads those bytes as
opcodes; the scanner follows both (the second as a look-ahead from each array).
"""

from __future__ import annotations

import ast
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from integrity.safety.allowlist import AllowList
from integrity.safety.arrays import read_joblib_array
from integrity.safety.pickle_vm import (
    FAILS,
    REFUSED,
    GlobalUse,
    MemoOverlay,
    PickleError,
    PickleMachine,
)
from integrity.safety.streams import (
    MAX_RATIO,
    MIN_BOUND,
    DecompressingSource,
    FileSource,
    Source,
    StreamError,
    StreamSource,
)

MAX_FINDINGS = 50
JOBLIB_WRAPPER_NAME = ("joblib.numpy_pickle", "NumpyArrayWrapper")
# joblib's compressor magic bytes, in joblib's own detection order.
COMPRESSION_PREFIXES: list[tuple[str, bytes]] = [
    ("zlib", b"\x78"),
    ("gzip", b"\x1f\x8b"),
    ("bz2", b"BZ"),
    ("lzma", b"\x5d\x00"),
    ("xz", b"\xfd\x37\x7a\x58\x5a"),
    ("lz4", b"\x04\x22\x4d\x18"),
]
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
JOBLIB_LEGACY_PREFIX = b"ZF"
MAX_NPY_HEADER = 1 << 20
MAX_ZIP_MEMBERS = 10_000
MAX_APPENDED = 16  # pickles after the first one that are scanned to name what they load
# Bytes of array data, in all, followed as plain pickle.load reads them. Real
# array data stops being opcodes within a few bytes; more is refused.
LOOKAHEAD_BUDGET = 64 << 20
# joblib < 0.10: "ZF", the data length in hex padded to 19 bytes, then zlib data.
LEGACY_HEADER = 2 + 19
_IMPORTABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Errors that end a look-ahead harmlessly: no stock loader passes persistent
# ids or registers extensions, and pickle.load returns at STOP whatever follows.
_LOOKAHEAD_HARMLESS = {"persistent-id", "extension-registry", "bad-frame"}


@dataclass(frozen=True)
class ScanFinding:
    code: str
    message: str
    offset: int | None = None
    global_name: str | None = None
    member: str | None = None  # inside an archive
    in_decompressed: bool = False  # offset counts decompressed bytes

    @property
    def where(self) -> str:
        """Where in the file, in words: 'byte 12', 'decompressed byte 12', ''."""
        if self.offset is None:
            return ""
        return f"{'decompressed ' if self.in_decompressed else ''}byte {self.offset}"


@dataclass
class ScanResult:
    path: str
    format: str
    findings: list[ScanFinding] = field(default_factory=list)
    globals_used: list[GlobalUse] = field(default_factory=list)
    extended: dict[str, str] = field(default_factory=dict)  # user allow-list entries used

    @property
    def safe(self) -> bool:
        return not self.findings


def detect_format(head: bytes) -> str:
    """What the loader will take the file for, from its first bytes."""
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGICS):
        return "zip"
    if head.startswith(JOBLIB_LEGACY_PREFIX):
        return "joblib-legacy"
    for method, prefix in COMPRESSION_PREFIXES:
        if head.startswith(prefix):
            return f"joblib-{method}"
    return "pickle"


class _Scan:
    """State of one file's scan: findings and the globals it resolved."""

    def __init__(self, result: ScanResult, allowlist: AllowList) -> None:
        self.result = result
        self.allowlist = allowlist
        self.member: str | None = None
        self.decompressed = False
        self._reported: set[str] = set()
        self.lookahead_budget = LOOKAHEAD_BUDGET

    def add(
        self, code: str, message: str, offset: int | None = None, name: str | None = None
    ) -> None:
        if name is not None:
            if name in self._reported:
                return  # each refused global once, at its first use
            self._reported.add(name)
        if len(self.result.findings) < MAX_FINDINGS:
            self.result.findings.append(
                ScanFinding(code, message, offset, name, self.member, self.decompressed)
            )

    def check_global(self, use: GlobalUse) -> None:
        verdict = self.allowlist.verdict(use.module, use.name)
        qualified = f"{use.module}.{use.name}"
        if verdict.allowed:
            self.result.globals_used.append(use)
            if verdict.extended_reason is not None:
                self.result.extended[qualified] = verdict.extended_reason
            return
        self.add(verdict.code, f"{qualified}: {verdict.description}", use.offset, qualified)

    def pickle_stream(
        self, source: Source, *, sniff: bool, joblib: bool, trailing_ok: bool = False
    ) -> bool:
        """Scan one pickle from the source; False if it is not a pickle at all (only
        when `sniff`: no protocol header, and every unpickler fails before it names
        anything). `joblib`: joblib's loader reads it (raw array data after each
        NumpyArrayWrapper); otherwise plain pickle.load semantics."""
        start = len(self.result.findings)
        vm = PickleMachine(source, self.check_global, read_joblib_array if joblib else None)
        if joblib and isinstance(source, FileSource):
            # pickle.load can read this file too: array data is opcodes to it.
            vm.shadow = self.lookahead
        vm.on_problem = self._problem
        try:
            vm.run()
        except PickleError as exc:
            if (
                sniff
                and exc.nature == FAILS
                and vm.proto == 0
                and not vm.problems
                and not self.result.globals_used
                and (len(self.result.findings) == start)
            ):
                return False
            self.add(exc.code, exc.message, exc.offset)
            return True
        except StreamError as exc:
            self.add("bad-compression", str(exc), source.tell())
            return True
        if not trailing_ok:
            self._trailing(source, joblib)
        return True

    def _problem(self, problem: PickleError) -> None:
        self.add(problem.code, problem.message, problem.offset)

    def _trailing(self, source: Source, joblib: bool) -> None:
        """Data after STOP is a finding; pickles appended there are scanned too, to
        name what a reader that loads until the end of the file would import."""
        here = source.tell()
        try:
            extra = source.peek(1)
        except StreamError as exc:
            self.add("bad-compression", str(exc), here)
            return
        if not extra:
            return
        self.add(
            "trailing-data",
            "data follows the pickle's STOP: not a file the scanner can vouch for",
            here,
        )
        for _ in range(MAX_APPENDED):
            vm = PickleMachine(source, self.check_global, read_joblib_array if joblib else None)
            try:
                vm.run()
                more = source.peek(1)
            except (PickleError, StreamError):
                return  # the trailing-data finding stands for what cannot be read
            if not more:
                return

    def lookahead(self, vm: PickleMachine) -> None:
        """At joblib array data: follow the next bytes as plain pickle.load would
        (as opcodes, with the stack and memo as they are), until it fails, stops,
        or names a global the allow-list refuses (a finding)."""
        source = vm.source
        assert isinstance(source, FileSource)
        start = source.tell()
        if self.lookahead_budget <= 0:
            self._lookahead_exhausted(start)
            return
        look = PickleMachine(source, self._lookahead_check, None, depth=vm.depth)
        look.proto = vm.proto
        look.stack = list(vm.stack)
        look.metastack = [list(level) for level in vm.metastack]
        look.memo = MemoOverlay(vm.memo)
        look.readonly = True
        look.linear = True  # the C unpickler ignores frames
        look.limit = start + self.lookahead_budget
        try:
            look.run()
        except PickleError as exc:
            if exc.code == "too-long":
                self.lookahead_budget = 0
                self._lookahead_exhausted(start)
            elif exc.nature == REFUSED and exc.code not in _LOOKAHEAD_HARMLESS:
                self.add(
                    exc.code,
                    f"{exc.message} (in joblib array data, which plain pickle.load "
                    "reads as opcodes)",
                    exc.offset,
                )
        except StreamError:
            pass
        finally:
            self.lookahead_budget -= max(0, source.tell() - start)
            source.seek(start)

    def _lookahead_exhausted(self, offset: int) -> None:
        self.add(
            "lookahead-exhausted",
            "joblib array data reads as a long run of pickle opcodes: the scanner "
            "cannot vouch for what plain pickle.load would do with this file",
            offset,
            "lookahead-exhausted",  # reported once
        )

    def _lookahead_check(self, use: GlobalUse) -> None:
        if not (_IMPORTABLE.match(use.module) and _IMPORTABLE.match(use.name)):
            # Not a name any module has: the import fails, nothing runs.
            raise PickleError("malformed", "not an importable name", use.offset, FAILS)
        verdict = self.allowlist.verdict(use.module, use.name)
        if verdict.allowed:
            return
        qualified = f"{use.module}.{use.name}"
        self.add(
            verdict.code,
            f"{qualified}: {verdict.description} (hidden in joblib array data: joblib.load "
            "skips it, plain pickle.load reads it as an opcode)",
            use.offset,
            qualified,
        )


def scan_fd(fd: int, display: str, allowlist: AllowList | None = None) -> ScanResult:
    """Scan an open regular file (the caller proved it is one and closes it)."""
    allowlist = allowlist or AllowList()
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    fmt = detect_format(head)
    result = ScanResult(path=display, format=fmt)
    scan = _Scan(result, allowlist)
    if size == 0:
        result.format = "empty"
        return result
    if fmt == "joblib-legacy":
        scan.add(
            "legacy-joblib",
            "joblib < 0.9 file format: its loader reads side files named inside it",
            0,
        )
        _scan_legacy(scan, fd, size)
    elif fmt.startswith("joblib-"):
        method = fmt.removeprefix("joblib-")
        try:
            source: Source = DecompressingSource(fd, size, method)
        except StreamError as exc:
            scan.add("unscannable", str(exc), 0)
            return result
        scan.decompressed = True
        scan.pickle_stream(source, sniff=False, joblib=True)
    elif fmt == "npy":
        _scan_npy(scan, FileSource(fd, size), size)
    elif fmt == "zip":
        _scan_zip(scan, fd)
    else:
        sniff = head[:1] != b"\x80"
        if not scan.pickle_stream(FileSource(fd, size), sniff=sniff, joblib=True):
            result.format = "not-pickle"
        elif any((g.module, g.name) == JOBLIB_WRAPPER_NAME for g in result.globals_used):
            result.format = "joblib"
    return result


def _scan_legacy(scan: _Scan, fd: int, size: int) -> None:
    """The pickle inside a joblib < 0.10 file, scanned to name what it loads."""
    start = LEGACY_HEADER + (os.pread(fd, 1, LEGACY_HEADER) == b" ")
    source = DecompressingSource(fd, size, "zlib", start=start)
    scan.decompressed = True
    # Its loader (joblib's ZipNumpyUnpickler) reads only the first pickle.
    scan.pickle_stream(source, sniff=False, joblib=True, trailing_ok=True)
    scan.decompressed = False


def scan_path(path: Path, allowlist: AllowList | None = None) -> ScanResult:
    """Scan a file by path; symlinks and special files are refused, never opened for read."""
    from integrity.files import PathProblem, open_regular_file

    try:
        fd, _ = open_regular_file(path, follow_symlinks=False)
    except PathProblem as problem:
        result = ScanResult(path=str(path), format="none")
        result.findings.append(ScanFinding("not-a-file", problem.detail))
        return result
    try:
        return scan_fd(fd, str(path), allowlist)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- npy / zip


# The dtype strings numpy.save writes for arrays without Python objects
# (dtype.str: '<f8', '|b1', '<U3', '|S5', '|V8', '<M8[ns]'). numpy may read any
# other string as an object dtype ('object', 'O8', '=O'...): the rest of the
# file is then scanned as the pickle numpy.load would read.
_NPY_PLAIN_DESCR = re.compile(r"^[<>|=]?[biufcSUVMm]\d+(\[\d*[A-Za-z]+\])?$")


def _npy_has_object(descr: object, depth: int = 0) -> bool:
    if depth > 16:
        raise ValueError("descr nested too deeply")
    if isinstance(descr, str):
        return not _NPY_PLAIN_DESCR.match(descr)
    if isinstance(descr, list):
        for entry in descr:
            if not isinstance(entry, tuple) or len(entry) not in (2, 3):
                raise ValueError("bad structured descr")
            if _npy_has_object(entry[1], depth + 1):
                return True
        return False
    raise ValueError("descr is neither a string nor a list")


def _scan_npy(scan: _Scan, source: Source, size: int) -> None:
    """`.npy`: a header, then raw data, or a pickle when the dtype holds objects."""
    preamble = source.read(8)
    if len(preamble) < 8:
        scan.add("truncated", ".npy header is truncated", 0)
        return
    major = preamble[6]
    length_bytes = 2 if major == 1 else 4
    if major not in (1, 2, 3):
        scan.add("malformed", f".npy format version {major} is unknown", 6)
        return
    header_len = int.from_bytes(source.read(length_bytes), "little")
    if header_len > MAX_NPY_HEADER:
        scan.add("malformed", ".npy header is implausibly long", 8)
        return
    raw = source.read(header_len)
    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin1"))
        if not isinstance(header, dict):
            raise ValueError("header is not a dict")
        has_object = _npy_has_object(header["descr"])
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
        scan.add("malformed", f".npy header cannot be read: {exc}", 8 + length_bytes)
        return
    if has_object:
        # numpy.load(allow_pickle=True) unpickles the rest of the file with
        # pickle.load: joblib array data means nothing there.
        scan.pickle_stream(source, sniff=False, joblib=False)


def _scan_zip(scan: _Scan, fd: int) -> None:
    """`.npz` and other zip archives: every member that can hold a pickle is scanned (in a
    skops file too, after skops' audit: numpy.load reads any zip as an .npz)."""
    raw = open(fd, "rb", closefd=False)  # noqa: SIM115 - closed with the archive
    try:
        archive = zipfile.ZipFile(raw)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        scan.add("malformed", f"zip archive cannot be read: {exc}", 0)
        return
    with archive:
        members = archive.infolist()
        names = {m.filename for m in members}
        if "schema.json" in names:
            scan.result.format = "skops"
            _scan_skops(scan, fd)
        else:
            scan.result.format = "npz" if all(n.endswith(".npy") for n in names) else "zip"
        if len(members) > MAX_ZIP_MEMBERS:
            scan.add("malformed", "zip archive has too many members", 0)
            return
        for member in members:
            if member.is_dir():
                continue
            scan.member = member.filename
            if member.file_size > max(MIN_BOUND, member.compress_size * MAX_RATIO):
                scan.add("decompression-bomb", "zip member expands beyond the bound", None)
                continue
            try:
                with archive.open(member) as stream:
                    source = StreamSource(stream)
                    head = source.peek(8)
                    if head.startswith(NPY_MAGIC):
                        _scan_npy(scan, source, member.file_size)
                    elif head[:1] == b"\x80" or member.filename.endswith((".pkl", ".pickle")):
                        # Whoever loads it, plain semantics fail closed: raw array
                        # data read as opcodes does not parse.
                        sniff = head[:1] != b"\x80"
                        scan.pickle_stream(source, sniff=sniff, joblib=False)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
                scan.add("malformed", f"zip member cannot be read: {exc}", None)
        scan.member = None


def _scan_skops(scan: _Scan, fd: int) -> None:
    """skops files: skops' own audit lists the types it does not trust. It reads the open
    file (never the path again: a path may be relative to another folder, or replaced)."""
    try:
        from skops.io import get_untrusted_types
    except ImportError:
        scan.add(
            "unscannable",
            "skops file, but skops is not installed to audit it (pip install skops)",
            0,
        )
        return
    try:
        with open(fd, "rb", closefd=False) as handle:
            # skops hands `file` to zipfile.ZipFile, which takes a file object as well.
            untrusted = get_untrusted_types(file=handle)
    except Exception as exc:  # skops raises many kinds on a corrupt file
        scan.add("malformed", f"skops cannot read the file: {type(exc).__name__}: {exc}", 0)
        return
    for name in untrusted:
        module, _, attr = name.rpartition(".")
        verdict = scan.allowlist.verdict(module, attr)
        if verdict.allowed:
            if verdict.extended_reason is not None:
                scan.result.extended[name] = verdict.extended_reason
            continue
        scan.add("untrusted-type", f"{name}: {verdict.description}", None, name)
