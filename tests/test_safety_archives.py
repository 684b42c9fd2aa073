"""Archives: zip oddities read as numpy's zipfile and PyTorch's miniz read them, tar (PyTorch's
legacy loader tries it first), and formats that may hold a pickle the scanner cannot read.

Nothing here is loaded: payloads are hand-built pickle bytes naming `posix.system`.
Where a test says what PyTorch does, it was measured with torch 2.13 (see
scripts/make_torch_fixtures.py; CI has no torch) and stated in integrity/safety/archives.py.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrity.cli import main
from integrity.safety import archives
from integrity.safety.archives import is_tar_header
from integrity.safety.scanner import ScanResult, scan_path

# pickle.load would run posix.system("true"); never loaded here.
PAYLOAD = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
BENIGN = pickle.dumps({"coef": [1.0, 2.0]}, protocol=2)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def make_zip(*entries: tuple[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def central_entries(data: bytes) -> list[int]:
    """Offsets of the central directory's entries."""
    found, at = [], data.find(b"PK\x01\x02")
    while at >= 0:
        found.append(at)
        at = data.find(b"PK\x01\x02", at + 4)
    return found


def patch_member(
    data: bytes,
    name: str,
    *,
    flags: int = 0,
    method: int | None = None,
    central: bool = True,
    local: bool = True,
) -> bytes:
    """Set flag bits (and the method) of one member, in its central entry and/or its local
    header, as a hostile writer would."""
    out = bytearray(data)
    for entry in central_entries(data):
        name_len = struct.unpack_from("<H", out, entry + 28)[0]
        if bytes(out[entry + 46 : entry + 46 + name_len]) != name.encode():
            continue
        header = struct.unpack_from("<I", out, entry + 42)[0]
        for at, on in ((entry + 8, central), (header + 6, local)):
            if on:
                struct.pack_into("<H", out, at, struct.unpack_from("<H", out, at)[0] | flags)
                if method is not None:
                    struct.pack_into("<H", out, at + 2, method)
    return bytes(out)


def scan_bytes(tmp_path: Path, data: bytes, name: str = "model.npz") -> ScanResult:
    path = tmp_path / name
    path.write_bytes(data)
    return scan_path(path)


def codes(result: ScanResult) -> set[str]:
    return {f.code for f in result.findings}


def names_system(result: ScanResult) -> bool:
    return any(f.global_name == "posix.system" for f in result.findings)


EVIL_NPZ = make_zip(("coef.npy", npy(np.arange(3.0))), ("extra.pkl", PAYLOAD))
UNREADABLE = {
    "encrypted": {"flags": 0x1},
    "patched_data_bit5": {"flags": 0x20},
    "strong_encryption_bit6": {"flags": 0x40},
    "central_directory_encryption_bit13": {"flags": 0x2000},
    "unknown_method_99": {"method": 99},
    "deflate64_method_9": {"method": 9},
}


# ---------------------------------------------------------------- crashes become findings


@pytest.mark.parametrize("how", sorted(UNREADABLE))
def test_unreadable_member_is_an_unscannable_finding_not_an_internal_error(
    how: str, tmp_path: Path
) -> None:
    data = patch_member(EVIL_NPZ, "extra.pkl", **UNREADABLE[how])  # type: ignore[arg-type]
    result = scan_bytes(tmp_path, data)
    assert "unscannable" in codes(result)
    assert any(f.member == "extra.pkl" for f in result.findings if f.code == "unscannable")


