"""Shared fixtures: a folder holding one valid model artifact and its manifest, and
a way to make opening one file fail."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
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


@pytest.fixture
def refuse_opening(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], list[str]]:
    """Make `os.open` refuse, with EACCES, and record any open that would reach the
    given file, however it is spelled (root reads through chmod 000).

    Honours O_NOFOLLOW as the kernel does: such an open of a symlink does not
    reach its target. Returns the list of refused opens, filled as the run goes.
    """
    real_open = os.open
    forbidden: set[tuple[int, int]] = set()
    refused: list[str] = []

    def spy(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        follow = not (flags & getattr(os, "O_NOFOLLOW", 0))
        try:
            st = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) in forbidden:
            refused.append(os.fsdecode(path))
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def forbid(target: Path) -> list[str]:
        st = os.stat(target)
        forbidden.add((st.st_dev, st.st_ino))
        return refused

    monkeypatch.setattr(os, "open", spy)
    return forbid


@pytest.fixture(scope="session")
def benign_models() -> list[tuple[str, object]]:
    """The benign corpus's fitted estimators (tests/safety_corpus.py), fitted once a
    session: the benign and the fuzz tests only dump them, never change them."""
    from safety_corpus import benign_estimators

    return benign_estimators()
