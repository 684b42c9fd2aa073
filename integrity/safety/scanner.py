"""The static safety scan: is a model file safe to load? Nothing is imported or loaded.

Formats are recognised by content, the way the loader will see them:
- pickle (protocols 0-5), and joblib files with raw array data;
- joblib files compressed with zlib, gzip, bz2, xz, lzma or lz4 (joblib's own
  magic-byte detection, streamed and bounded);
- `.npy` (an object array holds a pickle);
- archives (`archives`: zip, `.npz`, skops, tar) and PyTorch checkpoints
  (`torch_checkpoint`: zip, legacy and tar formats).
A file in an executable format that cannot be followed to its end is unsafe; a file that may
hold a pickle the scanner cannot read is too.

An uncompressed joblib file is read the way both its loaders read it:
joblib.load skips raw array data, plain pickle.load reads those bytes as
opcodes; the scanner follows both (the second as a second pass over the file,
which parts from joblib's reading at the first array).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from integrity.safety import archives, torch_checkpoint
from integrity.safety.allowlist import AllowList
from integrity.safety.arrays import read_joblib_array
from integrity.safety.pickle_vm import (
    FAILS,
    GlobalUse,
    PickleError,
    PickleMachine,
    importable,
)
from integrity.safety.streams import (
    DecompressingSource,
    FileSource,
    Source,
    StreamError,
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
JOBLIB_LEGACY_PREFIX = b"ZF"
MAX_NPY_HEADER = 1 << 20
MAX_APPENDED = 16  # pickles after the first one that are scanned to name what they load
# Bytes after the first array, followed as plain pickle.load reads them. Real
# array data stops being opcodes within a few bytes; more is refused.
LOOKAHEAD_BUDGET = 64 << 20
# joblib < 0.10: "ZF", the data length in hex padded to 19 bytes, then zlib data.
LEGACY_HEADER = 2 + 19
# Where the second pass stops with these, plain pickle.load fails too: it has no
# persistent_load, and no extension codes are registered in a stock process.
_PLAIN_FAILS = {"persistent-id", "extension-registry"}
# Longer names are never allowed: refused without building or hashing them again.
MAX_NAME = 1024


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
    # [start, end) of every block of raw array data joblib.load skips (padding byte and
    # padding included), in order, as offsets in the stream the loader reads (decompressed
    # offsets for a compressed file).
    array_spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        return not self.findings


def detect_format(head: bytes) -> str:
    """What the loader will take the file for, from its first bytes."""
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(archives.ZIP_MAGICS):
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
        self._verdicts: dict[tuple[str, str], str] = {}
        self._problems_added = 0  # findings the current stream's problems added

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
        verdict = self._verdict(use)
        if verdict is None:
            self.result.globals_used.append(use)

    def _verdict(self, use: GlobalUse, hidden: bool = False) -> str | None:
        """None if the global is allowed; else the finding's message (added once per
        name). Cached per name: a pickle may name the same long strings many times."""
        key = (use.module, use.name)
        if len(use.module) + len(use.name) > MAX_NAME:
            self.add(
                "disallowed-global",
                f"{use.module[:64]}....{use.name[:64]}: a name {len(use.name)} characters "
                "long: not on the allow-list",
                use.offset,
                "(long name)",
            )
            return "long name"
        cached = self._verdicts.get(key)
        if cached is not None:
            return cached or None
        verdict = self.allowlist.verdict(use.module, use.name)
        qualified = f"{use.module}.{use.name}"
        if verdict.allowed:
            if verdict.extended_reason is not None:
                self.result.extended[qualified] = verdict.extended_reason
            self._verdicts[key] = ""
            return None
        message = f"{qualified}: {verdict.description}"
        if hidden:
            message += (
                " (hidden in joblib array data: joblib.load skips it, plain pickle.load "
                "reads it as an opcode)"
            )
        self.add(verdict.code, message, use.offset, qualified)
        self._verdicts[key] = message
        return message

    def pickle_stream(
        self,
        source: Source,
        *,
        sniff: bool,
        joblib: bool,
        trailing_ok: bool = False,
        c_reads: bool = True,
    ) -> bool:
        """Scan one pickle from the source; False if it is not a pickle at all (only
        when `sniff`: no protocol header, and every unpickler fails before it names
        anything). `joblib`: joblib's loader reads it (raw array data after each
        NumpyArrayWrapper); otherwise plain pickle.load semantics. `c_reads`: the C
        unpickler may read it too (not a compressed file: only joblib reads those)."""
        start = len(self.result.findings)
        self._problems_added = 0
        begin = source.tell()
        vm = PickleMachine(source, self.check_global, read_joblib_array if joblib else None)
        vm.c = c_reads
        vm.on_problem = self._problem
        try:
            vm.run()
        except PickleError as exc:
            if (
                sniff
                and exc.nature == FAILS
                and not self.result.globals_used
                and len(self.result.findings) - start == self._problems_added
            ):
                # Nothing ran under any loader: the findings on the way (one
                # unpickler failed, the other read on) say nothing about this file.
                del self.result.findings[start:]
                return False
            self.add(exc.code, exc.message, exc.offset)
        except StreamError as exc:
            self.add("bad-compression", str(exc), source.tell())
        else:
            if not trailing_ok:
                self._trailing(source, joblib)
        finally:
            self.result.array_spans.extend(vm.array_spans)
        if vm.first_array is not None and isinstance(source, FileSource):
            # pickle.load can read this file too: array data is opcodes to it.
            self._plain_pass(source, begin, vm.first_array)
        return True

    def _problem(self, problem: PickleError) -> None:
        before = len(self.result.findings)
        self.add(problem.code, problem.message, problem.offset)
        self._problems_added += len(self.result.findings) - before

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

    def _plain_pass(self, source: FileSource, begin: int, first_array: int) -> None:
        """Read the file again as plain pickle.load does (the C and the pure-Python
        unpickler): the same as joblib's reading up to the first array, then the array
        data as opcodes, until every unpickler fails or stops. Its findings from there
        on are this file's too."""
        source.seek(begin)
        plain = PickleMachine(source, partial(self._plain_check, first_array), None)
        plain.persistent_reads_on = False
        plain.limit = first_array + LOOKAHEAD_BUDGET
        try:
            plain.run()
        except PickleError as exc:
            if exc.code == "too-long":
                self._lookahead_exhausted(first_array)
            # bad-frame: a STOP inside a frame; pickle.load returns all the same.
            elif (
                exc.offset >= first_array
                and exc.nature != FAILS
                and exc.code not in _PLAIN_FAILS
                and exc.code != "bad-frame"
            ):
                self.add(
                    exc.code,
                    f"{exc.message} (in joblib array data, which plain pickle.load "
                    "reads as opcodes)",
                    exc.offset,
                )

    def _lookahead_exhausted(self, offset: int) -> None:
        self.add(
            "lookahead-exhausted",
            "joblib array data reads as a long run of pickle opcodes: the scanner "
            "cannot vouch for what plain pickle.load would do with this file",
            offset,
            "lookahead-exhausted",  # reported once
        )

    def _plain_check(self, first_array: int, use: GlobalUse) -> None:
        if use.offset < first_array:  # joblib's reading named the same
            return
        top = use.module.split(".", 1)[0]
        if (use.module, use.name) not in self._verdicts and not (
            importable(use.module) and _module_exists(top)
        ):
            # pickle.load reads an object array's nested pickle with the outer pickle's
            # memo: its memo keys fetch other strings, and it imports names like
            # "subclass". A top-level module that does not exist fails to import.
            raise PickleError(
                "malformed", f"no module {top!r}: the import fails", use.offset, FAILS
            )
        if self._verdict(use, hidden=True) is None:
            # Allowed, but resolved only by plain pickle.load: still a global the file
            # makes a loader import, so the scan reports it.
            self.result.globals_used.append(use)


