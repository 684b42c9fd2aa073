"""Archives and containers: zip (`.npz`, skops, PyTorch), tar (PyTorch's legacy loader), and
formats that may hold a pickle the scanner cannot read.

The verdict rule: what no loader would unpickle is not executable; what might hold a pickle
the scanner cannot read (a 7z or RAR archive, zstd data, an encrypted zip member, a
TorchScript archive...) is never safe: it is an `unscannable` finding that says what it is.

Zip members are read the way the loaders read them, not the way `zipfile` refuses them:
numpy reads `.npz` members with `zipfile`, PyTorch with miniz. Both take the method, the sizes
and the flags from the central directory and start the data where the local header's name and
extra field end; miniz ignores the local header's flags, its name and the CRC (`zipfile`
checks the last two). So every member is read from those central-directory fields, whatever
the local header says, and what the two disagree on is a finding of its own:
- encrypted (flag bit 0), patched (bit 5), strongly encrypted (bit 6) members and unknown
  compression methods: neither loader reads them, the scanner cannot either: a finding;
- a local header that disagrees with the central directory (name, method, flags, sizes),
  duplicate member names (both loaders read one of them, not always the same), data before
  the first member or a central directory that is not where the end record says (`zipfile`
  reads past a prefix, miniz refuses it): findings, and every member is still scanned.
Zip64 records are read as both loaders read them, with no finding.

A member is scanned when a loader unpickles it (numpy: `.npy` with an object dtype; PyTorch:
`data.pkl`), when its name says it is a pickle or a joblib file, or when it is itself an
archive (scanned as a file of its own, to a bounded depth). Other members are data to every
loader (numpy hands them back as bytes).
"""

from __future__ import annotations

import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from integrity.safety import torch_checkpoint
from integrity.safety.streams import BLOCK, MAX_RATIO, MIN_BOUND, Source, StreamError

if TYPE_CHECKING:
    import tarfile

    from integrity.safety.scanner import ScanResult, _Scan

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"
MAX_ZIP_MEMBERS = 10_000
MAX_NESTING = 3  # archives inside archives, scanned as files of their own
TAR_BLOCK = 512
# Formats that may hold a pickle and that the scanner does not read, by magic bytes.
UNSCANNABLE_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (b"\xff\x06\x00\x00sNaPpY", "snappy-compressed data"),
    (b"LZIP\x01", "lzip-compressed data"),
    (b"\x89LZO\x00\r\n\x1a\n", "lzop-compressed data"),
    (b"\x1f\x9d", "compress (.Z) data"),
    (b"MSCF\x00\x00\x00\x00", "a Cabinet archive"),
    (b"!<arch>\n", "an ar archive"),
    (b"\xc7\x71", "a cpio archive"),
    (b"xar!\x00\x1c", "a xar archive"),
    (b"PK\x07\x08", "a split zip archive"),
    (b"PK\x06\x06", "a zip archive without its start"),
)
# cpio's text headers: the magic, then fixed-width hex (newc, crc) or octal (odc) fields, so
# that a CSV whose first number is 070701 is not taken for one.
_CPIO_ASCII = re.compile(rb"^(07070[12][0-9A-Fa-f]{8}|070707[0-7]{6})")
# Member names whose loaders unpickle them (pickle, joblib, torch.load): scanned as files.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".jbl", ".pt", ".pth", ".ckpt", ".sav", ".dill")

_FLAG_ENCRYPTED = 0x1
_FLAG_DESCRIPTOR = 0x8  # sizes and CRC follow the data; the local header holds zeros
_FLAG_PATCHED = 0x20
_FLAG_STRONG = 0x40
_FLAG_UTF8 = 0x800
_FLAG_MASKED = 0x2000  # central directory encryption: local headers are masked
_UNREADABLE_FLAGS = (
    (_FLAG_ENCRYPTED, "encrypted"),
    (_FLAG_PATCHED, "compressed patched data (flag bit 5)"),
    (_FLAG_STRONG, "strong encryption (flag bit 6)"),
    (_FLAG_MASKED, "central directory encryption (flag bit 13)"),
)
# Methods numpy's zipfile reads (miniz reads the first two).
_METHODS = {0: "stored", 8: "deflate", 12: "bzip2", 14: "lzma"}
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"
_U32 = 0xFFFFFFFF
# What zipfile.ZipFile may raise on a hostile archive (it has no single error type).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    ValueError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    struct.error,
    UnicodeDecodeError,
    OverflowError,
    IndexError,
)


