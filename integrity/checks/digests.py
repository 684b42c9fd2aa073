"""`digests`: every recorded file is byte-for-byte what the manifest says.

Reports, each as its own finding naming the path: changed content, changed
size, a missing file or folder, a file added inside a recorded folder, a file
replaced by a symlink or a special file (never opened for read), a name that
now differs only in case or Unicode normalisation, and unreadable files.
Sizes are compared before hashing; files are hashed on several threads.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from typing import ClassVar

from integrity.checks import CheckContext, CheckOutcome, root_folder
from integrity.files import (
    Folders,
    PathProblem,
    describe_mode,
    display_name,
    list_names,
    lstat_path,
    open_regular,
    walk_directory,
)
from integrity.hashing import INLINE_BELOW, ForkedDigests, parallel_map, sha256_fd
from integrity.manifest import FileDigest, Manifest
from integrity.paths import collision_key, is_within
from integrity.progress import Progress, human_size
from integrity.report import Finding
from integrity.text import counted

_PROBLEM_CODES = {
    "missing": "missing",
    "symlink": "symlink",
    "special": "special-file",
    "directory": "not-a-file",
    "not-directory": "not-a-directory",
    "unreadable": "unreadable",
}


def _small(entry: FileDigest) -> bool:
    return entry.size < INLINE_BELOW


class DigestsCheck:
    id: ClassVar[str] = "digests"

    def run(self, manifest: Manifest, context: CheckContext) -> CheckOutcome:
        with root_folder(context) as root_fd:
            return self._run(manifest, context, root_fd)

    def _run(self, manifest: Manifest, context: CheckContext, root_fd: int) -> CheckOutcome:
        if context.hashing_ahead is not None:  # `verify` started it before validating
            return self._compare_all(manifest, context, root_fd, context.hashing_ahead)
        # Started first, so a helper hashes while this process lists the folders.
        ahead = ForkedDigests.start(root_fd, ((f.path, f.size) for f in manifest.files))
        try:
            return self._compare_all(manifest, context, root_fd, ahead)
        finally:
            if ahead is not None:
                ahead.close()

    def _compare_all(
        self,
        manifest: Manifest,
        context: CheckContext,
        root_fd: int,
        ahead: ForkedDigests | None,
    ) -> CheckOutcome:
        findings: list[Finding] = []
        recorded = {f.path for f in manifest.files}
        broken_dirs: list[str] = []
        names = _NameIndex(root_fd)

        for artifact in manifest.artifacts:
            if artifact.type != "directory":
                continue
            problem = _directory_problem(root_fd, artifact.path, names)
            if problem is not None:
                findings.append(problem)
                broken_dirs.append(artifact.path)
                continue
            added: list[Finding] = []
            try:
                # Streamed: only what is not recorded is kept.
                for path, found in walk_directory(root_fd, artifact.path):
                    if path not in recorded:
                        added.append(_added(path, found.stat(follow_symlinks=False).st_mode))
            except PathProblem as problem:  # changed between the lstat and the listing
                findings.append(_unreadable(artifact.path, f"cannot list folder: {problem}"))
                broken_dirs.append(artifact.path)
                continue
            except OSError as exc:
                findings.append(_unreadable(artifact.path, f"cannot list folder: {exc.strerror}"))
                broken_dirs.append(artifact.path)
                continue
            findings.extend(added)

        to_hash = manifest.files
        if broken_dirs:
            to_hash = [f for f in to_hash if not any(is_within(f.path, d) for d in broken_dirs)]
        total = sum(f.size for f in to_hash)
        verified = 0
        with (
            Progress("digests", total, enabled=context.show_progress) as progress,
            Folders(root_fd) as folders,
        ):

            def verify(entry: FileDigest) -> Finding | None:
                hashed = ahead.take(entry.path, progress.advance) if ahead else None
                if hashed is not None:
                    return _compare_hashed(entry, hashed, names)
                return _verify_file(root_fd, entry, progress.advance, names, folders)

            # Results come in input order: pair each with its entry as it arrives.
            outcomes = parallel_map(verify, to_hash, inline=_small)
            for entry, finding in zip(to_hash, outcomes, strict=True):
                if finding is None:
                    verified += 1
                    context.verified.add(entry.path)
                else:
                    findings.append(finding)

        findings.sort(key=lambda f: (f.path or "", f.code))
        checked = len(manifest.files)
        if findings:
            summary = f"{counted(len(findings), 'problem')} in {counted(checked, 'recorded file')}"
        else:
            summary = f"{counted(verified, 'file')} match ({human_size(total)})"
        return CheckOutcome(summary=summary, findings=findings)


class _NameIndex:
    """Exact directory listings, read once per folder, to tell a file's recorded
    name from the name on disk (case- or normalisation-insensitive filesystems
    open 'Model.pkl' for 'model.pkl')."""

    def __init__(self, root_fd: int) -> None:
        self._root_fd = root_fd
        self._cache: dict[str, set[str] | None] = {}
        self._lock = threading.Lock()

    def names(self, directory: str) -> set[str] | None:
        if directory in self._cache:  # read without the lock: entries are only ever added
            return self._cache[directory]
        with self._lock:  # hashing threads share the index
            if directory not in self._cache:
                self._cache[directory] = list_names(self._root_fd, directory)
            return self._cache[directory]

    def lookalike(self, path: str) -> str | None:
        """A sibling whose name differs from `path`'s only in case or normalisation."""
        directory, _, name = path.rpartition("/")
        names = self.names(directory) or set()
        key = collision_key(name)
        for other in sorted(names):
            if other != name and collision_key(other) == key:
                shown = display_name(other)
                return f"{directory}/{shown}" if directory else shown
        return None


