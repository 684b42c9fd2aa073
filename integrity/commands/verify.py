"""`verify`: load the manifest, run the selected checks, render the report, exit 0/1.

The files the manifest names start being hashed as soon as its JSON is read,
before pydantic is imported and the manifest validated: that start-up is then
spent while the files are read (`hashing.ForkedDigests`). So this module imports
nothing that imports pydantic until the hashing has started.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from integrity.checks import CheckContext, CheckIncomplete, load_check, registry
from integrity.errors import UserError
from integrity.paths import is_within
from integrity.text import is_terminal, write_text

if TYPE_CHECKING:
    from integrity.hashing import ForkedDigests
    from integrity.manifest import Manifest
    from integrity.report import Report


def select_checks(known: list[str], only: list[str] | None, skip: list[str] | None) -> list[str]:
    """The ids to run, in registry order; unknown ids are a usage error."""
    for option, ids in (("--only", only), ("--skip", skip)):
        for check_id in ids or []:
            if check_id not in known:
                raise UserError(
                    f"{option}: unknown check {check_id!r} (available: {', '.join(known)})"
                )
    selected = [c for c in known if (only is None or c in only)]
    selected = [c for c in selected if c not in (skip or [])]
    if not selected:
        # An integrity tool never passes having checked nothing.
        raise UserError("--only/--skip leave no check to run")
    return selected


def run_checks(
    manifest_path: Path,
    only: list[str] | None = None,
    skip: list[str] | None = None,
    *,
    show_progress: bool = True,
    manifest: Manifest | None = None,
    hashing_ahead: ForkedDigests | None = None,
) -> Report:
    """Run the selected checks; `manifest`, when given, is `manifest_path` already
    loaded, and `hashing_ahead` files of it already being hashed."""
    from integrity.manifest import load_manifest, manifest_root
    from integrity.report import CheckResult, Report, overall_status, status_from_findings

    started = time.monotonic()
    checks = registry()
    selected = select_checks(checks, only, skip)
    if manifest is None:
        manifest = load_manifest(manifest_path)
    context = CheckContext(
        manifest_path=manifest_path,
        root=manifest_root(manifest_path),
        show_progress=show_progress,
        hashing_ahead=hashing_ahead,
    )
    results: list[CheckResult] = []
    for check_id in checks:
        if check_id not in selected:
            reason = "--skip" if skip and check_id in skip else "--only"
            results.append(CheckResult(id=check_id, status="skip", summary=f"skipped by {reason}"))
            continue
        check_started = time.monotonic()
        try:
            outcome = load_check(check_id).run(manifest, context)
        except CheckIncomplete as exc:
            results.append(
                CheckResult(
                    id=check_id,
                    status="error",
                    summary=f"could not finish: {exc}",
                    duration_s=round(time.monotonic() - check_started, 3),
                )
            )
            continue
        results.append(
            CheckResult(
                id=check_id,
                status=status_from_findings(outcome.findings),
                summary=outcome.summary,
                findings=outcome.findings,
                duration_s=round(time.monotonic() - check_started, 3),
            )
        )
    return Report(
        status=overall_status(results),
        manifest=str(manifest_path),
        checks=results,
        duration_s=round(time.monotonic() - started, 3),
    )


def run_verify(args: argparse.Namespace) -> int:
    from integrity.manifest_json import parse_manifest_json, read_manifest_bytes

    manifest_path = Path(args.manifest)
    outputs = [Path(p) for p in [args.json] if p]
    selected = select_checks(registry(), args.only, args.skip)  # usage errors first
    _refuse_clobbering(outputs, manifest_path)
    raw = parse_manifest_json(read_manifest_bytes(manifest_path), str(manifest_path))
    ahead = _start_hashing(raw, manifest_path) if "digests" in selected else None
    try:
        from integrity.manifest import manifest_root, validate_manifest

        manifest = validate_manifest(raw, manifest_path)
        del raw
        _refuse_writing_artifacts(outputs, manifest, manifest_root(manifest_path))
        report = run_checks(
            manifest_path,
            args.only,
            args.skip,
            show_progress=not args.no_progress,
            manifest=manifest,
            hashing_ahead=ahead,
        )
    finally:
        if ahead is not None:
            ahead.close()  # stops the hashing at once when validation failed
    from integrity.render.console import render_console
    from integrity.render.json_report import write_json_report

    if args.json:
        write_json_report(report, Path(args.json))
    write_text(sys.stdout, render_console(report, color=_use_color(sys.stdout)))
    return 0 if report.status == "pass" else 1


def _start_hashing(raw: dict[str, Any], manifest_path: Path) -> ForkedDigests | None:
    """Start hashing the files the not yet validated manifest names (each path a
    valid manifest path, opened beneath its folder, never through a symlink)."""
    from integrity.files import open_root
    from integrity.hashing import ForkedDigests
    from integrity.manifest_json import named_files

    try:
        root_fd = open_root(os.path.dirname(os.path.abspath(manifest_path)))
    except OSError:
        return None  # the digests check reports it
    try:
        return ForkedDigests.start(root_fd, named_files(raw))
    finally:
        os.close(root_fd)  # the helpers hold descriptors of their own


def _refuse_clobbering(outputs: list[Path], manifest_path: Path) -> None:
    """A report never overwrites the manifest (a user's file) or another report,
    and its folder must exist (found out before the checks run, not after)."""
    seen: set[str] = set()
    manifest_real = os.path.realpath(manifest_path)
    for output in outputs:
        real = os.path.realpath(output)
        if real == manifest_real:
            raise UserError(f"{output}: is the manifest; write the report somewhere else")
        if real in seen:
            raise UserError(f"{output}: named for two reports")
        if os.path.isdir(output):
            raise UserError(f"{output}: is a directory; give a file path for the report")
        if not os.path.isdir(os.path.dirname(real)):
            raise UserError(f"{output}: folder {os.path.dirname(real)} does not exist")
        seen.add(real)


def _refuse_writing_artifacts(outputs: list[Path], manifest: Manifest, root: Path) -> None:
    """A report never overwrites a recorded artifact (the model itself) nor lands
    inside a recorded folder (the next run would find it there as an added file)."""
    root_real = os.path.realpath(root)
    for output in outputs:
        real = os.path.realpath(output)
        if real != root_real and not real.startswith(root_real + os.sep):
            continue
        relative = os.path.relpath(real, root_real).replace(os.sep, "/")
        for artifact in manifest.artifacts:
            if relative == artifact.path:
                raise UserError(
                    f"{output}: is the recorded artifact {artifact.path!r}; "
                    "write the report somewhere else"
                )
            if artifact.type == "directory" and is_within(relative, artifact.path):
                raise UserError(
                    f"{output}: is inside the recorded folder {artifact.path!r}; "
                    "write the report somewhere else"
                )


def _use_color(stream: object) -> bool:
    return not os.environ.get("NO_COLOR") and is_terminal(stream)
