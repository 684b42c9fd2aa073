"""Opening recorded files without being fooled by the filesystem.

Every component of a manifest path is opened relative to its parent's file
descriptor with O_NOFOLLOW, so a symlink anywhere on the path is seen, never
followed, and a rename race cannot redirect the read. Special files (FIFO,
device, socket) are refused on lstat, before any open; the final open uses
O_NONBLOCK and is re-checked with fstat, so a FIFO swapped in meanwhile still
cannot hang the run.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# A folder beneath another, opened without following a symlink.
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC


@dataclass(frozen=True)
class PathProblem(Exception):
    """Why a recorded path cannot be read as a regular file.

    kind: missing | symlink | special | directory | not-directory | unreadable
    where: the manifest path of the component at fault
    """

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}"


def describe_mode(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file"


def open_regular_file(path: str | Path, *, follow_symlinks: bool) -> tuple[int, os.stat_result]:
    """Open a path named by the user for reading, only if it is a regular file.

    stat (or lstat) first, so a FIFO or a device is never opened; then
    O_NONBLOCK and an fstat of what was opened, so one swapped in meanwhile
    cannot block the run. Raises PathProblem for what is not a regular file,
    OSError (FileNotFoundError, PermissionError, ...) for what cannot be read.
    """
    where = str(path)
    st = os.stat(path) if follow_symlinks else os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PathProblem("symlink", where, "is a symlink; not followed")
    if stat.S_ISDIR(st.st_mode):
        raise PathProblem("directory", where, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise PathProblem(
            "special", where, f"is {describe_mode(st.st_mode)}, not a regular file; not read"
        )
    flags = os.O_RDONLY | os.O_NONBLOCK | _O_CLOEXEC | (0 if follow_symlinks else _O_NOFOLLOW)
    fd = os.open(path, flags)
    return fd, _confirm_opened(fd, st, where, "changed while being opened; not read")


def _confirm_opened(fd: int, expected: os.stat_result, where: str, detail: str) -> os.stat_result:
    """The fstat of `fd`, opened O_NONBLOCK, once it is proven to be the regular
    file `expected` describes; then blocking again. Otherwise `fd` is closed."""
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
        expected.st_dev,
        expected.st_ino,
    ):
        os.close(fd)
        raise PathProblem("special", where, detail)
    os.set_blocking(fd, True)
    return opened


def open_root(root: str | Path) -> int:
    return os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)


def _open_parent(root_fd: int, parts: list[str]) -> int:
    """A descriptor for the directory holding the last part; the caller closes it."""
    fd = os.dup(root_fd)
    walked: list[str] = []
    try:
        for part in parts[:-1]:
            walked.append(part)
            where = "/".join(walked)
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise PathProblem("missing", where, "folder is missing") from None
            except OSError as exc:
                raise PathProblem("unreadable", where, f"cannot read: {exc.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                raise PathProblem("symlink", where, "folder was replaced by a symlink") from None
            if not stat.S_ISDIR(st.st_mode):
                kind = "special" if not stat.S_ISREG(st.st_mode) else "not-directory"
                raise PathProblem(
                    kind, where, f"should be a folder but is {describe_mode(st.st_mode)}"
                )
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise PathProblem(
                        "symlink", where, "folder was replaced by a symlink"
                    ) from None
                raise PathProblem("unreadable", where, f"cannot open: {exc.strerror}") from None
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_regular(root_fd: int, path: str) -> tuple[int, os.stat_result]:
    """Open manifest path `path` beneath `root_fd` for reading, as a regular file only.

    Returns the descriptor (caller closes) and its fstat. Raises PathProblem.
    """
    parts = path.split("/")
    parent = _open_parent(root_fd, parts)
    name = parts[-1]
    try:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise PathProblem("missing", path, "file is missing") from None
        except OSError as exc:
            raise PathProblem("unreadable", path, f"cannot read: {exc.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=parent)
            raise PathProblem("symlink", path, f"was replaced by a symlink to {target!r}")
        if stat.S_ISDIR(st.st_mode):
            raise PathProblem("directory", path, "should be a file but is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise PathProblem("special", path, f"was replaced by {describe_mode(st.st_mode)}")
        try:
            fd = os.open(
                name, os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC, dir_fd=parent
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PathProblem("symlink", path, "was replaced by a symlink") from None
            raise PathProblem("unreadable", path, f"cannot open: {exc.strerror}") from None
        return fd, _confirm_opened(fd, st, path, "changed while being opened; refusing to read it")
    finally:
        os.close(parent)


@dataclass(frozen=True)
class Unreadable:
    """An entry `walk_tree` could not read: what it tried, and the error."""

    action: str  # "read", "open folder", "list"
    error: OSError


def walk_tree(dir_fd: int) -> Iterator[tuple[str, os.stat_result | Unreadable]]:
    """Every entry beneath the open folder `dir_fd`, as ('a/b', lstat) pairs.

    Symlinks and special files are listed (so they can be reported), never
    followed; folders are walked, not listed. Depth first with one descriptor
    per level, so no recursion limit; a fresh descriptor for the top, so
    listing never shares the caller's read offset. An entry that cannot be
    read comes with `Unreadable` ('' for the top folder itself).
    """
    top = os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
    try:
        entries = sorted(os.listdir(top))
    except OSError as exc:
        os.close(top)
        yield "", Unreadable("list", exc)
        return
    stack: list[tuple[int, str, Iterator[str]]] = [(top, "", iter(entries))]
    try:
        while stack:
            fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                os.close(fd)
                continue
            child = prefix + name
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as exc:
                yield child, Unreadable("read", exc)
                continue
            if not stat.S_ISDIR(st.st_mode):
                yield child, st
                continue
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                yield child, Unreadable("open folder", exc)
                continue
            try:
                entries = sorted(os.listdir(sub))
            except OSError as exc:
                os.close(sub)
                yield child, Unreadable("list", exc)
                continue
            stack.append((sub, child + "/", iter(entries)))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def list_directory(root_fd: int, path: str) -> dict[str, os.stat_result]:
    """Every entry beneath manifest directory `path`, recursively: manifest path to
    lstat, sorted by path.

    Symlinks and special files are listed (so they can be reported), never followed.
    Raises OSError when part of the tree cannot be read.
    """
    parts = path.split("/")
    folder = _open_parent(root_fd, [*parts, "_"])
    found: dict[str, os.stat_result] = {}
    try:
        for rel, item in walk_tree(folder):
            if isinstance(item, Unreadable):
                raise item.error
            found[f"{path}/{rel}"] = item
    finally:
        os.close(folder)
    return dict(sorted(found.items()))


def lstat_path(root_fd: int, path: str) -> os.stat_result:
    """lstat of manifest path `path` beneath root, its folders walked without following
    symlinks. Raises PathProblem (kind `missing`, `symlink`, ... naming the component)."""
    parts = path.split("/")
    parent = _open_parent(root_fd, parts)
    try:
        return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        raise PathProblem("missing", path, "is missing") from None
    except OSError as exc:
        raise PathProblem("unreadable", path, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(parent)


def display_name(name: str) -> str:
    """A name read from disk as printable, encodable text: bytes that are not UTF-8
    (kept by Python as lone surrogates) are shown as `\\xNN` escapes."""
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def list_names(root_fd: int, directory: str) -> set[str] | None:
    """Exact names in manifest folder `directory` ("" for the root); None if unreadable."""
    try:
        # A fresh descriptor: listdir on a shared one would share its read offset.
        parts = directory.split("/") if directory else []
        fd = (
            _open_parent(root_fd, [*parts, "_"])
            if parts
            else os.open(".", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC, dir_fd=root_fd)
        )
    except (PathProblem, OSError):
        return None
    try:
        return set(os.listdir(fd))
    except OSError:
        return None
    finally:
        os.close(fd)


def write_file_atomically(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write `data` to `path` through a temporary file beside it, so a reader never
    sees half a file. Unless `overwrite`, an existing file is kept (even one created
    meanwhile) and FileExistsError raised. Raises OSError; leaves no temporary file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the name exists, so a file created meanwhile is kept.
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
