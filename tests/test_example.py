"""The bundled example verifies as committed, and a tampered copy is caught."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from integrity.cli import main
from integrity.manifest import dump_manifest, load_manifest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "iris"


def verify(folder: Path, report: Path) -> tuple[int, dict[str, Any]]:
    """Exit code and JSON report of `verify` on the manifest in `folder`."""
    code = main(
        [
            "verify",
            "--manifest",
            str(folder / "model-integrity.json"),
            "--json",
            str(report),
            "--no-progress",
        ]
    )
    data: dict[str, Any] = json.loads(report.read_text())
    return code, data


def test_example_as_committed_passes(tmp_path: Path) -> None:
    code, data = verify(EXAMPLE, tmp_path / "report.json")
    assert code == 0
    assert data["status"] == "pass"
    assert [c["id"] for c in data["checks"]] == ["digests", "safety"]
    assert all(c["status"] == "pass" for c in data["checks"])


def test_example_manifest_is_canonical() -> None:
    path = EXAMPLE / "model-integrity.json"
    assert dump_manifest(load_manifest(path)) == path.read_text(encoding="utf-8")


def test_demo_script_passes_then_catches_the_tampered_copy() -> None:
    demo = EXAMPLE.parent / "demo.sh"
    result = subprocess.run(
        ["sh", str(demo), sys.executable], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    # The tampered run names the model file and says its content changed.
    tampered = result.stdout.split("== 2.")[1]
    assert "FAIL" in tampered
    assert "model.joblib" in tampered and "content changed" in tampered


def test_tampered_validation_set_is_named(tmp_path: Path) -> None:
    copy = tmp_path / "iris"
    shutil.copytree(EXAMPLE, copy)
    csv = copy / "validation.csv"
    csv.write_text(csv.read_text().replace("5.1,3.5", "5.1,3.6", 1))
    code, data = verify(copy, tmp_path / "report.json")
    assert code == 1
    findings = data["checks"][0]["findings"]
    assert [(f["path"], f["code"]) for f in findings] == [("validation.csv", "digest-mismatch")]
