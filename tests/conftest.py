"""Shared fixtures: a folder holding one valid model artifact and its manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

MODEL_BYTES = b"not really a model, but bytes to hash\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a model file `model.bin` (no manifest yet)."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "model.bin").write_bytes(MODEL_BYTES)
    return folder


@pytest.fixture
def valid_manifest() -> dict[str, Any]:
    """A manifest (as JSON data) that records `project`'s model file correctly."""
    return {
        "version": 1,
        "artifacts": [{"path": "model.bin", "type": "file", "role": "model"}],
        "files": [
            {
                "path": "model.bin",
                "sha256": hashlib.sha256(MODEL_BYTES).hexdigest(),
                "size": len(MODEL_BYTES),
            }
        ],
    }