@pytest.mark.parametrize("how", sorted(UNREADABLE))
def test_unreadable_member_fails_scan_and_verify_with_a_report(
    how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    benign = make_zip(("coef.npy", npy(np.arange(3.0))), ("extra.pkl", BENIGN))
    path = tmp_path / "model.npz"
    path.write_bytes(patch_member(benign, "extra.pkl", **UNREADABLE[how]))  # type: ignore[arg-type]
    assert main(["scan", str(path)]) == 1
    out = capsys.readouterr()
    assert "unscannable [extra.pkl]" in out.out and "Traceback" not in out.err
    manifest, report = tmp_path / "model-integrity.json", tmp_path / "report.json"
    assert main(["init", "--manifest", str(manifest), "--model", str(path)]) == 0
    verify = ["verify", "--manifest", str(manifest), "--json", str(report), "--no-progress"]
    assert main(verify) == 1
    safety = {c["id"]: c for c in json.loads(report.read_text())["checks"]}["safety"]
    assert safety["status"] == "fail"
    assert any(f["code"] == "unscannable" for f in safety["findings"])


def test_flags_only_in_the_local_header_are_ignored_by_loaders_so_the_member_is_scanned(
    tmp_path: Path,
) -> None:
    # PyTorch (miniz) and zipfile take the flags from the central directory: a member whose
    # local header alone says "encrypted" is read as plain data, and its pickle runs.
    for flags in (0x1, 0x20, 0x40):
        data = patch_member(EVIL_NPZ, "extra.pkl", flags=flags, central=False)
        result = scan_bytes(tmp_path, data)
        assert "zip-header-mismatch" in codes(result)
        assert names_system(result), flags


def test_local_header_name_mismatch_is_a_finding_and_the_data_still_scanned(
    tmp_path: Path,
) -> None:
    # zipfile refuses the member (numpy fails), miniz reads it (torch.load runs it).
    data = bytearray(EVIL_NPZ)
    at = data.find(b"extra.pkl")  # the first occurrence is the local header's
    data[at : at + 9] = b"xxxxx.pkl"
    result = scan_bytes(tmp_path, bytes(data))
    assert "zip-header-mismatch" in codes(result)
    assert names_system(result)


def test_local_header_sizes_and_method_are_ignored_as_the_loaders_ignore_them(
    tmp_path: Path,
) -> None:
    data = bytearray(EVIL_NPZ)
    local = data.find(b"PK\x03\x04", 1)  # extra.pkl's local header
    struct.pack_into("<HII", data, local + 8, 8, 0, 0)  # method deflate; CRC 0
    result = scan_bytes(tmp_path, bytes(data))
    mismatch = [f.message for f in result.findings if f.code == "zip-header-mismatch"]
    assert mismatch and "compression method" in mismatch[0]
    assert names_system(result)


def test_bad_crc_member_is_still_scanned(tmp_path: Path) -> None:
    # miniz in PyTorch does not check CRCs; zipfile does, at the end of the member.
    data = bytearray(EVIL_NPZ)
    entry = central_entries(bytes(data))[1]
    struct.pack_into("<I", data, entry + 16, 0xDEADBEEF)
    local = data.find(b"PK\x03\x04", 1)
    struct.pack_into("<I", data, local + 14, 0xDEADBEEF)
    assert names_system(scan_bytes(tmp_path, bytes(data)))


@pytest.mark.parametrize("order", ["payload_first", "payload_last"])
def test_duplicate_member_names_every_copy_is_scanned(order: str, tmp_path: Path) -> None:
    copies = [("extra.pkl", BENIGN), ("extra.pkl", PAYLOAD)]
    if order == "payload_first":
        copies.reverse()
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = make_zip(("coef.npy", npy(np.arange(3.0))), *copies)
    result = scan_bytes(tmp_path, data)
    assert "duplicate-member" in codes(result)
    assert names_system(result)


def test_names_differing_in_case_are_no_duplicates_to_numpy(tmp_path: Path) -> None:
    data = make_zip(("a.npy", npy(np.arange(2.0))), ("A.npy", npy(np.ones(2))))
    result = scan_bytes(tmp_path, data)
    assert result.safe and result.format == "npz"


def test_data_before_the_central_directory_says_is_a_finding(tmp_path: Path) -> None:
    # A junk member in front: zipfile reads past it (numpy), miniz refuses the archive.
    junk = make_zip(("hidden.pkl", BENIGN))
    junk = junk[: junk.find(b"PK\x01\x02")]
    result = scan_bytes(tmp_path, junk + EVIL_NPZ)
    assert "zip-layout" in codes(result)
    assert names_system(result)


def test_clean_archives_gain_no_layout_findings(tmp_path: Path) -> None:
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        data = make_zip(("a.npy", npy(np.arange(4.0))), ("b.npy", npy(np.ones(2))), method=method)
        result = scan_bytes(tmp_path, data)
        assert result.safe and result.format == "npz", (method, result.findings)


def test_numpy_savez_compressed_with_object_array_is_scanned(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    np.savez_compressed(path, coef=np.arange(3.0), objects=np.array([{"a": 1}], dtype=object))
    result = scan_path(path)
    assert result.safe and result.globals_used  # the object array's pickle was followed


def test_zip64_member_is_read_as_both_loaders_read_it(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("coef.npy", npy(np.arange(3.0)))
        with archive.open("extra.pkl", "w", force_zip64=True) as member:
            member.write(PAYLOAD)
    result = scan_bytes(tmp_path, buffer.getvalue())
    assert names_system(result)
    assert not codes(result) & {"zip-layout", "zip-header-mismatch", "malformed"}


def test_zip_inside_a_zip_is_scanned_as_a_file_of_its_own(tmp_path: Path) -> None:
    inner = make_zip(("model.pkl", PAYLOAD))
    result = scan_bytes(tmp_path, make_zip(("coef.npy", npy(np.ones(2))), ("bundle.zip", inner)))
    hits = [f for f in result.findings if f.global_name == "posix.system"]
    assert hits and hits[0].member == "bundle.zip/model.pkl"


def test_archives_nested_too_deep_are_unscannable(tmp_path: Path) -> None:
    data = make_zip(("model.pkl", BENIGN))
    for depth in range(5):
        data = make_zip((f"level{depth}.zip", data))
    result = scan_bytes(tmp_path, data)
    assert "unscannable" in codes(result)


def test_deflated_member_larger_than_declared_is_refused(tmp_path: Path) -> None:
    data = bytearray(make_zip(("extra.pkl", BENIGN * 50), method=zipfile.ZIP_DEFLATED))
    entry = central_entries(bytes(data))[0]
    struct.pack_into("<I", data, entry + 24, 10)  # declared uncompressed size
    result = scan_bytes(tmp_path, bytes(data))
    assert "bad-compression" in codes(result)


# ---------------------------------------------------------------- not a pickle


UNSCANNABLE_HEADS = {
    "7z": b"7z\xbc\xaf\x27\x1c\x00\x04",
    "rar": b"Rar!\x1a\x07\x01\x00",
    "zstd": b"\x28\xb5\x2f\xfd\x04\x58",
    "cab": b"MSCF\x00\x00\x00\x00",
    "ar": b"!<arch>\n",
    "lzip": b"LZIP\x01",
    "cpio_newc": b"07070100000001",
    "cpio_odc": b"070707000001",
}


@pytest.mark.parametrize("kind", sorted(UNSCANNABLE_HEADS))
def test_archive_the_scanner_cannot_read_is_never_safe(kind: str, tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, UNSCANNABLE_HEADS[kind] + bytes(range(256)) * 4, "m.bin")
    assert not result.safe and "unscannable" in codes(result)


def test_zstd_holding_a_pickle_is_unscannable_not_safe(tmp_path: Path) -> None:
    # A real zstd frame header (magic, descriptor) with a raw block holding the pickle.
    frame = b"\x28\xb5\x2f\xfd" + b"\x20" + bytes([len(PAYLOAD)])
    block = struct.pack("<I", (len(PAYLOAD) << 3) | 1)[:3] + PAYLOAD
    result = scan_bytes(tmp_path, frame + block, "model.zst")
    assert result.format == "unscannable" and not result.safe


def test_text_files_stay_not_executable(tmp_path: Path) -> None:
    for text in (
        b"sepal_length,sepal_width\n5.1,3.5\n",
        b"# notes\nplain text\n",
        b"070701,5.1,3.5\n070702,4.9,3.0\n",  # not a cpio header
        b"LZIPPED notes\n",
    ):
        result = scan_bytes(tmp_path, text, "data.csv")
        assert result.safe and result.format == "not-pickle"


def test_tar_member_holding_a_pickle_is_scanned(tmp_path: Path) -> None:
    path = tmp_path / "bundle.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("README", b"hello\n"), ("model.pkl", PAYLOAD)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    result = scan_path(path)
    assert result.format == "tar"
    hits = [f for f in result.findings if f.global_name == "posix.system"]
    assert hits and hits[0].member == "model.pkl"


def test_tar_of_data_only_is_safe(tmp_path: Path) -> None:
    path = tmp_path / "bundle.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("data.csv")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"a,b\n"))
    result = scan_path(path)
    assert result.safe and result.format == "tar"


def test_tar_header_check_agrees_with_tarfile(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("x")
        tar.addfile(info, io.BytesIO(b""))
    block = buffer.getvalue()[:512]
    assert is_tar_header(block)
    broken = bytearray(block)
    broken[0] ^= 1  # the checksum no longer matches
    assert not is_tar_header(bytes(broken))
    with (
        pytest.raises(tarfile.ReadError),
        tarfile.open(fileobj=io.BytesIO(bytes(broken) + b"\0" * 1024), mode="r:"),
    ):
        pass


def test_gzipped_tar_is_unscannable_not_an_opcode_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("model.pkl")
        info.size = len(PAYLOAD)
        tar.addfile(info, io.BytesIO(PAYLOAD))
    result = scan_bytes(tmp_path, gzip.compress(buffer.getvalue()), "bundle.tar.gz")
    assert codes(result) == {"unscannable"}
    assert "gzip-compressed tar archive" in result.findings[0].message


def test_gzipped_pickle_is_still_scanned_as_joblib_reads_it(tmp_path: Path) -> None:
    result = scan_bytes(tmp_path, gzip.compress(PAYLOAD), "model.joblib")
    assert result.format == "joblib-gzip" and names_system(result)
    result = scan_bytes(tmp_path, zlib.compress(BENIGN), "model.joblib")
    assert result.safe


# ---------------------------------------------------------------- hostile bytes


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(min_value=0, max_value=len(EVIL_NPZ)),
    at=st.lists(st.integers(min_value=0, max_value=len(EVIL_NPZ) - 1), max_size=6),
    byte=st.integers(min_value=0, max_value=255),
)
def test_mutated_zip_always_gets_a_report(
    cut: int, at: list[int], byte: int, tmp_path: Path
) -> None:
    data = bytearray(EVIL_NPZ)
    for offset in at:
        data[offset] = byte
    result = scan_bytes(tmp_path, bytes(data[: max(cut, 4)]))
    assert isinstance(result, ScanResult)
    assert result.format


DIRECTORY = EVIL_NPZ.find(b"PK\x01\x02")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    at=st.lists(st.integers(min_value=DIRECTORY, max_value=len(EVIL_NPZ) - 1), max_size=4),
    value=st.sampled_from([0, 1, 0x20, 0x40, 0x7F, 0x80, 0xFF]),
)
def test_mutated_central_directory_always_gets_a_report(
    at: list[int], value: int, tmp_path: Path
) -> None:
    # Offsets, sizes, name lengths and flags of the directory are what loaders trust.
    data = bytearray(EVIL_NPZ)
    for offset in at:
        data[offset] = value
    result = scan_bytes(tmp_path, bytes(data))
    assert result.format in ("npz", "zip")
    if bytes(data[DIRECTORY:]) == EVIL_NPZ[DIRECTORY:] or not at:
        assert not result.safe  # unchanged: the payload is still found


def overlapping(entries: int) -> bytes:
    """One deflated member, listed `entries` times in the central directory (each entry
    pointing at the same data): a bomb of overlapping members."""
    data = make_zip(("m.pkl", bytes(1 << 20)), method=zipfile.ZIP_DEFLATED)
    cd = data.find(b"PK\x01\x02")
    end = data.find(b"PK\x05\x06")
    entry = data[cd:end]
    directory = b"".join(
        entry[:28] + struct.pack("<H", len(f"m{n:04}.pkl")) + entry[30:46] + f"m{n:04}.pkl".encode()
        for n in range(entries)
    )
    record = bytearray(data[end:])
    struct.pack_into("<HHII", record, 8, entries, entries, len(directory), cd)
    return data[:cd] + directory + bytes(record)


def test_overlapping_members_are_bounded_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(archives, "MIN_BOUND", 1 << 20)  # a 1 MiB floor keeps the test fast
    few = scan_bytes(tmp_path, overlapping(1))
    assert "decompression-bomb" not in codes(few)
    many = scan_bytes(tmp_path, overlapping(8))
    assert any("beyond the bound in all" in f.message for f in many.findings)
