"""JSON report (`--json PATH`), per the contract's `model-integrity-report/1` schema."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from integrity.errors import UserError
from integrity.report import Report


def render_json(report: Report) -> str:
    return report.model_dump_json(by_alias=True, indent=2) + "\n"


def write_report_file(text: str, path: Path) -> None:
    """Write a report atomically (a reader never sees half a report)."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise UserError(f"{path}: cannot write report: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise UserError(f"{path}: cannot write report: {exc.strerror}") from None


def write_json_report(report: Report, path: Path) -> None:
    write_report_file(render_json(report), path)
