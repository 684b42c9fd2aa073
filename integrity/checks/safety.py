"""`safety`: no model file can run code when loaded; scanned statically, loaded never.

Scans every recorded model file, and any file that appeared inside a model
folder, with the static scanner (`integrity.safety`). Globals the manifest
allows beyond the built-in list are reported as notices with their reasons,
so a reviewer sees every widening of the policy.
"""

from __future__ import annotations

import contextlib
import os
from typing import ClassVar

from integrity.checks import CheckContext, CheckOutcome, root_folder
from integrity.files import PathProblem, list_directory, open_regular
from integrity.manifest import Manifest
from integrity.report import Finding
from integrity.safety.allowlist import AllowList
from integrity.safety.scanner import ScanResult, scan_fd
from integrity.text import counted


def allowlist_for(manifest: Manifest) -> AllowList:
    entries = manifest.safety.allow if manifest.safety else []
    return AllowList({(g.module, g.name): g.reason for g in entries})


def model_files(manifest: Manifest, root_fd: int) -> list[str]:
    """Recorded model files, plus whatever now lies in a model folder."""
    paths = set(manifest.model_paths())
    for artifact in manifest.artifacts:
        if artifact.role == "model" and artifact.type == "directory":
            # A missing or replaced folder is the digests check's finding.
            with contextlib.suppress(OSError, PathProblem):
                paths.update(list_directory(root_fd, artifact.path))
    return sorted(paths)


def scan_findings(path: str, scan: ScanResult) -> list[Finding]:
    findings = []
    for item in scan.findings:
        where = f"{path}" + (f" (member {item.member})" if item.member else "")
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


class SafetyCheck:
    id: ClassVar[str] = "safety"

    def run(self, manifest: Manifest, context: CheckContext) -> CheckOutcome:
        allowlist = allowlist_for(manifest)
        findings: list[Finding] = []
        scanned: list[str] = []
        formats: set[str] = set()
        with root_folder(context) as root_fd:
            for path in model_files(manifest, root_fd):
                try:
                    fd, _ = open_regular(root_fd, path)
                except PathProblem:
                    continue  # missing, symlink, special file: reported by digests, never read
                try:
                    scan = scan_fd(fd, path, allowlist)
                finally:
                    os.close(fd)
                scanned.append(path)
                formats.add(scan.format)
                findings.extend(scan_findings(path, scan))
        unsafe = sorted({f.path for f in findings if f.level == "error" and f.path})
        if unsafe:
            summary = f"{len(unsafe)} of {len(scanned)} model files would run code when loaded"
        elif not scanned:
            summary = "no model file could be scanned"
            findings.append(
                Finding(
                    level="error",
                    code="nothing-scanned",
                    message="no recorded model file is present to scan",
                )
            )
        else:
            summary = (
                f"{counted(len(scanned), 'model file')} safe to load ({', '.join(sorted(formats))})"
            )
        return CheckOutcome(summary=summary, findings=findings)
