"""`diff OLD NEW`: which artifacts a new manifest adds, removes or changes."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from integrity.manifest import Manifest, load_manifest


@dataclass(frozen=True)
class ManifestDiff:
    added: list[str]
    removed: list[str]
    changed: list[str]
    lines: list[str]


def diff_manifests(old: Manifest, new: Manifest) -> ManifestDiff:
    old_files = {f.path: f for f in old.files}
    new_files = {f.path: f for f in new.files}
    added = sorted(set(new_files) - set(old_files))
    removed = sorted(set(old_files) - set(new_files))
    changed = sorted(p for p in set(old_files) & set(new_files) if old_files[p] != new_files[p])
    lines = [
        f"added    {p}  ({new_files[p].size} bytes, sha256 {new_files[p].sha256})" for p in added
    ]
    lines += [f"removed  {p}" for p in removed]
    for p in changed:
        before, after = old_files[p], new_files[p]
        parts = []
        if before.sha256 != after.sha256:
            parts.append(f"sha256 {before.sha256} -> {after.sha256}")
        if before.size != after.size:
            parts.append(f"size {before.size} -> {after.size} bytes")
        lines.append(f"changed  {p}  ({', '.join(parts)})")
    old_artifacts = {a.path: a for a in old.artifacts}
    new_artifacts = {a.path: a for a in new.artifacts}
    for p in sorted(set(old_artifacts) | set(new_artifacts)):
        before_a, after_a = old_artifacts.get(p), new_artifacts.get(p)
        if before_a is None and after_a is not None:
            lines.append(f"artifact added    {p}  ({after_a.type}, role {after_a.role})")
        elif after_a is None and before_a is not None:
            lines.append(f"artifact removed  {p}  ({before_a.type}, role {before_a.role})")
        elif before_a != after_a and before_a is not None and after_a is not None:
            lines.append(
                f"artifact changed  {p}  ({before_a.type}, role {before_a.role} -> "
                f"{after_a.type}, role {after_a.role})"
            )
    return ManifestDiff(added=added, removed=removed, changed=changed, lines=lines)


def run_diff(args: argparse.Namespace) -> int:
    old = load_manifest(Path(args.old))
    new = load_manifest(Path(args.new))
    result = diff_manifests(old, new)
    from integrity.text import printable, write_text

    if not result.lines:
        write_text(sys.stdout, "no differences\n")
        return 0
    write_text(sys.stdout, "".join(printable(line) + "\n" for line in result.lines))
    return 1
