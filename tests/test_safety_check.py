"""The `safety` check: which recorded files it scans and what it says about them.

Every recorded file is scanned by content whatever its role, files that appear
inside any recorded folder too, and a file the check cannot read itself is an
error of its own, never left to `digests` (which may be skipped).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from integrity.cli import main

# posix.system("true"): refused by the scanner, never run by these tests.
PAYLOAD = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
BENIGN = pickle.dumps({"weights": [1.0, 2.0]}, protocol=4)


def _init(root: Path, *args: str) -> Path:
    manifest = root / "model-integrity.json"
    assert main(["init", "--manifest", str(manifest), *args]) == 0
    return manifest


def _verify(manifest: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    report = manifest.parent / "report.json"
    code = main(["verify", "--manifest", str(manifest), "--json", str(report), *extra])
    checks = {c["id"]: c for c in json.loads(report.read_text())["checks"]}
    return code, checks["safety"]


def test_pickle_recorded_as_a_data_artifact_is_scanned(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(BENIGN)
    (tmp_path / "features.pkl").write_bytes(PAYLOAD)
    manifest = _init(
        tmp_path,
        "--model",
        str(tmp_path / "model.pkl"),
        "--artifact",
        str(tmp_path / "features.pkl"),
    )
    code, safety = _verify(manifest)
    assert code == 1
    assert safety["status"] == "fail"
    flagged = {f["path"] for f in safety["findings"] if f["level"] == "error"}
    assert flagged == {"features.pkl"}
    assert any(f["actual"] == "posix.system" for f in safety["findings"])


def test_pickle_added_to_a_data_folder_is_scanned(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(BENIGN)
    data = tmp_path / "data"
    data.mkdir()
    (data / "validation.csv").write_text("sepal_length,species\n5.1,setosa\n")
    manifest = _init(tmp_path, "--model", str(tmp_path / "model.pkl"), "--artifact", str(data))
    (data / "cache.pkl").write_bytes(PAYLOAD)
    code, safety = _verify(manifest, "--skip", "digests")
    assert code == 1
    assert {f["path"] for f in safety["findings"] if f["level"] == "error"} == {"data/cache.pkl"}


def test_text_artifacts_pass_as_not_executable(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(BENIGN)
    # CSV and requirements whose first bytes are pickle opcodes ('s' is SETITEM,
    # '(' is MARK): no unpickler gets past them, so nothing runs.
    (tmp_path / "validation.csv").write_text("sepal_length,species\n5.1,setosa\n")
    (tmp_path / "requirements.txt").write_text("(pinned)\nscikit-learn==1.5.2\n")
    manifest = _init(
        tmp_path,
        "--model",
        str(tmp_path / "model.pkl"),
        "--artifact",
        str(tmp_path / "validation.csv"),
        "--artifact",
        str(tmp_path / "requirements.txt"),
    )
    code, safety = _verify(manifest)
    assert code == 0
    assert safety["status"] == "pass"
    assert "2 files not executable" in safety["summary"]
    assert "1 file safe to load" in safety["summary"]


@pytest.mark.parametrize("skip", [[], ["--skip", "digests"]])
def test_missing_model_file_fails_safety_even_without_digests(
    tmp_path: Path, skip: list[str]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "a.pkl").write_bytes(BENIGN)
    (models / "b.pkl").write_bytes(BENIGN)
    manifest = _init(tmp_path, "--model", str(models))
    (models / "b.pkl").unlink()
    code, safety = _verify(manifest, *skip)
    assert code == 1
    assert safety["status"] == "fail"
    [finding] = [f for f in safety["findings"] if f["level"] == "error"]
    assert finding["code"] == "not-scanned"
    assert finding["path"] == "models/b.pkl"
    assert "could not be scanned" in safety["summary"]


def test_symlinked_model_file_is_not_followed_and_fails_safety(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(BENIGN)
    manifest = _init(tmp_path, "--model", str(tmp_path / "model.pkl"))
    (tmp_path / "elsewhere.pkl").write_bytes(PAYLOAD)
    (tmp_path / "model.pkl").unlink()
    (tmp_path / "model.pkl").symlink_to("elsewhere.pkl")
    code, safety = _verify(manifest, "--skip", "digests")
    assert code == 1
    [finding] = safety["findings"]
    assert finding["code"] == "not-scanned"
    # The target was never read: its global is not named anywhere.
    assert "posix" not in json.dumps(safety)


def test_unparsable_file_is_reported_as_not_shown_safe(tmp_path: Path) -> None:
    # A protocol-2 pickle cut off before STOP: nothing proves what it would do.
    (tmp_path / "model.pkl").write_bytes(BENIGN[:-1])
    manifest = _init(tmp_path, "--model", str(tmp_path / "model.pkl"))
    code, safety = _verify(manifest, "--skip", "digests")
    assert code == 1
    assert safety["summary"] == "1 of 1 file could not be shown safe"
    assert "run code" not in safety["summary"]
