"""Hashing ahead: large files hashed from memory maps by a forked helper from
before the manifest is validated (`ForkedDigests`), and `verify` starting it
from the manifest's raw JSON (`manifest_json.named_files`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from integrity.files import open_root
from integrity.hashing import BLOCK_SIZE, FORK_AT_LEAST, INLINE_BELOW, MAP_WINDOW, ForkedDigests
from integrity.manifest_json import named_files

CLI = [sys.executable, "-m", "integrity"]


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the helper process is Linux-only")


def _large(root: Path, count: int, size: int = MAP_WINDOW + 3 * BLOCK_SIZE + 17) -> list[str]:
    paths = []
    for i in range(count):
        path = f"model/part{i}.bin"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(bytes([i]) * size)
        paths.append(path)
    return paths


HUGE = 64 << 30


def _sparse(root: Path, path: str) -> str:
    """A file of HUGE zero bytes taking no space: hashing it whole takes far
    longer than any test allows."""
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    with (root / path).open("wb") as f:
        f.truncate(HUGE)
    return path


def _named(root: Path, paths: list[str]) -> list[tuple[str, int]]:
    """As a manifest names them: each with a large (recorded) size."""
    return [(p, INLINE_BELOW) for p in paths]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def root_fd(tmp_path: Path):  # type: ignore[no-untyped-def]
    fd = open_root(tmp_path)
    yield fd
    os.close(fd)


def test_helper_hashes_large_files_from_maps_as_hashlib_does_and_counts_every_byte(
    tmp_path: Path, root_fd: int
) -> None:
    # Across map windows: one more than a window, exactly one, less than one.
    sizes = [MAP_WINDOW + 17, MAP_WINDOW, INLINE_BELOW + 1]
    paths = []
    for i, size in enumerate(sizes):
        paths += _large(tmp_path / str(i), 1, size=size)
        paths[-1] = f"{i}/{paths[-1]}"
    ahead = ForkedDigests.start(root_fd, _named(tmp_path, paths))
    assert ahead is not None
    advanced: list[int] = []
    with ahead:
        got = {p: ahead.take(p, advanced.append) for p in reversed(paths)}
    for p in paths:
        data = (tmp_path / p).read_bytes()
        assert got[p] == (hashlib.sha256(data).hexdigest(), len(data), len(data))
    assert sum(advanced) == sum(sizes)


def test_helper_leaves_what_it_cannot_open_safely_to_the_caller(
    tmp_path: Path, root_fd: int
) -> None:
    paths = _large(tmp_path, 4, size=INLINE_BELOW)
    symlinked, missing, fifo, good = paths
    (tmp_path / symlinked).unlink()
    (tmp_path / symlinked).symlink_to(tmp_path / good)
    (tmp_path / missing).unlink()
    (tmp_path / fifo).unlink()
    os.mkfifo(tmp_path / fifo)  # opening it for read would block: never opened so
    ahead = ForkedDigests.start(root_fd, _named(tmp_path, paths))
    assert ahead is not None
    with ahead:
        results = [ahead.take(p, lambda n: None) for p in (symlinked, missing, fifo)]
        assert results == [None] * 3
        assert ahead.take(good, lambda n: None) is not None
        assert ahead.take("model/never-named.bin", lambda n: None) is None


def test_helper_never_follows_a_symlinked_folder_out_of_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _large(outside, 1, size=INLINE_BELOW)
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "model").symlink_to(outside / "model")
    fd = open_root(inside)
    try:
        ahead = ForkedDigests.start(fd, [("model/part0.bin", INLINE_BELOW)])
        assert ahead is not None
        with ahead:
            assert ahead.take("model/part0.bin", lambda n: None) is None
    finally:
        os.close(fd)


def test_a_file_shrinking_under_the_map_kills_only_the_helper(tmp_path: Path, root_fd: int) -> None:
    """SIGBUS, which a mapped file that shrinks raises, ends the helper, not the
    caller; then nothing the helper hashed is trusted, not even finished files."""
    good = _large(tmp_path, 1, size=INLINE_BELOW)[0]
    huge = _sparse(tmp_path, "model/huge.bin")  # tens of seconds to hash whole
    ahead = ForkedDigests.start(root_fd, _named(tmp_path, [good, huge]))
    assert ahead is not None
    with ahead:
        time.sleep(0.5)  # the helper is inside the huge file by now
        os.truncate(tmp_path / huge, 0)
        started = time.monotonic()
        assert ahead.take(huge, lambda n: None) is None
        assert time.monotonic() - started < 10.0  # ended by the signal, not by finishing
        assert ahead.take(good, lambda n: None) is None


def test_close_kills_the_helper_and_leaves_no_descriptor_open(tmp_path: Path, root_fd: int) -> None:
    paths = [_sparse(tmp_path, f"model/huge{i}.bin") for i in range(2)]
    before = _open_fds()
    ahead = ForkedDigests.start(root_fd, _named(tmp_path, paths))
    assert ahead is not None
    started = time.monotonic()
    ahead.close()
    assert time.monotonic() - started < 5.0  # hashing 128 GiB would take minutes
    assert _open_fds() == before
    with pytest.raises(ChildProcessError):  # reaped: no zombie left behind
        os.waitpid(-1, os.WNOHANG)


def test_nothing_to_hash_ahead_starts_no_helper(tmp_path: Path, root_fd: int) -> None:
    small = [(f"f{i}", 10) for i in range(FORK_AT_LEAST - 1)]  # too few to pay
    assert ForkedDigests.start(root_fd, small) is None
    assert ForkedDigests.start(root_fd, []) is None


def test_one_helper_takes_large_files_and_a_share_of_many_small_ones(
    tmp_path: Path, root_fd: int
) -> None:
    small = []
    for i in range(FORK_AT_LEAST):
        path = f"small/f{i:05}"
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"x" * (i % 7))
        small.append(path)
    large = _large(tmp_path, 2, size=INLINE_BELOW + 5)
    files = [(p, (tmp_path / p).stat().st_size) for p in small + large]
    with ForkedDigests.start(root_fd, files) as ahead:  # type: ignore[union-attr]
        got = {p: ahead.take(p, lambda n: None) for p in small + large}
    assert all(got[p] is None for p in small[: len(small) // 2])  # the caller's half
    for p in small[len(small) // 2 :] + large:
        data = (tmp_path / p).read_bytes()
        assert got[p] == (hashlib.sha256(data).hexdigest(), len(data), len(data))


def test_named_files_takes_only_well_formed_entries_with_valid_paths() -> None:
    raw = {
        "files": [
            {"path": "model/a.bin", "size": INLINE_BELOW, "sha256": "0" * 64},
            {"path": "../outside.bin", "size": INLINE_BELOW},
            {"path": "/etc/passwd", "size": INLINE_BELOW},
            {"path": "model/./b", "size": 1},
            {"path": "model/c", "size": True},
            {"path": "model/d", "size": -1},
            {"path": "model/e", "size": "1"},
            {"path": 5, "size": 1},
            ["model/f", 1],
            {"path": "model/g", "size": 0},
        ]
    }
    assert named_files(raw) == [("model/a.bin", INLINE_BELOW), ("model/g", 0)]
    assert named_files({"files": {"path": "x", "size": 1}}) == []
    assert named_files({}) == []


# ------------------------------------------------------------------ end to end


def _init(tmp_path: Path) -> Path:
    _large(tmp_path, 3)
    manifest = tmp_path / "model-integrity.json"
    subprocess.run([*CLI, "init", "--model", "model"], cwd=tmp_path, check=True)
    return manifest


def _verify(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], set]:  # type: ignore[type-arg]
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    done = subprocess.run(
        [*CLI, "verify", "--only", "digests", "--json", str(report), *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    findings = set()
    if report.exists():
        checks = json.loads(report.read_text())["checks"]
        findings = {(f["path"], f["code"]) for c in checks for f in c["findings"]}
    return done, findings


def test_verify_reports_changed_large_files_hashed_ahead(tmp_path: Path) -> None:
    _init(tmp_path)
    done, findings = _verify(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "3 files match" in done.stdout
    part0, part1, part2 = (tmp_path / f"model/part{i}.bin" for i in range(3))
    with part0.open("r+b") as f:  # same size, one byte in the last block
        f.seek(3 * BLOCK_SIZE + 3)
        f.write(b"!")
    part1.unlink()
    part1.symlink_to(part2)
    done, findings = _verify(tmp_path)
    assert done.returncode == 1, done.stderr
    assert findings == {("model/part0.bin", "digest-mismatch"), ("model/part1.bin", "symlink")}


def test_verify_of_an_invalid_manifest_is_exit_2_even_with_hashing_started(
    tmp_path: Path,
) -> None:
    """The hashing starts before validation; a manifest that then fails it is
    still one clear line and exit 2, and the run does not wait for the files."""
    manifest = _init(tmp_path)
    (tmp_path / "model/part0.bin").unlink()
    _sparse(tmp_path, "model/part0.bin")
    raw = json.loads(manifest.read_text())
    raw["files"][0]["size"] = HUGE
    raw["artifacts"][0]["role"] = "weights"  # not a role: validation fails
    manifest.write_text(json.dumps(raw))
    started = time.monotonic()
    done, _ = _verify(tmp_path)
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "model-integrity.json" in done.stderr
    assert "role" in done.stderr
    assert "Traceback" not in done.stderr
    assert elapsed < 10.0  # 64 GiB hashed to the end would take minutes


def test_init_records_what_hashlib_gives_for_files_hashed_ahead(tmp_path: Path) -> None:
    manifest = _init(tmp_path)
    recorded = {
        f["path"]: (f["sha256"], f["size"]) for f in json.loads(manifest.read_text())["files"]
    }
    expected = {}
    for path in sorted((tmp_path / "model").iterdir()):
        data = path.read_bytes()
        expected[f"model/{path.name}"] = (hashlib.sha256(data).hexdigest(), len(data))
    assert recorded == expected
