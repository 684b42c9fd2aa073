"""`init`: record every artifact's digest in a new manifest (never overwriting without --force).

pydantic and the manifest models are imported only once the files are being
hashed (`hash_files`), so that import overlaps the hashing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from integrity.errors import UserError
from integrity.files import (
    Folders,
    PathProblem,
    describe_mode,
    lstat_path,
    open_regular,
    open_root,
    walk_directory,
)
from integrity.hashing import INLINE_BELOW, ForkedDigests, parallel_map, sha256_fd
from integrity.paths import escapes_root, to_manifest_path
from integrity.progress import Progress, human_size
from integrity.text import counted

if TYPE_CHECKING:
    from integrity.manifest import FileDigest


class Named(NamedTuple):
    """An artifact as the user named it, before it becomes a manifest `Artifact`."""

    path: str
    type: Literal["file", "directory"]
    role: Literal["model", "artifact"]


def _artifact(root: Path, given: str, role: Literal["model", "artifact"]) -> Named:
    try:
        path = to_manifest_path(root, Path(given))
    except ValueError as exc:
        raise UserError(f"{given}: {exc}") from None
    link = escapes_root(root, path)
    if link:
        raise UserError(f"{given}: resolves outside the manifest's folder through symlink {link!r}")
    try:
        mode = os.lstat(root / path).st_mode
    except FileNotFoundError:
        raise UserError(f"{given}: no such file or folder") from None
    except OSError as exc:
        raise UserError(f"{given}: cannot read: {exc.strerror}") from None
    if stat.S_ISLNK(mode):
        raise UserError(f"{given}: is a symlink; record the file it points to instead")
    if stat.S_ISDIR(mode):
        return Named(path, "directory", role)
    if not stat.S_ISREG(mode):
        raise UserError(f"{given}: is {describe_mode(mode)}, not a file or folder")
    return Named(path, "file", role)


_FLAGS = {"model": "--model", "artifact": "--artifact"}


def collect_artifacts(root: Path, models: list[str], others: list[str]) -> list[Named]:
    """Every artifact named: each `--model` a model, each `--artifact` another artifact.

    Nothing named is dropped. A path named twice is one artifact (a model if it
    was named as one). A path inside another named folder is refused: its files
    would belong to two artifacts, perhaps in two roles.
    """
    named: dict[str, tuple[Named, str]] = {}  # manifest path: artifact, as first given
    # Models first, so a path named both ways is a model.
    roles: list[tuple[str, Literal["model", "artifact"]]] = [(m, "model") for m in models]
    roles += [(p, "artifact") for p in others]
    for given, role in roles:
        artifact = _artifact(root, given, role)
        named.setdefault(artifact.path, (artifact, given))
    for path, (_, given) in named.items():
        folder = path
        while "/" in folder:
            folder = folder.rpartition("/")[0]
            if folder in named:
                outer, outer_given = named[folder]
                raise UserError(
                    f"{given}: is inside {outer_given} (named with {_FLAGS[outer.role]}); "
                    "name the folder or what is in it, not both"
                )
    return [artifact for artifact, _ in named.values()]


def expand_files(root_fd: int, artifacts: list[Named]) -> dict[str, int]:
    """Every file the artifacts cover, with its size, sorted by path; refuses
    symlinks and special files inside folders."""
    sizes: dict[str, int] = {}
    for artifact in artifacts:
        try:
            if artifact.type == "file":
                sizes[artifact.path] = lstat_path(root_fd, artifact.path).st_size
                continue
            for path, entry in walk_directory(root_fd, artifact.path):
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    raise UserError(
                        f"{path}: is {describe_mode(st.st_mode)} inside a recorded folder; "
                        "only regular files can be recorded"
                    )
                sizes[path] = st.st_size
        except PathProblem as problem:
            raise UserError(str(problem)) from None
        except OSError as exc:
            raise UserError(f"{artifact.path}: cannot list folder: {exc.strerror}") from None
    return dict(sorted(sizes.items()))


def hash_files(root_fd: int, sizes: dict[str, int], show_progress: bool) -> list[FileDigest]:
    """The digest of every file in `sizes` (path to size, for the progress total)."""
    # Started first: the fork is refused once the progress thread runs.
    ahead = ForkedDigests.start(root_fd, sizes.items())
    # Imported only now: pydantic's import (a tenth of a second of one core)
    # then overlaps the helper's hashing instead of coming before it.
    from integrity.manifest import FileDigest

    with (
        Progress("hashing", sum(sizes.values()), enabled=show_progress) as progress,
        Folders(root_fd) as folders,
        ahead or contextlib.nullcontext(),
    ):

        def digest(path: str) -> FileDigest:
            hashed = ahead.take(path, progress.advance) if ahead else None
            if hashed is not None:
                return FileDigest(path=path, sha256=hashed[0], size=hashed[1])
            # Not hashed ahead, or the helper could not: this path says why.
            try:
                fd, st = open_regular(root_fd, path, folders)
            except PathProblem as problem:
                raise UserError(str(problem)) from None
            try:
                sha256, size = sha256_fd(fd, progress.advance, st.st_size)
            except OSError as exc:
                raise UserError(f"{path}: read failed: {exc.strerror}") from None
            finally:
                os.close(fd)
            return FileDigest(path=path, sha256=sha256, size=size)

        return list(parallel_map(digest, sizes, inline=lambda path: sizes[path] < INLINE_BELOW))


def run_init(args: argparse.Namespace) -> int:
    manifest_path = Path(args.manifest)
    if os.path.lexists(manifest_path):
        if not args.force:
            raise UserError(f"{manifest_path}: already exists; pass --force to replace it")
        if os.path.isdir(manifest_path) and not os.path.islink(manifest_path):
            raise UserError(f"{manifest_path}: is a directory, not a manifest file")
    root = Path(os.path.abspath(manifest_path)).parent
    if not root.is_dir():
        raise UserError(f"{manifest_path}: folder {root} does not exist")

    artifacts = collect_artifacts(root, args.model, args.artifact)
    manifest_rel = manifest_path.name
    for artifact in artifacts:
        if artifact.path == manifest_rel:
            # Its recorded digest would be stale the moment it is written.
            raise UserError(f"{manifest_path}: is the manifest; it cannot record itself")
    root_fd = open_root(root)
    try:
        digests = hash_files(root_fd, expand_files(root_fd, artifacts), show_progress=True)
    finally:
        os.close(root_fd)
    from pydantic import ValidationError

    from integrity.manifest import (
        Artifact,
        build_manifest,
        describe_validation_error,
        dump_manifest,
        write_manifest,
    )

    try:
        manifest = build_manifest(
            [Artifact(path=a.path, type=a.type, role=a.role) for a in artifacts], digests
        )
    except ValidationError as exc:
        raise UserError(f"{manifest_path}: {describe_validation_error(exc)}") from None
    # Serialise before touching the file system, so a failure leaves nothing behind.
    text = dump_manifest(manifest)
    try:
        write_manifest(text, manifest_path, overwrite=args.force)
    except FileExistsError:
        raise UserError(f"{manifest_path}: already exists; pass --force to replace it") from None
    except OSError as exc:
        raise UserError(f"{manifest_path}: cannot write: {exc.strerror}") from None
    total = sum(d.size for d in digests)
    print(
        f"wrote {manifest_path}: {counted(len(digests), 'file')} "
        f"({human_size(total)}) in {counted(len(artifacts), 'artifact')}",
        file=sys.stdout,
    )
    return 0