def _module_exists(top: str) -> bool:
    """Whether a top-level module of this name can be imported here (found, never
    imported: finders only look for it)."""
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def scan_fd(
    fd: int, display: str, allowlist: AllowList | None = None, *, depth: int = 0
) -> ScanResult:
    """Scan an open regular file (the caller proved it is one and closes it). `depth`: how
    deep inside other archives this file was found."""
    allowlist = allowlist or AllowList()
    size = os.fstat(fd).st_size
    head = os.pread(fd, 8, 0)
    fmt = detect_format(head)
    result = ScanResult(path=display, format=fmt)
    scan = _Scan(result, allowlist)
    if size == 0:
        result.format = "empty"
        return result
    if fmt.startswith("joblib-") and not _decompresses(fd, size, fmt):
        # joblib fails before it unpickles a byte (a CSV whose first byte is zlib's
        # 0x78): what remains is how plain pickle.load reads the raw file.
        fmt = result.format = "pickle"
    if fmt == "joblib-legacy":
        scan.add(
            "legacy-joblib",
            "joblib < 0.9 file format: its loader reads side files named inside it",
            0,
        )
        _scan_legacy(scan, fd, size)
    elif fmt.startswith("joblib-"):
        _scan_compressed(scan, fd, size, fmt.removeprefix("joblib-"))
    elif fmt == "npy":
        _scan_npy(scan, FileSource(fd, size), size)
    elif fmt == "zip":
        archives.scan_zip(scan, fd, size, depth)
    else:
        if torch_checkpoint.is_legacy(fd):
            result.format = "torch-legacy"
            torch_checkpoint.scan_legacy(scan, fd, size)
        else:
            sniff = head[:1] != b"\x80"
            if not scan.pickle_stream(FileSource(fd, size), sniff=sniff, joblib=True):
                result.format = "not-pickle"
            elif any((g.module, g.name) == JOBLIB_WRAPPER_NAME for g in result.globals_used):
                result.format = "joblib"
        # PyTorch's legacy loader reads any file as a tar first; other archives may hold a
        # pickle the scanner cannot read.
        archives.scan_container(scan, fd, size, depth, is_pickle=result.format != "not-pickle")
    return result


