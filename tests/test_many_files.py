"""The mechanisms that make many small files fast and lean, each shown to keep
the result (and the safety) of the slow way it replaced.

- `Folders`: each folder is opened once for all its files, never through a symlink.
- `parallel_map(inline=...)`: small items on the calling thread, results in order.
- The manifest: a fast path for plain paths and ASCII collision keys that agrees
  with the full checks; file entries written directly, byte for byte what
  json.dumps writes; a file entry a few dozen bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import tracemalloc
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from integrity.files import Folders, PathProblem, open_regular, open_root
from integrity.hashing import FORK_AT_LEAST, ForkedDigests, parallel_map, sha256_fd
from integrity.manifest import (
    AllowedGlobal,
    Artifact,
    FileDigest,
    Manifest,
    SafetyPolicy,
    build_manifest,
    dump_manifest,
    parse_manifest,
)
from integrity.paths import _FORBIDDEN_CHARS, collision_key, manifest_path_problem

# ------------------------------------------------------------------ Folders


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """3 folders (one nested) of 4 files each, each file holding its own path."""
    root = tmp_path / "root"
    for folder in ("a", "b", "b/c"):
        (root / folder).mkdir(parents=True)
        for i in range(4):
            (root / folder / f"f{i}").write_text(f"{folder}/f{i}")
    return root


def _paths() -> list[str]:
    return [f"{folder}/f{i}" for folder in ("a", "b", "b/c") for i in range(4)]


def _read(fd: int) -> str:
    try:
        return os.read(fd, 100).decode()
    finally:
        os.close(fd)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_folders_open_each_folder_once(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root_fd = open_root(tree)
    folder_opens: list[str] = []
    real_open = os.open

    def counting_open(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_DIRECTORY:
            folder_opens.append(path)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", counting_open)
    try:
        with Folders(root_fd) as folders:
            contents = [_read(open_regular(root_fd, p, folders)[0]) for p in _paths()]
    finally:
        os.close(root_fd)
    assert contents == _paths()
    assert sorted(folder_opens) == ["a", "b", "c"]  # 'b/c' opened beneath 'b'
    # The control: without Folders, every file walks its folders again.
    root_fd = open_root(tree)
    folder_opens.clear()
    try:
        for path in _paths():
            os.close(open_regular(root_fd, path)[0])
    finally:
        os.close(root_fd)
    assert len(folder_opens) == 16  # 4 files in a, 4 in b, 4 x 2 for b/c


def test_folders_refuse_a_symlinked_folder(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f0").write_text("secret")
    (tree / "link").symlink_to(outside, target_is_directory=True)
    root_fd = open_root(tree)
    try:
        with Folders(root_fd) as folders, pytest.raises(PathProblem) as caught:
            open_regular(root_fd, "link/f0", folders)
    finally:
        os.close(root_fd)
    assert (caught.value.kind, caught.value.where) == ("symlink", "link")


def test_folder_swapped_for_a_symlink_midway_is_never_followed(tree: Path, tmp_path: Path) -> None:
    """Once a folder is open, its files are read beneath that descriptor: a
    symlink put in its place afterwards leads nowhere."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f1").write_text("secret")
    root_fd = open_root(tree)
    try:
        with Folders(root_fd) as folders:
            assert _read(open_regular(root_fd, "a/f0", folders)[0]) == "a/f0"
            (tree / "a").rename(tree / "a-moved")
            (tree / "a").symlink_to(outside, target_is_directory=True)
            assert _read(open_regular(root_fd, "a/f1", folders)[0]) == "a/f1"
        # The control: a fresh walk meets the symlink and refuses it.
        with pytest.raises(PathProblem) as caught:
            open_regular(root_fd, "a/f1")
    finally:
        os.close(root_fd)
    assert caught.value.kind == "symlink"


