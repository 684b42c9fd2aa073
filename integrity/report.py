"""The report model: one verdict, rendered by every output format (console, JSON, ...)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Validators are built when a model is first used, not at import: a run that
# finds nothing never builds Finding's own, and start-up stays shorter.
_DEFER = ConfigDict(extra="forbid", defer_build=True)

REPORT_SCHEMA = "model-integrity-report/1"

CheckStatus = Literal["pass", "fail", "warn", "skip", "error"]
Level = Literal["error", "warning", "notice"]


class Finding(BaseModel):
    """One thing a check found, tied to a file (and line) where there is one."""

    model_config = _DEFER

    level: Level
    code: str = Field(
        description="Stable identifier of the kind of finding, e.g. 'digest-mismatch'."
    )
    message: str
    path: str | None = None
    line: int | None = None
    expected: str | None = None
    actual: str | None = None


class CheckResult(BaseModel):
    model_config = _DEFER

    id: str
    status: CheckStatus
    summary: str
    findings: list[Finding] = Field(default_factory=list)
    duration_s: float = 0.0


class Metric(BaseModel):
    model_config = _DEFER

    value: float
    baseline: float | None = None
    threshold: str | None = None


class Report(BaseModel):
    schema_: str = Field(default=REPORT_SCHEMA, alias="schema")
    status: Literal["pass", "fail"]
    manifest: str
    checks: list[CheckResult]
    metrics: dict[str, Metric] = Field(default_factory=dict)
    duration_s: float = 0.0

    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)

    @property
    def failed_checks(self) -> list[str]:
        return [c.id for c in self.checks if c.status in ("fail", "error")]


def status_from_findings(findings: list[Finding]) -> CheckStatus:
    """fail on any error finding, warn on any warning, else pass."""
    levels = {f.level for f in findings}
    if "error" in levels:
        return "fail"
    if "warning" in levels:
        return "warn"
    return "pass"


def overall_status(checks: list[CheckResult]) -> Literal["pass", "fail"]:
    return "fail" if any(c.status in ("fail", "error") for c in checks) else "pass"