def _verify_file(
    root_fd: int,
    entry: FileDigest,
    advance: Callable[[int], None],
    names: _NameIndex,
    folders: Folders,
) -> Finding | None:
    path = entry.path
    try:
        fd, st = open_regular(root_fd, path, folders)
    except PathProblem as problem:
        return _problem_finding(problem, names, path)
    try:
        found = _renamed(path, names) or _size_changed(entry, st.st_size)
        if found is not None:
            return found
        try:
            actual, count = sha256_fd(fd, advance, st.st_size)
        except OSError as exc:
            return _unreadable(path, f"read failed: {exc.strerror}")
    finally:
        os.close(fd)
    return _content_changed(entry, actual, count)


def _compare_hashed(
    entry: FileDigest, hashed: tuple[str, int, int], names: _NameIndex
) -> Finding | None:
    """`_verify_file` for a file a helper process opened and hashed
    (`ForkedDigests`): (hex digest, bytes read, size when opened)."""
    actual, count, size = hashed
    return (
        _renamed(entry.path, names)
        or _size_changed(entry, size)
        or _content_changed(entry, actual, count)
    )


def _renamed(path: str, names: _NameIndex) -> Finding | None:
    """On a case- or normalisation-insensitive filesystem, a recorded name opens a
    file whose name on disk differs: the folder's exact listing tells."""
    directory, _, name = path.rpartition("/")
    listing = names.names(directory)
    if listing is None or name in listing:
        return None
    other = names.lookalike(path)
    return Finding(
        level="error",
        code="renamed",
        message=f"{path}: recorded name not found; the file on disk is named "
        f"{other or 'differently'} (differs only in case or Unicode normalisation)",
        path=path,
    )


def _size_changed(entry: FileDigest, size: int) -> Finding | None:
    if size == entry.size:
        return None
    return Finding(
        level="error",
        code="size-mismatch",
        message=f"{entry.path}: size changed: expected {entry.size} bytes, "
        f"found {size} bytes (content differs)",
        path=entry.path,
        expected=str(entry.size),
        actual=str(size),
    )


def _content_changed(entry: FileDigest, actual: str, count: int) -> Finding | None:
    path = entry.path
    if count != entry.size:
        return Finding(
            level="error",
            code="size-mismatch",
            message=f"{path}: size changed while reading: expected {entry.size} bytes, "
            f"read {count} bytes",
            path=path,
            expected=str(entry.size),
            actual=str(count),
        )
    if actual != entry.sha256:
        return Finding(
            level="error",
            code="digest-mismatch",
            message=f"{path}: content changed: expected sha256 {entry.sha256}, found {actual}",
            path=path,
            expected=entry.sha256,
            actual=actual,
        )
    return None


def _problem_finding(problem: PathProblem, names: _NameIndex, path: str) -> Finding:
    """The finding for recorded `path`, which could not be opened because of
    `problem` (at `path` itself or at one of the folders leading to it)."""
    code = _PROBLEM_CODES.get(problem.kind, "unreadable")
    if problem.where == path:
        message = f"{path}: {problem.detail}"
    else:
        message = f"{path}: {problem.detail} ('{problem.where}')"
    if problem.kind == "missing":
        other = names.lookalike(problem.where)
        if other:
            # Same finding whatever the filesystem: on a case-insensitive one the
            # open succeeds and `_verify_file` reports `renamed` from the listing.
            code = "renamed"
            message += (
                f"; found '{other}', whose name differs only in case or Unicode normalisation"
            )
    return Finding(level="error", code=code, message=message, path=path)


def _directory_problem(root_fd: int, path: str, names: _NameIndex) -> Finding | None:
    try:
        mode = lstat_path(root_fd, path).st_mode
    except PathProblem as problem:
        if problem.kind == "missing" and problem.where == path:
            problem = PathProblem("missing", path, "recorded folder is missing")
        return _problem_finding(problem, names, path)
    if stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        return Finding(
            level="error",
            code="symlink",
            message=f"{path}: recorded folder was replaced by a symlink",
            path=path,
        )
    return Finding(
        level="error",
        code="not-a-directory",
        message=f"{path}: recorded folder was replaced by {describe_mode(mode)}",
        path=path,
    )


def _added(path: str, mode: int) -> Finding:
    what = "file"
    if not stat.S_ISREG(mode):
        what = describe_mode(mode).removeprefix("a ").removeprefix("an ")
    shown = display_name(path)
    return Finding(
        level="error",
        code="added",
        message=f"{shown}: {what} added inside a recorded folder; it is not in the manifest",
        path=shown,
    )


def _unreadable(path: str, detail: str) -> Finding:
    return Finding(level="error", code="unreadable", message=f"{path}: {detail}", path=path)