def test_folders_keep_few_descriptors_and_close_them_all(tree: Path) -> None:
    for i in range(10):
        (tree / "many" / f"d{i}").mkdir(parents=True)
        (tree / "many" / f"d{i}" / "f").write_text(str(i))
    before = _open_fds()
    root_fd = open_root(tree)
    try:
        with Folders(root_fd, keep=3) as folders:
            for i in range(10):
                assert _read(open_regular(root_fd, f"many/d{i}/f", folders)[0]) == str(i)
                assert _open_fds() <= before + 1 + 3
            # An evicted folder is opened again when needed.
            assert _read(open_regular(root_fd, "many/d0/f", folders)[0]) == "0"
    finally:
        os.close(root_fd)
    assert _open_fds() == before


def test_folders_deeper_than_what_is_kept(tmp_path: Path) -> None:
    parts = [f"p{i}" for i in range(8)]
    (tmp_path.joinpath(*parts)).mkdir(parents=True)
    (tmp_path.joinpath(*parts) / "f").write_text("deep")
    root_fd = open_root(tmp_path)
    try:
        with Folders(root_fd, keep=2) as folders:
            assert _read(open_regular(root_fd, "/".join([*parts, "f"]), folders)[0]) == "deep"
    finally:
        os.close(root_fd)


