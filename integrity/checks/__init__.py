"""The checks: each a unit of the same shape, manifest and context in, findings out.

A check implements `Check`: an `id` (one of the contract's check ids) and
`run(manifest, context) -> CheckOutcome`. It reports what it found as findings;
the runner derives the status (fail on an error finding, warn on a warning).
A check whose own work cannot finish raises `CheckIncomplete`: status `error`,
which fails the run. Checks run in registry order; a later check may rely on an
earlier one through `context.verified` (for example, load only files whose
digest was proven).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from integrity.files import open_root

if TYPE_CHECKING:  # not at run time: `verify` imports this before pydantic
    from integrity.hashing import ForkedDigests
    from integrity.manifest import Manifest
    from integrity.report import Finding


@dataclass
class CheckContext:
    """What a check may use besides the manifest."""

    manifest_path: Path
    root: Path
    show_progress: bool = True
    # Manifest paths whose content matched their recorded digest in this run.
    verified: set[str] = field(default_factory=set)
    # Files already being hashed for the digests check (`verify` starts it).
    hashing_ahead: ForkedDigests | None = None


@dataclass
class CheckOutcome:
    summary: str
    findings: list[Finding] = field(default_factory=list)


class CheckIncomplete(Exception):
    """The check's own work could not finish; the message says why."""


@contextmanager
def root_folder(context: CheckContext) -> Iterator[int]:
    """A descriptor for the manifest's folder, which every recorded path is opened
    beneath; the check cannot finish without it."""
    try:
        root_fd = open_root(context.root)
    except OSError as exc:
        raise CheckIncomplete(f"cannot open {context.root}: {exc.strerror}") from None
    try:
        yield root_fd
    finally:
        os.close(root_fd)


class Check(Protocol):
    id: ClassVar[str]

    def run(self, manifest: Manifest, context: CheckContext) -> CheckOutcome: ...


# Every implemented check id, in run order, and the module that holds it: a
# check is imported only when it runs (`--only digests` never loads the scanner).
CHECK_MODULES = {
    "digests": ("integrity.checks.digests", "DigestsCheck"),
    "safety": ("integrity.checks.safety", "SafetyCheck"),
}


def registry() -> list[str]:
    """Every implemented check id, in the order they run."""
    return list(CHECK_MODULES)


def load_check(check_id: str) -> Check:
    import importlib

    module, name = CHECK_MODULES[check_id]
    check: Check = getattr(importlib.import_module(module), name)()
    return check
