"""Files whose first bytes are a compressor's magic but do not decompress.

joblib picks a decompressor by the first bytes (zlib's 0x78 is a lowercase "x", bz2's
"BZ"); when it fails before one byte comes out, joblib unpickles nothing. What remains
is how plain `pickle.load` reads the raw file: a CSV header starting with "x" is not
executable, but "BZ" is also BINBYTES to pickle.load, which reads on into a payload.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from integrity.safety.scanner import scan_path


def _load_in_child(path: Path, loader: str) -> subprocess.CompletedProcess[str]:
    code = {
        "pickle": "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
        "joblib": "import joblib, sys; joblib.load(sys.argv[1])",
    }[loader]
    return subprocess.run(
        [sys.executable, "-I", "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )


def test_csv_starting_with_zlib_magic_is_not_executable(tmp_path: Path) -> None:
    csv = tmp_path / "validation.csv"
    csv.write_bytes(b"x1,x2,label\n0.5,1.5,0\n")
    result = scan_path(csv)
    assert result.safe
    assert result.format == "not-pickle"
    for loader in ("pickle", "joblib"):
        assert _load_in_child(csv, loader).returncode != 0


def test_bz2_magic_read_as_binbytes_by_pickle_load_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # "B" + little-endian length "Z\0\0\0" (90): BINBYTES swallows 90 bytes, then POP.
    command = f"touch {marker}".encode()
    payload = b"cposix\nsystem\n(X" + len(command).to_bytes(4, "little") + command + b"tR."
    path = tmp_path / "model.bin"
    path.write_bytes(b"BZ\x00\x00\x00" + b"A" * 90 + b"0" + payload)
    # joblib takes it for bz2 and fails; pickle.load runs the command.
    assert _load_in_child(path, "joblib").returncode != 0
    assert not marker.exists()
    _load_in_child(path, "pickle")
    assert marker.exists()
    result = scan_path(path)
    assert not result.safe
    assert any(f.global_name == "posix.system" for f in result.findings)
