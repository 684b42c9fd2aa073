"""JSON report (`--json PATH`), per the contract's `model-integrity-report/1` schema."""

from __future__ import annotations

from pathlib import Path

from integrity.errors import UserError
from integrity.files import write_file_atomically
from integrity.report import Report


def render_json(report: Report) -> str:
    return report.model_dump_json(by_alias=True, indent=2) + "\n"


def write_report_file(text: str, path: Path) -> None:
    """Write a report atomically (a reader never sees half a report)."""
    try:
        write_file_atomically(path, text.encode("utf-8"), overwrite=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot write report: {exc.strerror}") from None


def write_json_report(report: Report, path: Path) -> None:
    write_report_file(render_json(report), path)