def unscannable_kind(head: bytes) -> str | None:
    """What the first bytes say the file is, when it may hold a pickle the scanner cannot
    read; None otherwise."""
    for magic, kind in UNSCANNABLE_MAGICS:
        if head.startswith(magic):
            return kind
    if _CPIO_ASCII.match(head):
        return "a cpio archive"
    if is_tar_header(head[:TAR_BLOCK]):
        return "a tar archive"
    if head.startswith(ZIP_MAGICS):
        return "a zip archive"
    return None


def is_tar_header(block: bytes) -> bool:
    """A block tarfile (and so PyTorch's legacy loader) takes for a tar header: its
    checksum field matches, as tarfile computes it (signed or unsigned bytes)."""
    if len(block) < TAR_BLOCK or block.count(0) == TAR_BLOCK:
        return False
    field = block[148:156]
    try:
        if field[0] in (0x80, 0xFF):
            recorded = int.from_bytes(field[1:], "big", signed=False)
            if field[0] == 0xFF:
                recorded -= 1 << (8 * 7)
        else:
            text = field.split(b"\0", 1)[0].decode("ascii")
            recorded = int(text.strip() or "0", 8)
    except (ValueError, UnicodeDecodeError):
        return False
    rest = block[:148] + b" " * 8 + block[156:TAR_BLOCK]
    unsigned = sum(rest)
    signed = unsigned - 256 * sum(1 for b in rest if b > 127)
    return recorded in (unsigned, signed)


# ---------------------------------------------------------------- member data


class ChunkSource(Source):
    """Bytes from a chunk iterator as a Source, read a chunk at a time."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks

    def _more(self) -> bytes:
        for chunk in self._chunks:
            if chunk:
                return chunk
        return b""


def _stored(fd: int, start: int, size: int) -> Iterator[bytes]:
    end = start + size
    while start < end:
        chunk = os.pread(fd, min(BLOCK, end - start), start)
        if not chunk:
            return
        start += len(chunk)
        yield chunk


def _inflated(fd: int, start: int, compressed: int, declared: int) -> Iterator[bytes]:
    """A deflated member's data, never more than its declared size: more is a finding
    (miniz fails on it; zipfile stops at the declared size)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    produced = 0
    for block in _stored(fd, start, compressed):
        data = block
        while data:
            try:
                out = inflater.decompress(data, declared - produced + 1)
            except zlib.error as exc:
                raise StreamError(f"corrupt deflate data: {exc}") from None
            data = inflater.unconsumed_tail
            produced += len(out)
            if produced > declared:
                raise StreamError("a zip member decompresses to more than its declared size")
            if out:
                yield out
            if inflater.eof:
                return


@dataclass
class Member:
    """One central-directory entry, with where its data starts (from its local header)."""

    info: zipfile.ZipInfo
    raw_name: bytes
    data_start: int | None = None  # None: no local header where the directory points

    @property
    def name(self) -> str:
        return self.info.orig_filename

    def chunks(self, fd: int, archive: zipfile.ZipFile) -> Iterator[bytes]:
        """The member's data as the loaders read it: stored and deflated members as both
        do; bzip2 and lzma, which only zipfile reads, through zipfile."""
        assert self.data_start is not None
        info = self.info
        if info.compress_type == 0:
            # miniz reads the uncompressed size (zipfile stops at the smaller of the two,
            # which the same pickle reads no further into).
            return _stored(fd, self.data_start, info.file_size)
        if info.compress_type == 8:
            return _inflated(fd, self.data_start, info.compress_size, info.file_size)
        return _zipfile_chunks(archive, info)

    def source(self, fd: int, archive: zipfile.ZipFile, budget: Budget) -> ChunkSource:
        return ChunkSource(budget.metered(self.chunks(fd, archive)))


class BudgetExhausted(StreamError):
    """The archive's members, read so far, expand beyond the archive's bound."""


