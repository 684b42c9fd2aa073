"""The digests check: every way a recorded tree can be tampered with is caught,
each as its own finding naming the path, and nothing on disk is followed or
opened that should not be (symlinks, FIFOs).

Each test builds a small tree, records it with `init`, tampers with it, and
reads the verdict from the JSON report (`verify --json`), as a CI script would.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from integrity.checks import CheckContext, CheckOutcome
from integrity.checks.digests import DigestsCheck
from integrity.cli import main
from integrity.manifest import load_manifest, manifest_root

MANIFEST = "model-integrity.json"

MODEL_BYTES = b"joblib-model-v1\x00" * 64
CONFIG_BYTES = b'{"n_estimators": 10}\n'
REQUIREMENTS_BYTES = b"scikit-learn==1.5.0\n"
DATA_BYTES = b"x,y\n1,0\n2,1\n"


# ------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def _no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A recorded tree: a model folder (with a subfolder), a requirements file and
    a file artifact inside an unrecorded folder."""
    root = tmp_path / "repo"
    (root / "models" / "sub").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "models" / "model.joblib").write_bytes(MODEL_BYTES)
    (root / "models" / "sub" / "config.json").write_bytes(CONFIG_BYTES)
    (root / "requirements.txt").write_bytes(REQUIREMENTS_BYTES)
    (root / "data" / "val.csv").write_bytes(DATA_BYTES)
    code = init(root, root / "models", root / "requirements.txt", root / "data" / "val.csv")
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    return root


RECORDED = {"models/model.joblib", "models/sub/config.json", "requirements.txt", "data/val.csv"}


def init(root: Path, model: Path, *artifacts: Path) -> int:
    """An in-process `init` of `root`'s manifest."""
    args = ["init", "--manifest", str(root / MANIFEST), "--model", str(model)]
    for artifact in artifacts:
        args += ["--artifact", str(artifact)]
    return main(args)


def verify_args(root: Path, report: Path) -> list[str]:
    return ["verify", "--manifest", str(root / MANIFEST), "--json", str(report), "--no-progress"]


