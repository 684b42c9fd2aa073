"""`scan PATH...`: the static safety scan alone. Loads nothing, imports nothing it names."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from integrity.errors import UserError
from integrity.files import Unreadable, open_root, walk_tree
from integrity.safety.allowlist import AllowList
from integrity.safety.scanner import ScanResult, scan_path
from integrity.text import counted, printable, write_text


def _expand(paths: list[str]) -> list[Path]:
    """Files named, and every entry inside folders named (symlinks and special
    files are scanned as what they are: refused, never followed or opened)."""
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
            found.extend(path / rel for rel in _folder_entries(path))
        else:
            found.append(path)
    return found


def _folder_entries(folder: Path) -> list[str]:
    """Every entry beneath `folder` but its subfolders; a part that cannot be read
    is an error, never a silent gap in the scan."""
    try:
        root = open_root(folder)
    except OSError as exc:
        raise UserError(f"{folder}: cannot open folder: {exc.strerror}") from None
    entries: list[str] = []
    try:
        for rel, item in walk_tree(root):
            if isinstance(item, Unreadable):
                where = folder / rel if rel else folder
                raise UserError(f"{where}: cannot {item.action}: {item.error.strerror}")
            entries.append(rel)
    finally:
        os.close(root)
    return entries


def _render(result: ScanResult) -> str:
    name = printable(result.path)
    if result.safe:
        used = len({(g.module, g.name) for g in result.globals_used})
        what = (
            "not an executable format: nothing runs when it is read"
            if result.format in ("not-pickle", "empty")
            else f"{result.format}, {counted(used, 'allowed global')}"
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
