"""`scan PATH...`: the static safety scan alone. Loads nothing, imports nothing it names."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from integrity.errors import UserError
from integrity.safety.allowlist import AllowList
from integrity.safety.scanner import ScanResult, scan_path
from integrity.text import printable, write_text


def _expand(paths: list[str]) -> list[Path]:
    """Files named, and every file inside folders named (symlinks are scanned as
    what they are: refused, never followed)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise UserError(f"{given}: no such file or folder") from None
        except OSError as exc:
            raise UserError(f"{given}: cannot read: {exc.strerror}") from None
        if stat.S_ISDIR(mode):
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(Path(folder) / name for name in sorted(files))
        else:
            found.append(path)
    return found


def _render(result: ScanResult) -> str:
    name = printable(result.path)
    if result.safe:
        used = len({(g.module, g.name) for g in result.globals_used})
        what = (
            "not an executable format: nothing runs when it is read"
            if result.format in ("not-pickle", "empty")
            else f"{result.format}, {used} allowed global{'s' if used != 1 else ''}"
        )
        lines = [f"safe    {name}  ({what})"]
    else:
        lines = [f"UNSAFE  {name}  ({result.format})"]
        for finding in result.findings:
            member = f" [{printable(finding.member)}]" if finding.member else ""
            at = f" {finding.where}" if finding.where else ""
            lines.append(f"          {finding.code}{member}{at}: {printable(finding.message)}")
    for qualified, reason in sorted(result.extended.items()):
        lines.append(f"          allowed by the manifest: {qualified}: {printable(reason)}")
    return "\n".join(lines) + "\n"


def run_scan(args: argparse.Namespace) -> int:
    files = _expand(args.paths)
    allowlist = AllowList()
    unsafe = 0
    for path in files:
        try:
            result = scan_path(path, allowlist)
        except OSError as exc:
            raise UserError(f"{path}: cannot read: {exc.strerror}") from None
        unsafe += not result.safe
        write_text(sys.stdout, _render(result))
    return 1 if unsafe else 0
