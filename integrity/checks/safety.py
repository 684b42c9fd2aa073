"""`safety`: no recorded file can run code when loaded; scanned statically, loaded never.

Every recorded file is scanned by content, whatever its role: a pickle recorded
as data is loaded by someone's code too, and a file's name or role says nothing
about what a loader will do with it. Files that now lie inside a recorded
folder are scanned as well. What the scanner finds not executable (CSV, text,
images) passes; what might hold a pickle it cannot read never does.

The check proves what it reads itself: a recorded file it cannot open (missing,
replaced by a symlink or a special file) is an error here too, not left to
`digests`, which may have been skipped. Globals the manifest allows beyond the
built-in list are reported as notices with their reasons, so a reviewer sees
every widening of the policy.
"""

from __future__ import annotations

import os
from typing import ClassVar

from integrity.checks import CheckContext, CheckOutcome, root_folder
from integrity.files import Folders, PathProblem, list_directory, open_regular
from integrity.manifest import Manifest
from integrity.report import Finding
from integrity.safety.allowlist import AllowList
from integrity.safety.scanner import ScanResult, scan_fd
from integrity.text import counted

# Formats the scanner proved nothing runs from.
NOT_EXECUTABLE = ("not-pickle", "empty")


def allowlist_for(manifest: Manifest) -> AllowList:
    entries = manifest.safety.allow if manifest.safety else []
    return AllowList({(g.module, g.name): g.reason for g in entries})


def files_to_scan(manifest: Manifest, root_fd: int) -> tuple[list[str], list[Finding]]:
    """Every recorded file, plus whatever now lies in a recorded folder; and a
    finding for each recorded folder that cannot be listed."""
    paths = {f.path for f in manifest.files}
    problems: list[Finding] = []
    for artifact in manifest.artifacts:
        if artifact.type != "directory":
            continue
        try:
            paths.update(list_directory(root_fd, artifact.path))
        except (OSError, PathProblem) as exc:
            detail = exc.detail if isinstance(exc, PathProblem) else exc.strerror
            problems.append(
                Finding(
                    level="error",
                    code="not-scanned",
                    message=f"{artifact.path}: folder cannot be listed, its files cannot be "
                    f"scanned: {detail}",
                    path=artifact.path,
                )
            )
    return sorted(paths), problems


def scan_findings(path: str, scan: ScanResult) -> list[Finding]:
    findings = []
    for item in scan.findings:
        where = path + (f" (member {item.member})" if item.member else "")
        at = f" at {item.where}" if item.where else ""
        findings.append(
            Finding(
                level="error",
                code=item.code,
                message=f"{where}{at}: {item.message}",
                path=path,
                actual=item.global_name,
            )
        )
    for qualified, reason in sorted(scan.extended.items()):
        findings.append(
            Finding(
                level="notice",
                code="allowed-by-manifest",
                message=f"{path}: loads {qualified}, allowed by the manifest: {reason}",
                path=path,
                actual=qualified,
            )
        )
    return findings


def _summary(scanned: list[ScanResult], unsafe: int, unscanned: int) -> str:
    if unsafe or unscanned:
        parts = []
        if unsafe:
            parts.append(f"{unsafe} of {counted(len(scanned), 'file')} could not be shown safe")
        if unscanned:
            parts.append(f"{counted(unscanned, 'recorded file')} could not be scanned")
        return "; ".join(parts)
    executable = sorted({r.format for r in scanned if r.format not in NOT_EXECUTABLE})
    inert = sum(r.format in NOT_EXECUTABLE for r in scanned)
    loadable = len(scanned) - inert
    parts = []
    if loadable:
        parts.append(f"{counted(loadable, 'file')} safe to load ({', '.join(executable)})")
    if inert:
        parts.append(f"{counted(inert, 'file')} not executable")
    return "; ".join(parts)


class SafetyCheck:
    id: ClassVar[str] = "safety"

    def run(self, manifest: Manifest, context: CheckContext) -> CheckOutcome:
        allowlist = allowlist_for(manifest)
        findings: list[Finding] = []
        scanned: list[ScanResult] = []
        unscanned = 0
        # Each folder opened once for all its files, as digests does.
        with root_folder(context) as root_fd, Folders(root_fd) as folders:
            paths, findings = files_to_scan(manifest, root_fd)
            unscanned = len(findings)
            for path in paths:
                try:
                    fd, _ = open_regular(root_fd, path, folders)
                except PathProblem as problem:
                    # Never read through a symlink or a special file; but say so.
                    unscanned += 1
                    findings.append(
                        Finding(
                            level="error",
                            code="not-scanned",
                            message=f"{path}: cannot be scanned: {problem.detail}",
                            path=path,
                        )
                    )
                    continue
                try:
                    scan = scan_fd(fd, path, allowlist)
                finally:
                    os.close(fd)
                scanned.append(scan)
                findings.extend(scan_findings(path, scan))
        unsafe = sum(not scan.safe for scan in scanned)
        if not scanned and not unscanned:
            findings.append(
                Finding(level="error", code="nothing-scanned", message="no file is recorded")
            )
            return CheckOutcome(summary="no file to scan", findings=findings)
        return CheckOutcome(summary=_summary(scanned, unsafe, unscanned), findings=findings)