class Budget:
    """Bytes the scan of one archive may read out of its members, in all: members may
    share their data (overlapping entries), so each member's own bound is not enough."""

    def __init__(self, archive_size: int) -> None:
        self.left = max(MIN_BOUND, archive_size * MAX_RATIO)

    def metered(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.left -= len(chunk)
            if self.left < 0:
                raise BudgetExhausted(
                    "the archive's members expand beyond the bound in all: refused as a "
                    "decompression bomb"
                )
            yield chunk


def _zipfile_chunks(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    with archive.open(info) as stream:
        yield from file_chunks(stream)


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    encoding = "utf-8" if info.flag_bits & _FLAG_UTF8 else "cp437"
    try:
        return info.orig_filename.encode(encoding)
    except UnicodeEncodeError:
        return info.orig_filename.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- zip


def scan_zip(scan: _Scan, fd: int, size: int, depth: int) -> None:
    """`.npz`, skops, PyTorch and other zip archives: the layout is checked, then every member a
    loader unpickles is scanned (in a skops file too, after skops' audit: numpy.load reads
    any zip as an .npz)."""
    raw = open(fd, "rb", closefd=False)  # noqa: SIM115 - closed with the archive
    try:
        archive = zipfile.ZipFile(raw)
    except _ZIP_ERRORS as exc:
        scan.add("malformed", f"zip archive cannot be read: {exc}", 0)
        raw.close()
        return
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            scan.add("malformed", "zip archive has too many members", 0)
            return
        members = [Member(info, _raw_name(info)) for info in infos]
        torch_view = torch_checkpoint.zip_view([m.raw_name for m in members])
        try:
            _check_layout(scan, archive, fd, size, members, fold_case=torch_view is not None)
        except _ZIP_ERRORS as exc:
            scan.add("malformed", f"zip archive cannot be read: {exc}", 0)
            return
        names = {m.name for m in members}
        if "schema.json" in names:
            scan.result.format = "skops"
            _scan_skops(scan, fd)
        elif torch_view is not None:
            scan.result.format = "torchscript" if torch_view.torchscript else "torch"
        else:
            scan.result.format = "npz" if all(n.endswith(".npy") for n in names) else "zip"
        if torch_view is not None and torch_view.torchscript:
            scan.add(
                "unscannable",
                "TorchScript archive: torch.load hands it to torch.jit.load, which runs the "
                "TorchScript code it holds; the scanner cannot vouch for code",
                0,
            )
        storages = (
            torch_view.storages([(m.raw_name, m.info.file_size) for m in members])
            if torch_view is not None
            else {}
        )
        budget = Budget(size)
        for member in members:
            scan.member = member.name
            try:
                _scan_member(scan, fd, archive, member, torch_view, storages, budget, depth)
            except BudgetExhausted as exc:
                scan.add("decompression-bomb", str(exc), None)
                break
            except StreamError as exc:
                scan.add("bad-compression", str(exc), None)
            except _ZIP_ERRORS as exc:
                scan.add("malformed", f"zip member cannot be read: {exc}", None)
        scan.member = None


def _check_layout(
    scan: _Scan,
    archive: zipfile.ZipFile,
    fd: int,
    size: int,
    members: list[Member],
    *,
    fold_case: bool,
) -> None:
    """Findings for what the two loaders' zip readers disagree on; fills each member's data
    start from its local header. `fold_case`: PyTorch reads the archive, and finds names
    ignoring ASCII case."""
    end_record = zipfile._EndRecData(archive.fp)  # type: ignore[attr-defined]
    if end_record is not None:
        declared = end_record[6]  # _ECD_OFFSET: where the end record says the directory is
        if archive.start_dir != declared:
            scan.add(
                "zip-layout",
                f"the central directory is at byte {archive.start_dir}, not at byte {declared} "
                "as the end record says: zipfile (numpy) reads past the prefix, PyTorch's reader "
                "refuses the archive",
                archive.start_dir,
            )
    first = min((m.info.header_offset for m in members), default=0)
    if first > 0:
        scan.add(
            "zip-layout",
            f"{first} bytes before the first member the central directory lists: data no "
            "loader reads through the directory, which a streaming unzip would",
            0,
        )
    seen: dict[bytes, str] = {}
    for member in members:
        key = member.raw_name.lower() if fold_case else member.raw_name
        if b"\0" in member.raw_name:
            scan.add(
                "zip-layout",
                f"member name {member.name!r} holds a NUL byte: zipfile cuts it there, "
                "PyTorch's reader does not",
                member.info.header_offset,
            )
        if key in seen:
            scan.add(
                "duplicate-member",
                f"members {seen[key]!r} and {member.name!r} have the same name"
                f"{' to PyTorch, which ignores case' if fold_case else ''}: which one a "
                "loader reads depends on the loader; every copy is scanned",
                member.info.header_offset,
            )
        else:
            seen[key] = member.name
        _read_local_header(scan, fd, size, member)


def _read_local_header(scan: _Scan, fd: int, size: int, member: Member) -> None:
    info = member.info
    inside = 0 <= info.header_offset < size
    header = os.pread(fd, _LOCAL_HEADER.size, info.header_offset) if inside else b""
    if len(header) < _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
        scan.add(
            "malformed",
            f"member {member.name!r}: no local header where the central directory points",
            info.header_offset,
        )
        return
    _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    name = os.pread(fd, name_len, info.header_offset + _LOCAL_HEADER.size)
    member.data_start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    differ = []
    if name != member.raw_name:
        differ.append("name")
    if method != info.compress_type:
        differ.append("compression method")
    if (flags ^ info.flag_bits) & ~(_FLAG_DESCRIPTOR | _FLAG_UTF8):
        differ.append("flags")
    if not flags & _FLAG_DESCRIPTOR:
        if csize not in (_U32, info.compress_size) or usize not in (_U32, info.file_size):
            differ.append("sizes")
        elif crc != info.CRC:
            differ.append("CRC")
    if differ:
        scan.add(
            "zip-header-mismatch",
            f"member {member.name!r}: its local header and the central directory disagree on "
            f"its {', '.join(differ)}: the loaders read the directory's (the data is scanned as "
            "they read it), a streaming unzip reads the local header's",
            info.header_offset,
        )
    if member.data_start + info.compress_size > size:
        scan.add("malformed", f"member {member.name!r} runs past the end of the file", None)
        member.data_start = None


def _unreadable(scan: _Scan, member: Member) -> bool:
    """A member neither loader can read, nor the scanner: a finding, True."""
    info = member.info
    for flag, what in _UNREADABLE_FLAGS:
        if info.flag_bits & flag:
            scan.add(
                "unscannable",
                f"{what} zip member: numpy and PyTorch refuse to read it and the scanner "
                "cannot look inside, but it may hold a pickle",
                info.header_offset,
            )
            return True
    if info.compress_type not in _METHODS:
        scan.add(
            "unscannable",
            f"zip member compressed with method {info.compress_type}, which the scanner "
            "cannot read (numpy's and PyTorch's readers refuse it today): it may hold a pickle",
            info.header_offset,
        )
        return True
    return member.data_start is None


def _scan_member(
    scan: _Scan,
    fd: int,
    archive: zipfile.ZipFile,
    member: Member,
    torch_view: torch_checkpoint.ZipView | None,
    storages: dict[bytes, list[int]],
    budget: Budget,
    depth: int,
) -> None:
    info = member.info
    if info.filename.endswith("/") and info.file_size == 0:
        return
    if _unreadable(scan, member):
        return
    if info.file_size > max(MIN_BOUND, info.compress_size * MAX_RATIO):
        scan.add("decompression-bomb", "zip member expands beyond the bound", None)
        return
    if info.compress_type == 0 and info.compress_size != info.file_size:
        scan.add(
            "zip-header-mismatch",
            f"stored member {member.name!r} has different compressed and uncompressed sizes",
            info.header_offset,
        )
    if torch_view is not None and torch_view.is_pickle(member.raw_name):
        torch_checkpoint.scan_data_pkl(
            scan, member.source(fd, archive, budget), torch_view, storages
        )
        return
    if torch_view is not None and torch_view.is_storage(member.raw_name):
        return  # raw tensor data, read only through a persistent id (checked there)
    source = member.source(fd, archive, budget)
    head = source.peek(TAR_BLOCK)
    if head.startswith(NPY_MAGIC):
        from integrity.safety.scanner import _scan_npy

        _scan_npy(scan, source, info.file_size)
    elif (
        head[:1] == b"\x80"
        or member.name.lower().endswith(PICKLE_SUFFIXES)
        or unscannable_kind(head) is not None
    ):
        scan_nested(scan, file_chunks(source), member.name, depth)


def scan_nested(scan: _Scan, chunks: Iterator[bytes], name: str, depth: int) -> None:
    """A member that is a file of its own (a pickle, a joblib file, an archive): copied to a
    temporary file and scanned as one, its findings named by the member."""
    import tempfile  # only here: it costs start-up time every scan would pay

    from integrity.safety.scanner import scan_fd

    if depth >= MAX_NESTING:
        scan.add(
            "unscannable",
            f"archive nested more than {MAX_NESTING} deep: the scanner does not follow it",
            None,
        )
        return
    with tempfile.TemporaryFile(prefix="integrity-scan-") as spool:
        for chunk in chunks:
            spool.write(chunk)
        spool.flush()
        inner = scan_fd(spool.fileno(), name, scan.allowlist, depth=depth + 1)
    merge(scan, inner, name)


def merge(scan: _Scan, inner: ScanResult, name: str) -> None:
    """An inner file's findings and globals, as the outer file's, named by the member."""
    outer_member, outer_decompressed = scan.member, scan.decompressed
    try:
        for finding in inner.findings:
            scan.member = f"{name}/{finding.member}" if finding.member else name
            scan.decompressed = finding.in_decompressed
            scan.add(finding.code, finding.message, finding.offset, finding.global_name)
    finally:
        scan.member, scan.decompressed = outer_member, outer_decompressed
    scan.result.globals_used.extend(inner.globals_used)
    scan.result.extended.update(inner.extended)


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


# ---------------------------------------------------------------- other containers


def scan_container(scan: _Scan, fd: int, size: int, depth: int, *, is_pickle: bool) -> None:
    """A file that is not a zip, npy or joblib-compressed file: PyTorch's legacy loader reads
    it as a tar archive first, if its first block is a tar header; other archive formats the
    scanner cannot read are findings. `is_pickle`: the pickle scan found a pickle there."""
    head = os.pread(fd, TAR_BLOCK, 0)
    if is_tar_header(head):
        _scan_tar(scan, fd, depth)
        return
    kind = None if is_pickle else unscannable_kind(head)
    if kind is not None:
        scan.result.format = "unscannable"
        scan.add(
            "unscannable",
            f"{kind}: it may hold a pickle and the scanner cannot read it",
            0,
        )


def compressed_container(scan: _Scan, head: bytes, method: str) -> bool:
    """Decompressed joblib-format content that is an archive (a .tar.gz, a gzipped zip):
    joblib.load fails on it, but it may hold a pickle the scanner does not read. True if so
    (a finding was added)."""
    kind = unscannable_kind(head)
    if kind is None:
        return False
    scan.add(
        "unscannable",
        f"{method}-compressed {kind.removeprefix('a ').removeprefix('an ')}: it may hold a "
        "pickle the scanner does not read",
        0,
    )
    return True


def _scan_tar(scan: _Scan, fd: int, depth: int) -> None:
    import tarfile

    scan.result.format = "tar"
    raw = open(fd, "rb", closefd=False)  # noqa: SIM115 - closed below
    raw.seek(0)  # the descriptor's offset is wherever the pickle scan left it
    try:
        # As PyTorch's legacy loader opens it.
        with tarfile.open(fileobj=raw, mode="r:", format=tarfile.PAX_FORMAT) as tar:
            members = []
            for member in tar:  # not getmembers(): the count is bounded as it is read
                members.append(member)
                if len(members) > MAX_ZIP_MEMBERS:
                    scan.add("malformed", "tar archive has too many members", 0)
                    return
            names = {m.name for m in members}
            if names & torch_checkpoint.TAR_RECORDS:
                scan.result.format = "torch-tar"
                torch_checkpoint.scan_tar(scan, tar, members)
            for member in members:
                if member.name in torch_checkpoint.TAR_RECORDS or not member.isfile():
                    continue
                scan.member = member.name
                _scan_tar_member(scan, tar, member, depth)
            scan.member = None
    except (tarfile.TarError, OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
        scan.member = None
        scan.add("malformed", f"tar archive cannot be read: {exc}", 0)
    finally:
        raw.close()


def _scan_tar_member(
    scan: _Scan, tar: tarfile.TarFile, member: tarfile.TarInfo, depth: int
) -> None:
    stream = tar.extractfile(member)
    if stream is None:
        return
    head = stream.read(TAR_BLOCK)
    if (
        head[:1] == b"\x80"
        or head.startswith(NPY_MAGIC)
        or member.name.lower().endswith(PICKLE_SUFFIXES)
        or unscannable_kind(head) is not None
    ):
        scan_nested(scan, file_chunks(stream, head), member.name, depth)


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def file_chunks(stream: Readable, head: bytes = b"") -> Iterator[bytes]:
    """What is left of a file object, in blocks (after `head`, read from it already)."""
    yield head
    while chunk := stream.read(BLOCK):
        yield chunk


__all__ = [
    "ChunkSource",
    "Member",
    "compressed_container",
    "file_chunks",
    "is_tar_header",
    "merge",
    "scan_container",
    "scan_nested",
    "scan_zip",
    "unscannable_kind",
]