def run_verify(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    """Exit code, parsed JSON report and console output of an in-process `verify`."""
    out_dir = root.parent / "out"
    out_dir.mkdir(exist_ok=True)
    report_path = out_dir / "report.json"
    if report_path.exists():
        report_path.unlink()
    code = main(verify_args(root, report_path))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert report_path.exists(), f"no report written; stderr: {captured.err}"
    return code, json.loads(report_path.read_text(encoding="utf-8")), captured.out


def digests_check(report: dict[str, Any]) -> dict[str, Any]:
    check: dict[str, Any] = report["checks"][0]
    assert check["id"] == "digests"
    return check


def findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(digests_check(report)["findings"])


def assert_failed(code: int, report: dict[str, Any]) -> None:
    assert code == 1
    assert report["status"] == "fail"
    assert digests_check(report)["status"] == "fail"


def the_finding(report: dict[str, Any], code: str, path: str) -> dict[str, Any]:
    """The one finding with this code for this path; it is an error that names the path."""
    matching = [f for f in findings(report) if f["code"] == code and f["path"] == path]
    assert len(matching) == 1, f"want one {code} finding for {path!r}, got {findings(report)}"
    finding = matching[0]
    assert finding["level"] == "error"
    assert path in finding["message"]
    return finding


def only_finding(report: dict[str, Any], code: str, path: str) -> dict[str, Any]:
    finding = the_finding(report, code, path)
    assert len(findings(report)) == 1, findings(report)
    return finding


def fails_with_only(
    root: Path, capsys: pytest.CaptureFixture[str], code: str, path: str
) -> dict[str, Any]:
    """Verify fails, and its one finding is `code` for `path`."""
    exit_code, report, _ = run_verify(root, capsys)
    assert_failed(exit_code, report)
    return only_finding(report, code, path)


def run_digests_check(root: Path) -> tuple[CheckOutcome, CheckContext]:
    """The digests check run directly on `root`'s manifest, and the context it filled."""
    manifest_path = root / MANIFEST
    context = CheckContext(
        manifest_path=manifest_path, root=manifest_root(manifest_path), show_progress=False
    )
    return DigestsCheck().run(load_manifest(manifest_path), context), context


# ------------------------------------------------------------------ untouched


def test_untouched_tree_passes(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = run_verify(repo, capsys)
    assert code == 0
    assert report["status"] == "pass"
    check = digests_check(report)
    assert check["status"] == "pass"
    assert check["findings"] == []


def test_untouched_tree_marks_every_file_verified(repo: Path) -> None:
    outcome, context = run_digests_check(repo)
    assert outcome.findings == []
    assert context.verified == RECORDED


def test_tampered_file_is_not_marked_verified(repo: Path) -> None:
    (repo / "models" / "model.joblib").write_bytes(MODEL_BYTES[::-1])
    _, context = run_digests_check(repo)
    assert context.verified == RECORDED - {"models/model.joblib"}


def test_verify_works_from_any_working_directory(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, report, _ = run_verify(repo, capsys)
    assert code == 0, report
    assert report["status"] == "pass"


# ------------------------------------------------------------------ content


def test_changed_content_same_size(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tampered = bytearray(MODEL_BYTES)
    tampered[100] ^= 0x01  # one bit, same length
    (repo / "models" / "model.joblib").write_bytes(bytes(tampered))

    finding = fails_with_only(repo, capsys, "digest-mismatch", "models/model.joblib")
    assert finding["expected"] == hashlib.sha256(MODEL_BYTES).hexdigest()
    assert finding["actual"] == hashlib.sha256(bytes(tampered)).hexdigest()


def test_size_change(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "requirements.txt").write_bytes(REQUIREMENTS_BYTES + b"evil-package==6.6.6\n")
    finding = fails_with_only(repo, capsys, "size-mismatch", "requirements.txt")
    assert finding["expected"] == str(len(REQUIREMENTS_BYTES))
    assert finding["actual"] == str(len(REQUIREMENTS_BYTES) + 20)


def test_truncated_to_empty(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "data" / "val.csv").write_bytes(b"")
    fails_with_only(repo, capsys, "size-mismatch", "data/val.csv")


# ------------------------------------------------------------------ missing / added


def test_missing_file(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "models" / "sub" / "config.json").unlink()
    fails_with_only(repo, capsys, "missing", "models/sub/config.json")


def test_missing_file_artifact(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "requirements.txt").unlink()
    fails_with_only(repo, capsys, "missing", "requirements.txt")


def test_missing_recorded_folder(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(repo / "models")
    # One finding for the folder, not one per file it held.
    fails_with_only(repo, capsys, "missing", "models")


def test_missing_folder_above_a_file_artifact(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(repo / "data")
    # The finding is for the recorded file, whichever folder above it went.
    fails_with_only(repo, capsys, "missing", "data/val.csv")


def test_file_added_in_recorded_folder(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "models" / "backdoor.pkl").write_bytes(b"cos\nsystem\n")
    fails_with_only(repo, capsys, "added", "models/backdoor.pkl")


def test_file_added_in_nested_new_subfolder(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "models" / "sub" / "deeper" / "deepest").mkdir(parents=True)
    (repo / "models" / "sub" / "deeper" / "deepest" / "x.bin").write_bytes(b"x")
    (repo / "models" / "new").mkdir()
    (repo / "models" / "new" / ".hidden").write_bytes(b"y")
    code, report, _ = run_verify(repo, capsys)
    assert_failed(code, report)
    the_finding(report, "added", "models/sub/deeper/deepest/x.bin")
    the_finding(report, "added", "models/new/.hidden")
    assert len(findings(report)) == 2


def test_file_added_outside_recorded_folders_is_not_a_finding(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # data/ is not recorded as a folder (only data/val.csv is), nor is the root.
    (repo / "data" / "other.csv").write_bytes(b"a\n")
    (repo / "README.md").write_bytes(b"# hi\n")
    code, report, _ = run_verify(repo, capsys)
    assert code == 0, findings(report)


def test_manifest_next_to_recorded_files_is_not_added(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The manifest lives in the model's own folder, beside the recorded files
    # and above a recorded subfolder: it is never reported as an added file.
    root = tmp_path / "bundle"
    (root / "weights").mkdir(parents=True)
    (root / "model.joblib").write_bytes(MODEL_BYTES)
    (root / "weights" / "w.bin").write_bytes(b"w")
    assert init(root, root / "model.joblib", root / "weights") == 0
    capsys.readouterr()
    recorded = json.loads((root / MANIFEST).read_text())
    assert MANIFEST not in {f["path"] for f in recorded["files"]}
    code, report, _ = run_verify(root, capsys)
    assert code == 0, findings(report)
    assert all(MANIFEST not in (f["path"] or "") for f in findings(report))


# ------------------------------------------------------------------ symlinks


def test_file_replaced_by_symlink_to_file_inside(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Point the model at a copy with the very same bytes: the digest would
    # match if the link were followed, so only refusing links catches this.
    (repo / "copy.joblib").write_bytes(MODEL_BYTES)
    model = repo / "models" / "model.joblib"
    model.unlink()
    model.symlink_to("../copy.joblib")
    fails_with_only(repo, capsys, "symlink", "models/model.joblib")


def test_file_replaced_by_symlink_to_etc_passwd_is_never_followed(
    repo: Path,
    capsys: pytest.CaptureFixture[str],
    refuse_opening: Callable[[Path], list[str]],
) -> None:
    passwd = Path("/etc/passwd")
    assert passwd.is_file(), "this test targets a Linux system file outside the repository"
    first_line = passwd.read_text(errors="replace").splitlines()[0]
    refused = refuse_opening(passwd)
    target = repo / "requirements.txt"
    target.unlink()
    target.symlink_to(passwd)

    code, report, out = run_verify(repo, capsys)
    assert_failed(code, report)
    finding = only_finding(report, "symlink", "requirements.txt")
    assert first_line not in finding["message"]
    assert first_line not in json.dumps(report)
    assert first_line not in out
    assert refused == []


def test_file_replaced_by_symlink_to_secret_outside_is_never_read(
    repo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    refuse_opening: Callable[[Path], list[str]],
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN=s3cr3t-7f1c9a\n")
    refused = refuse_opening(secret)
    model = repo / "models" / "model.joblib"
    model.unlink()
    model.symlink_to(secret)

    code, report, out = run_verify(repo, capsys)
    assert_failed(code, report)
    only_finding(report, "symlink", "models/model.joblib")
    assert "s3cr3t" not in json.dumps(report)
    assert "s3cr3t" not in out
    assert refused == []


def _link_to_moved_folder(folder: Path, moved: Path) -> None:
    """Move `folder` to `moved` and leave a relative symlink to it in its place:
    every file under the link is untouched, so all would match if it were followed."""
    folder.rename(moved)
    folder.symlink_to(os.path.relpath(moved, folder.parent))


def test_recorded_folder_replaced_by_symlink(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _link_to_moved_folder(repo / "models", repo / "models-copy")
    fails_with_only(repo, capsys, "symlink", "models")


def test_folder_above_file_artifact_replaced_by_symlink(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _link_to_moved_folder(repo / "data", repo / "data-copy")
    finding = fails_with_only(repo, capsys, "symlink", "data/val.csv")
    # The message names the folder that became a link, not only the file.
    assert "'data'" in finding["message"]


def test_subfolder_of_recorded_folder_replaced_by_symlink(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _link_to_moved_folder(repo / "models" / "sub", repo / "sub-copy")
    code, report, _ = run_verify(repo, capsys)
    assert_failed(code, report)
    assert any(f["path"] == "models/sub/config.json" for f in findings(report))
    assert all(f["level"] == "error" for f in findings(report))


# ------------------------------------------------------------------ special files


def _fifo_instead_of_model(repo: Path) -> Path:
    fifo = repo / "models" / "model.joblib"
    fifo.unlink()
    os.mkfifo(fifo)
    return fifo


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_file_replaced_by_fifo_never_hangs_nor_opens_it(repo: Path, tmp_path: Path) -> None:
    """Run as a real process, with a timeout: a FIFO opened (blocking) for read
    would hang the run forever. Meanwhile a writer keeps trying a non-blocking
    open for write, which fails with ENXIO exactly while no process has the FIFO
    open for read. (Polling can miss a reader that opens and closes within a
    millisecond; the in-process test below refuses every open of the FIFO.)"""
    fifo = _fifo_instead_of_model(repo)
    report_path = tmp_path / "report.json"
    done = threading.Event()
    reader_seen: list[bool] = []
    probes: list[int] = []

    def writer() -> None:
        while not done.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                assert exc.errno == errno.ENXIO, exc
                probes.append(1)
            else:
                reader_seen.append(True)
                os.close(fd)
            done.wait(0.001)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "integrity", *verify_args(repo, report_path)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    finally:
        done.set()
        thread.join(timeout=5)
    assert probes, "the writer never probed the FIFO"
    assert reader_seen == [], "the FIFO was opened for reading"
    assert proc.returncode == 1, proc.stderr
    report = json.loads(report_path.read_text())
    assert_failed(proc.returncode, report)
    only_finding(report, "special-file", "models/model.joblib")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_file_replaced_by_fifo_is_never_opened_in_process(
    repo: Path,
    capsys: pytest.CaptureFixture[str],
    refuse_opening: Callable[[Path], list[str]],
) -> None:
    fifo = _fifo_instead_of_model(repo)
    refused = refuse_opening(fifo)  # stat of a FIFO does not open it
    fails_with_only(repo, capsys, "special-file", "models/model.joblib")
    assert refused == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_added_in_recorded_folder_is_reported_not_opened(
    repo: Path,
    capsys: pytest.CaptureFixture[str],
    refuse_opening: Callable[[Path], list[str]],
) -> None:
    fifo = repo / "models" / "pipe"
    os.mkfifo(fifo)
    refused = refuse_opening(fifo)
    fails_with_only(repo, capsys, "added", "models/pipe")
    assert refused == []


def test_file_replaced_by_directory(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "requirements.txt").unlink()
    (repo / "requirements.txt").mkdir()
    fails_with_only(repo, capsys, "not-a-file", "requirements.txt")


def test_file_in_recorded_folder_replaced_by_directory(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "models" / "model.joblib").unlink()
    (repo / "models" / "model.joblib").mkdir()
    (repo / "models" / "model.joblib" / "inner.bin").write_bytes(MODEL_BYTES)
    code, report, _ = run_verify(repo, capsys)
    assert_failed(code, report)
    the_finding(report, "not-a-file", "models/model.joblib")
    the_finding(report, "added", "models/model.joblib/inner.bin")


def test_recorded_folder_replaced_by_file(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(repo / "models")
    (repo / "models").write_bytes(MODEL_BYTES)
    fails_with_only(repo, capsys, "not-a-directory", "models")


# ------------------------------------------------------------------ look-alike names


def test_name_differing_only_in_case(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "models" / "model.joblib").rename(repo / "models" / "Model.joblib")
    code, report, _ = run_verify(repo, capsys)
    assert_failed(code, report)
    finding = the_finding(report, "renamed", "models/model.joblib")
    assert "Model.joblib" in finding["message"]
    # On a case-sensitive filesystem the new name is also a new file in the folder.
    assert {f["path"] for f in findings(report)} <= {"models/model.joblib", "models/Model.joblib"}


def test_folder_name_differing_only_in_case(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "models").rename(repo / "Models")
    finding = fails_with_only(repo, capsys, "renamed", "models")
    assert "Models" in finding["message"]


def test_name_differing_only_in_unicode_normalisation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nfc = unicodedata.normalize("NFC", "modèle.joblib")
    nfd = unicodedata.normalize("NFD", "modèle.joblib")
    assert nfc != nfd
    root = tmp_path / "repo"
    (root / "models").mkdir(parents=True)
    (root / "models" / nfc).write_bytes(MODEL_BYTES)
    assert init(root, root / "models") == 0
    capsys.readouterr()
    (root / "models" / nfc).rename(root / "models" / nfd)
    # Linux filesystems keep names byte for byte; this test needs that.
    assert (root / "models" / nfd).exists() and not (root / "models" / nfc).exists()

    code, report, _ = run_verify(root, capsys)
    assert_failed(code, report)
    finding = the_finding(report, "renamed", f"models/{nfc}")
    assert nfd in finding["message"]


# ------------------------------------------------------------------ unreadable


def test_unreadable_file_is_an_error_finding_not_a_crash(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root reads through chmod 000, so fail the read itself, for that file only.
    target = os.stat(repo / "models" / "model.joblib")
    real_readv = os.readv

    def failing_readv(fd: int, buffers: Any) -> int:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_readv(fd, buffers)

    # hashing reads through os.readv; patched for this run only.
    monkeypatch.setattr("integrity.hashing.os.readv", failing_readv)
    finding = fails_with_only(repo, capsys, "unreadable", "models/model.joblib")
    assert os.strerror(errno.EIO) in finding["message"]


# ------------------------------------------------------------------ names from disk


def test_added_file_with_undecodable_name_is_reported(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Bytes that are not UTF-8 in a file name must not crash the JSON report
    # or the console (exit 2); they are a finding like any added file.
    os.close(os.open(os.path.join(os.fsencode(repo), b"models", b"bad\xff.bin"), os.O_CREAT))
    code, report, out = run_verify(repo, capsys)
    assert_failed(code, report)
    (finding,) = findings(report)
    assert finding["code"] == "added"
    assert finding["path"].startswith("models/bad")
    assert "\\xff" in finding["path"]
    out.encode("utf-8")  # printable, encodable text


# ------------------------------------------------------------------ many at once


def test_every_problem_reported_sorted_by_path(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "models" / "model.joblib").write_bytes(MODEL_BYTES[:-1] + b"!")
    (repo / "requirements.txt").unlink()
    (repo / "models" / "zz-added.bin").write_bytes(b"z")
    (repo / "models" / "aa-added.bin").write_bytes(b"a")
    (repo / "models" / "sub" / "config.json").write_bytes(CONFIG_BYTES + b" ")
    (repo / "data" / "val.csv").unlink()
    (repo / "data" / "val.csv").symlink_to("/etc/hostname")

    code, report, out = run_verify(repo, capsys)
    assert_failed(code, report)
    got = [(f["path"], f["code"]) for f in findings(report)]
    assert sorted(got) == [
        ("data/val.csv", "symlink"),
        ("models/aa-added.bin", "added"),
        ("models/model.joblib", "digest-mismatch"),
        ("models/sub/config.json", "size-mismatch"),
        ("models/zz-added.bin", "added"),
        ("requirements.txt", "missing"),
    ]
    paths = [path for path, _ in got]
    assert paths == sorted(paths)
    for path in paths:
        assert path in out  # the console names every one too


def test_deep_folder_is_walked_without_recursion_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Deeper than Python's recursion limit: the walk must be iterative.
    root = tmp_path / "repo"
    deep = root / "model"
    root.mkdir()
    depth = sys.getrecursionlimit() + 50
    try:
        current = os.open(root, os.O_RDONLY)
        for name in ["model"] + ["d"] * depth:
            os.mkdir(name, dir_fd=current)
            nxt = os.open(name, os.O_RDONLY, dir_fd=current)
            os.close(current)
            current = nxt
        leaf = os.open("weights.bin", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=current)
        os.write(leaf, MODEL_BYTES)
        os.close(leaf)
        os.close(current)
        assert init(root, deep) == 0
        capsys.readouterr()
        assert main(["verify", "--manifest", str(root / MANIFEST), "--no-progress"]) == 0
        assert main(["hash", str(deep)]) == 0
        assert capsys.readouterr().out.count("weights.bin") == 1
    finally:
        _remove_chain(root, "model", "d", "weights.bin")


def _remove_chain(parent: Path, top: str, link: str, leaf: str) -> None:
    """Remove a single-child folder chain too deep for shutil.rmtree.

    pytest's own clean-up of old temporary folders recurses, so a chain left
    behind would crash a later session. Each child is moved up beside the chain
    and its emptied parent removed: short paths, no recursion, no fd pile-up.
    """
    current = parent / top
    if not current.is_dir():
        return
    step = 0
    while (current / link).is_dir():
        step += 1
        lifted = parent / f"lifted-{step}"
        os.rename(current / link, lifted)
        os.rmdir(current)
        current = lifted
    if (current / leaf).exists():
        os.unlink(current / leaf)
    os.rmdir(current)