def test_folders_are_per_thread(tree: Path) -> None:
    """Worker threads never share a descriptor another thread may evict."""
    root_fd = open_root(tree)
    seen: dict[str, list[str]] = {}
    try:
        with Folders(root_fd, keep=1) as folders:

            def read_all(name: str) -> None:
                seen[name] = [_read(open_regular(root_fd, p, folders)[0]) for p in _paths() * 5]

            threads = [threading.Thread(target=read_all, args=(f"t{i}",)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        os.close(root_fd)
    assert seen == {f"t{i}": _paths() * 5 for i in range(4)}


# ------------------------------------------------------------------ parallel_map


def test_small_items_run_on_the_calling_thread_and_results_keep_input_order() -> None:
    caller = threading.get_ident()
    ran_on: dict[int, int] = {}

    def work(n: int) -> int:
        ran_on[n] = threading.get_ident()
        return n * n

    items = [1, 200, 3, 400, 500, 6, 7, 800, 9]
    results = list(parallel_map(work, items, workers=2, inline=lambda n: n < 100))
    assert results == [n * n for n in items]
    assert {n for n in items if ran_on[n] == caller} == {1, 3, 6, 7, 9}


def test_only_small_items_start_no_thread() -> None:
    before = threading.active_count()
    counts = list(
        parallel_map(lambda _: threading.active_count(), range(50), workers=4, inline=bool)
    )
    # 0 is not "small" by `bool`: it alone went to a worker.
    assert counts[0] > before
    counts = list(
        parallel_map(
            lambda _: threading.active_count(), range(50), workers=4, inline=lambda _: True
        )
    )
    assert counts == [before] * 50


def test_an_inline_error_is_raised() -> None:
    def fail(n: int) -> int:
        raise ValueError(n)

    with pytest.raises(ValueError):
        list(parallel_map(fail, [1, 2], workers=2, inline=lambda _: True))


# ------------------------------------------------------------------ sha256_fd


@pytest.mark.parametrize(
    ("content", "hint", "reads"),
    [
        (b"x" * 4096, 4096, 1),  # the short read reaches the size: no read to find the end
        (b"x" * 4096, None, 2),  # the control: without the size, one more read
        (b"x" * 5000, 4096, 2),  # the file grew past the size given: read to its end
        (b"x" * 4096, 9999, 2),  # a size it never reaches: read to its end
        (b"", 0, 1),
    ],
)
def test_sha256_of_a_small_file_reads_to_its_end(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: bytes,
    hint: int | None,
    reads: int,
) -> None:
    (tmp_path / "f").write_bytes(content)
    calls: list[int] = []
    real_readv = os.readv

    def counting_readv(fd: int, buffers: list[memoryview]) -> int:
        calls.append(fd)
        return real_readv(fd, buffers)

    monkeypatch.setattr(os, "readv", counting_readv)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        digest, count = sha256_fd(fd, size=hint)
    finally:
        os.close(fd)
    assert (digest, count) == (hashlib.sha256(content).hexdigest(), len(content))
    assert len(calls) == reads


# ------------------------------------------------------------------ ForkedDigests


def _small(paths: list[str]) -> list[tuple[str, int]]:
    """As a manifest names them: each with a (recorded) small size."""
    return [(p, 16) for p in paths]


def _many_small(root: Path, count: int) -> list[str]:
    paths = []
    for i in range(count):
        path = f"d{i // 200:03}/f{i:05}"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(f"file {i}".encode())
        paths.append(path)
    return paths


@pytest.mark.skipif(sys.platform != "linux", reason="the helper process is Linux-only")
def test_forked_helper_hashes_its_share_as_hashlib_does(tmp_path: Path) -> None:
    paths = _many_small(tmp_path, FORK_AT_LEAST)
    root_fd = open_root(tmp_path)
    try:
        ahead = ForkedDigests.start(root_fd, _small(paths))
        assert ahead is not None
        advanced: list[int] = []
        with ahead:
            got = {p: ahead.take(p, advanced.append) for p in paths}
    finally:
        os.close(root_fd)
    share = paths[len(paths) // 2 :]
    assert sum(advanced) == sum((tmp_path / p).stat().st_size for p in share)
    assert all(got[p] is None for p in paths[: len(paths) // 2])  # the caller's half
    for p in share:
        data = (tmp_path / p).read_bytes()
        assert got[p] == (hashlib.sha256(data).hexdigest(), len(data), len(data))


@pytest.mark.skipif(sys.platform != "linux", reason="the helper process is Linux-only")
def test_forked_helper_leaves_what_it_cannot_open_to_the_caller(tmp_path: Path) -> None:
    paths = _many_small(tmp_path, FORK_AT_LEAST)
    symlinked, missing, fifo = paths[-1], paths[-2], paths[-3]
    (tmp_path / symlinked).unlink()
    (tmp_path / symlinked).symlink_to(tmp_path / paths[0])
    (tmp_path / missing).unlink()
    (tmp_path / fifo).unlink()
    os.mkfifo(tmp_path / fifo)
    root_fd = open_root(tmp_path)
    try:
        ahead = ForkedDigests.start(root_fd, _small(paths))
        assert ahead is not None
        with ahead:
            advanced: list[int] = []
            bad = [ahead.take(p, advanced.append) for p in (symlinked, missing, fifo)]
            assert bad == [None] * 3
            assert ahead.take(paths[-4], advanced.append) is not None
    finally:
        os.close(root_fd)
    # Counted: the bytes of what it hashed, and nothing of what it could not.
    share = paths[len(paths) // 2 : -3]
    assert sum(advanced) == sum((tmp_path / p).stat().st_size for p in share)


def test_forked_helper_not_started_for_few_files_or_beside_threads(tmp_path: Path) -> None:
    paths = _many_small(tmp_path, FORK_AT_LEAST)
    root_fd = open_root(tmp_path)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    try:
        assert ForkedDigests.start(root_fd, _small(paths[:-1])) is None
        other.start()  # a fork copies only the calling thread: never beside another
        assert ForkedDigests.start(root_fd, _small(paths)) is None
    finally:
        stop.set()
        other.join()
        os.close(root_fd)


@pytest.mark.skipif(sys.platform != "linux", reason="the helper process is Linux-only")
def test_verify_reports_changes_in_the_helpers_share(tmp_path: Path) -> None:
    """End to end: files the helper hashed still give each finding by name."""
    _many_small(tmp_path / "model", FORK_AT_LEAST + 100)
    cli = [sys.executable, "-m", "integrity"]
    manifest = str(tmp_path / "model-integrity.json")
    subprocess.run(
        [*cli, "init", "--model", "model", "--manifest", manifest], cwd=tmp_path, check=True
    )
    last = sorted((tmp_path / "model").rglob("f*"))[-3:]
    last[0].write_bytes(b"changed")  # size and content
    last[1].write_bytes(last[1].read_bytes().replace(b"file", b"elif"))  # content only
    last[2].unlink()
    report = tmp_path / "report.json"
    done = subprocess.run(
        [*cli, "verify", "--only", "digests", "--manifest", manifest, "--json", str(report)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stderr
    checks = json.loads(report.read_text())["checks"]
    findings = {(f["path"], f["code"]) for c in checks for f in c["findings"]}
    rel = [str(p.relative_to(tmp_path)) for p in last]
    assert findings == {
        (rel[0], "size-mismatch"),
        (rel[1], "digest-mismatch"),
        (rel[2], "missing"),
    }


# ------------------------------------------------------------------ manifest fast paths

_TRICKY = ["a", "Z", ".", "..", "/", ":", "\\", "\x00", "\x1f", "\x7f", "\x9f", "\xa0", "é"]
_TRICKY += ["\u2028", "\u2029", "\ud800", "\udcff", "ı", "ß", " ", "\n", "-", "~"]


def _reference_problem(path: str) -> bool:
    """The rules, spelled out one by one: whether `path` is invalid."""
    if not path or path.startswith("/") or path[1:2] == ":":
        return True
    if any(c in _FORBIDDEN_CHARS for c in path):
        return True
    if any(part in ("", ".", "..") for part in path.split("/")):
        return True
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@given(st.lists(st.sampled_from(_TRICKY), max_size=8).map("".join))
def test_plain_path_fast_path_agrees_with_every_rule(path: str) -> None:
    assert (manifest_path_problem(path) is not None) == _reference_problem(path)


@given(st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_collision_key_is_the_full_folding(name: str) -> None:
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).upper().casefold())
    assert collision_key(name) == folded


_NAMES = st.text(
    alphabet=st.sampled_from(["a", "B", "é", '"', "'", "\u00a0", "日", "𝔘", " ", "-"]),
    min_size=1,
    max_size=6,
).filter(lambda n: n.strip(".") != "")


@given(
    st.lists(
        st.tuples(_NAMES, st.integers(0, 2**64)),
        min_size=0,
        max_size=8,
        unique_by=lambda t: t[0].lower(),
    ),
    st.booleans(),
)
def test_dumped_manifest_is_exactly_what_json_dumps_writes(
    files: list[tuple[str, int]], with_policy: bool
) -> None:
    digests = [
        FileDigest(path=f"m/{name}", sha256=f"{i:064x}", size=size)
        for i, (name, size) in enumerate(files)
    ]
    artifacts = [Artifact(path="m", type="directory", role="model")]
    manifest = build_manifest(artifacts, digests)
    if with_policy:
        allow = [AllowedGlobal(module="my.mod", name="Thing", reason='a "why"\n')]
        manifest = Manifest(
            version=1, artifacts=artifacts, files=manifest.files, safety=SafetyPolicy(allow=allow)
        )
    expected = manifest.model_dump(mode="json", exclude_none=True)
    text = json.dumps(expected, indent=2, ensure_ascii=False) + "\n"
    assert dump_manifest(manifest) == text
    assert json.loads(dump_manifest(manifest)) == expected


def test_a_file_entry_is_small() -> None:
    entry = FileDigest(path="m/a", sha256="0" * 64, size=1)
    assert not hasattr(entry, "__dict__")
    assert sys.getsizeof(entry) <= 64


def test_a_loaded_manifest_holds_little_beyond_its_strings() -> None:
    count = 5000
    text = dump_manifest(
        build_manifest(
            [Artifact(path="m", type="directory", role="model")],
            [
                FileDigest(path=f"m/d{i // 100}/f{i}", sha256=f"{i:064x}", size=i)
                for i in range(count)
            ],
        )
    ).encode()
    parse_manifest(text, "warm-up")  # builds the validator outside the measurement
    tracemalloc.start()
    try:
        manifest = parse_manifest(text, "m.json")
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(manifest.files) == count
    # Per file: its path (~60 B) and digest (~110 B) strings, a size, a list slot
    # and the 56-byte entry; a model per file (~400 B more) would not fit.
    assert held / count < 350
