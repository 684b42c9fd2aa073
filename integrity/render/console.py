"""Console renderer: the verdict first, then per check what failed and why.

Colour only when asked (a terminal without NO_COLOR). Control characters in
messages (file names on disk may hold any) are escaped so output cannot drive
the terminal or forge log lines.
"""

from __future__ import annotations

from integrity.report import CheckResult, Report
from integrity.text import counted, printable

_STYLE = {"pass": "32", "fail": "31", "error": "31", "warn": "33", "skip": "2"}
_LEVEL_STYLE = {"error": "31", "warning": "33", "notice": "36"}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def render_console(report: Report, *, color: bool = False) -> str:
    lines = [_verdict(report, color), ""]
    width = max((len(c.id) for c in report.checks), default=0)
    for check in report.checks:
        lines.extend(_check_lines(check, width, color))
    return "\n".join(lines) + "\n"


def _verdict(report: Report, color: bool) -> str:
    failed = report.failed_checks
    ran = [c for c in report.checks if c.status != "skip"]
    if report.status == "pass":
        head = _paint("PASS", "1;32", color)
        text = f"integrity proven: {counted(len(ran), 'check')} passed"
        warned = [c.id for c in report.checks if c.status == "warn"]
        if warned:
            text += f" (warnings: {', '.join(warned)})"
    else:
        head = _paint("FAIL", "1;31", color)
        text = f"integrity not proven: {', '.join(failed)} failed"
    return f"{head}  {text}  [{printable(report.manifest)}, {report.duration_s:.2f} s]"


def _check_lines(check: CheckResult, width: int, color: bool) -> list[str]:
    label = _paint(f"{check.status.upper():<5}", _STYLE.get(check.status, "0"), color)
    lines = [f"  {label} {check.id:<{width}}  {printable(check.summary)}"]
    for finding in check.findings:
        level = _paint(f"{finding.level:<7}", _LEVEL_STYLE[finding.level], color)
        lines.append(f"          {level} {printable(finding.message)}")
    return lines
