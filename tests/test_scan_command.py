"""`model-integrity scan`: exit 0 when every file is safe, 1 when any is not, 2 on bad input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from integrity.cli import main

EXAMPLE_MODEL = Path(__file__).resolve().parents[1] / "examples" / "iris" / "model.joblib"


def test_example_model_is_safe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(EXAMPLE_MODEL)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("safe") and "model.joblib" in out


def test_folder_is_expanded_and_one_unsafe_file_fails_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ok.pkl").write_bytes(pickle.dumps({"a": [1, 2.5, "x"]}, protocol=4))
    (tmp_path / "notes.txt").write_text("just text\n")
    (tmp_path / "sub" / "evil.pkl").write_bytes(
        b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R."
    )
    assert main(["scan", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    verdicts = {line.split()[1]: line.split()[0] for line in lines if not line.startswith(" ")}
    assert verdicts == {
        str(tmp_path / "notes.txt"): "safe",
        str(tmp_path / "sub" / "evil.pkl"): "UNSAFE",
        str(tmp_path / "sub" / "ok.pkl"): "safe",
    }
    assert any("posix.system" in line and "shell command" in line for line in lines)


def test_missing_path_is_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(tmp_path / "absent.joblib")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.joblib" in err[0]


def test_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "model.pkl"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "integrity", "scan", str(fifo)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "UNSAFE" in result.stdout and "FIFO" in result.stdout


def test_symlinked_folder_inside_a_scanned_folder_is_refused_not_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.pkl").write_bytes(b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.")
    models = tmp_path / "models"
    models.mkdir()
    (models / "ok.pkl").write_bytes(pickle.dumps([1, 2], protocol=4))
    (models / "linked").symlink_to(outside)
    assert main(["scan", str(models)]) == 1
    out = capsys.readouterr().out
    verdicts = {line.split()[1]: line.split()[0] for line in out.splitlines() if line[:1] != " "}
    assert verdicts == {str(models / "linked"): "UNSAFE", str(models / "ok.pkl"): "safe"}
    assert "symlink" in out and "evil.pkl" not in out


def test_unreadable_subfolder_is_exit_2_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    refuse_opening: Callable[[Path], list[str]],
) -> None:
    models = tmp_path / "models"
    (models / "locked").mkdir(parents=True)
    (models / "ok.pkl").write_bytes(pickle.dumps([1, 2], protocol=4))
    (models / "locked" / "hidden.pkl").write_bytes(pickle.dumps([3], protocol=4))
    refused = refuse_opening(models / "locked")
    assert main(["scan", str(models)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert refused and len(err) == 1
    assert str(models / "locked") in err[0] and "Permission denied" in err[0]
    assert "safe" not in captured.out  # nothing is called safe when part was not read