def _decompresses(fd: int, size: int, fmt: str) -> bool:
    """Whether the decompressor joblib picks for `fmt` yields at least one byte of the file
    (a method whose module is missing counts as yes: the file is reported unscannable)."""
    if fmt == "joblib-legacy":
        method, start = "zlib", LEGACY_HEADER + (os.pread(fd, 1, LEGACY_HEADER) == b" ")
    else:
        method, start = fmt.removeprefix("joblib-"), 0
    try:
        source = DecompressingSource(fd, size, method, start=start)
    except StreamError:
        return True
    try:
        return bool(source.read(1))
    except StreamError:
        return False


def _scan_compressed(scan: _Scan, fd: int, size: int, method: str) -> None:
    """A joblib-compressed pickle; an archive compressed the same way (a .tar.gz) is not
    one joblib loads, but may hold a pickle the scanner does not read."""
    try:
        peek: Source = DecompressingSource(fd, size, method)
    except StreamError as exc:  # the method's module is not installed
        scan.add("unscannable", str(exc), 0)
        return
    try:
        head = peek.read(archives.TAR_BLOCK)
    except StreamError:
        head = b""  # corrupt early: the pickle scan reports it after what it can read
    scan.decompressed = True
    if not archives.compressed_container(scan, head, method):
        # A source of its own (it seeks the shared descriptor back to the start), so that
        # the pickle is read at full speed rather than through a push-back wrapper.
        # joblib alone reads a compressed file: the C unpickler never does.
        scan.pickle_stream(
            DecompressingSource(fd, size, method), sniff=False, joblib=True, c_reads=False
        )


def _scan_legacy(scan: _Scan, fd: int, size: int) -> None:
    """The pickle inside a joblib < 0.10 file, scanned to name what it loads."""
    start = LEGACY_HEADER + (os.pread(fd, 1, LEGACY_HEADER) == b" ")
    source = DecompressingSource(fd, size, "zlib", start=start)
    scan.decompressed = True
    # Its loader (joblib's ZipNumpyUnpickler) reads only the first pickle.
    scan.pickle_stream(source, sniff=False, joblib=True, trailing_ok=True, c_reads=False)
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


# ---------------------------------------------------------------- npy


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
