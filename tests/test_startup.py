"""Start-up of `verify --only digests`: it imports what checking digests needs and
nothing else, and builds only the validators it uses.

Run in a fresh interpreter each, since the test process has imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from integrity.cli import main

# What `verify --only digests` on a tree of small files must not import: the
# safety scanner and its check, the other commands, the ML libraries, and the
# thread pool (small files are hashed on the main thread).
NOT_NEEDED = (
    "integrity.safety",
    "integrity.checks.safety",
    "integrity.commands.init",
    "integrity.commands.hash",
    "integrity.commands.scan",
    "integrity.sha256sum",
    "concurrent.futures",
    "asyncio",
    "numpy",
    "pandas",
    "sklearn",
    "scipy",
    "joblib",
)

PROBE = textwrap.dedent(
    """
    import json, sys
    from integrity.cli import main
    code = main(sys.argv[1:])
    import integrity.manifest as manifest, integrity.report as report
    built = {
        cls.__name__: bool(cls.__pydantic_complete__)
        for cls in (
            manifest.Manifest, manifest.Artifact, manifest.FileDigest,
            manifest.SafetyPolicy, manifest.AllowedGlobal, report.Finding,
        )
    }
    sys.stderr.write(json.dumps({"code": code, "modules": sorted(sys.modules), "built": built}))
    """
)


def _probe(tmp_path: Path, *argv: str) -> dict[str, object]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.run(
        [sys.executable, str(script), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    result: dict[str, object] = json.loads(proc.stderr.strip().splitlines()[-1])
    return result


@pytest.fixture
def small_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "a.bin").write_bytes(b"a" * 4096)
    (model / "sub" / "b.bin").write_bytes(b"b" * 100)
    manifest = tmp_path / "model-integrity.json"
    assert main(["init", "--manifest", str(manifest), "--model", str(model)]) == 0
    capsys.readouterr()
    return tmp_path


def _imported(modules: object, name: str) -> bool:
    assert isinstance(modules, list)
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_verify_only_digests_imports_nothing_it_does_not_need(small_tree: Path) -> None:
    result = _probe(small_tree, "verify", "--only", "digests", "--no-progress")
    assert result["code"] == 0
    # The control: what it does need is there.
    assert _imported(result["modules"], "integrity.checks.digests")
    assert [n for n in NOT_NEEDED if _imported(result["modules"], n)] == []


def test_verify_builds_only_the_manifest_validator(small_tree: Path) -> None:
    """Sub-models are part of Manifest's validator; their own are deferred until
    something constructs them (init), and Finding's until there is a finding."""
    result = _probe(small_tree, "verify", "--only", "digests", "--no-progress")
    assert result["built"] == {
        "Manifest": True,
        "Artifact": False,
        "FileDigest": False,
        "SafetyPolicy": False,
        "AllowedGlobal": False,
        "Finding": False,
    }


def test_a_finding_builds_its_validator_when_needed(small_tree: Path) -> None:
    (small_tree / "model" / "a.bin").write_bytes(b"x" * 4096)
    result = _probe(small_tree, "verify", "--only", "digests", "--no-progress")
    assert result["code"] == 1
    built = result["built"]
    assert isinstance(built, dict)
    assert built["Finding"] is True


def test_a_large_file_is_hashed_on_the_thread_pool(small_tree: Path) -> None:
    """The control for the thread-pool import above: a file past the inline
    threshold goes to the workers (where there is more than one core to use)."""
    from integrity.hashing import INLINE_BELOW, default_workers

    (small_tree / "model" / "big.bin").write_bytes(b"z" * INLINE_BELOW)
    manifest = str(small_tree / "model-integrity.json")
    model = str(small_tree / "model")
    assert main(["init", "--force", "--manifest", manifest, "--model", model]) == 0
    result = _probe(small_tree, "verify", "--only", "digests", "--no-progress")
    assert result["code"] == 0
    assert _imported(result["modules"], "concurrent.futures") == (default_workers() > 1)
