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
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# A folder beneath another, opened without following a symlink.
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
# A recorded file: never through a symlink, and a FIFO swapped in cannot block.
_FILE_FLAGS = os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC


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
    file `expected` describes. Otherwise `fd` is closed.

    O_NONBLOCK is left set: it has no effect on a regular file (open(2)), and
    clearing it would cost two more system calls per file.
    """
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
        expected.st_dev,
        expected.st_ino,
    ):
        os.close(fd)
        raise PathProblem("special", where, detail)
    return opened


def open_root(root: str | Path) -> int:
    return os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)


def _lstat_beneath(parent: int, name: str, where: str, missing: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        raise PathProblem("missing", where, missing) from None
    except OSError as exc:
        raise PathProblem("unreadable", where, f"cannot read: {exc.strerror}") from None


def _open_folder(parent: int, part: str, where: str) -> int:
    """Open folder `part` beneath the descriptor `parent`, never through a symlink;
    `where` is its manifest path, for the message. The caller closes the result."""
    st = _lstat_beneath(parent, part, where, "folder is missing")
    if stat.S_ISLNK(st.st_mode):
        raise PathProblem("symlink", where, "folder was replaced by a symlink") from None
    if not stat.S_ISDIR(st.st_mode):
        kind = "special" if not stat.S_ISREG(st.st_mode) else "not-directory"
        raise PathProblem(kind, where, f"should be a folder but is {describe_mode(st.st_mode)}")
    try:
        return os.open(part, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathProblem("symlink", where, "folder was replaced by a symlink") from None
        raise PathProblem("unreadable", where, f"cannot open: {exc.strerror}") from None


def _open_parent(root_fd: int, parts: list[str]) -> int:
    """A descriptor for the directory holding the last part; the caller closes it."""
    fd = os.dup(root_fd)
    try:
        for depth in range(1, len(parts)):
            next_fd = _open_folder(fd, parts[depth - 1], "/".join(parts[:depth]))
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


class Folders:
    """Descriptors of the folders beneath a root, each opened once and reused for
    every recorded file in it, instead of walking the path again for each file.

    A folder is opened exactly as `_open_parent` opens it (component by component,
    beneath its parent's descriptor, never through a symlink), so a file opened
    beneath a kept descriptor is one that walk would have reached when the folder
    was first opened. Each thread keeps its own few most recently used folders
    (paths are processed in sorted order, so a folder's files come together);
    `close` closes them all.
    """

    def __init__(self, root_fd: int, keep: int = 32) -> None:
        self._root_fd = root_fd
        self._keep = keep
        self._local = threading.local()
        self._lock = threading.Lock()
        self._caches: list[OrderedDict[str, int]] = []
        # Per folder, the names its listing types as regular files (see `listed_regular`).
        self._regular: dict[str, frozenset[str]] = {}

    def _cache(self) -> OrderedDict[str, int]:
        cache: OrderedDict[str, int] | None = getattr(self._local, "cache", None)
        if cache is None:
            cache = OrderedDict()
            self._local.cache = cache
            with self._lock:
                self._caches.append(cache)
        return cache

    def _parent(self, folder: str) -> int:
        """A borrowed descriptor (never closed by the caller) of manifest folder
        `folder` ("" for the root). Raises PathProblem naming the folder at fault."""
        if not folder:
            return self._root_fd
        cache = self._cache()
        fd = cache.get(folder)
        if fd is not None:
            cache.move_to_end(folder)
            return fd
        parts = folder.split("/")
        # Start from the deepest folder on the way that is already open.
        start, fd = 0, self._root_fd
        for above in range(len(parts) - 1, 0, -1):
            known = cache.get("/".join(parts[:above]))
            if known is not None:
                start, fd = above, known
                break
        opened: set[str] = set()
        for depth in range(start + 1, len(parts) + 1):
            where = "/".join(parts[:depth])
            fd = _open_folder(fd, parts[depth - 1], where)
            cache[where] = fd
            opened.add(where)
        # Evict the least recently used, never one this call still walked through.
        while len(cache) > self._keep:
            oldest = next(iter(cache))
            if oldest in opened:
                break
            os.close(cache.pop(oldest))
        return fd

    def open_file(self, path: str) -> tuple[int, os.stat_result]:
        """`open_regular(root, path)`, the folders leading to it taken from here.

        A name its folder's listing types as a regular file (d_type) is opened
        without an lstat first: that lstat only keeps devices and FIFOs from being
        opened, and the listing already says what the name is. What is opened is
        checked with fstat either way; anything else takes the lstat path, which
        says what the name is now.
        """
        folder, _, name = path.rpartition("/")
        parent = self._parent(folder)
        if name in self._listed_regular(folder, parent):
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
            except OSError:
                pass
            else:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode):
                    return fd, st
                os.close(fd)
        return _open_beneath(parent, name, path)

    def _listed_regular(self, folder: str, fd: int) -> frozenset[str]:
        """Names the listing of `folder`, open as `fd`, types as regular files."""
        names = self._regular.get(folder)
        if names is not None:
            return names
        # Under the lock: the root's descriptor is shared by every thread, and
        # scandir reads through its offset (rewinding it when done).
        with self._lock:
            names = self._regular.get(folder)
            if names is None:
                try:
                    with os.scandir(fd) as listing:
                        names = frozenset(e.name for e in listing if _typed_regular(e))
                except OSError:
                    names = frozenset()
                self._regular[folder] = names
            return names

    def close(self) -> None:
        with self._lock:
            for cache in self._caches:
                while cache:
                    os.close(cache.popitem()[1])
            self._caches.clear()

    def __enter__(self) -> Folders:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_regular(
    root_fd: int, path: str, folders: Folders | None = None
) -> tuple[int, os.stat_result]:
    """Open manifest path `path` beneath `root_fd` for reading, as a regular file only.

    With `folders` (opened on the same root), the folders leading to it are
    taken from there rather than walked again. Returns the descriptor (caller
    closes) and its fstat. Raises PathProblem.
    """
    if folders is not None:
        return folders.open_file(path)
    parts = path.split("/")
    parent = _open_parent(root_fd, parts)
    try:
        return _open_beneath(parent, parts[-1], path)
    finally:
        os.close(parent)


def _typed_regular(entry: os.DirEntry[str]) -> bool:
    # Free where the listing has the type; an lstat of its own where it has not.
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _open_beneath(parent: int, name: str, path: str) -> tuple[int, os.stat_result]:
    """Open `name` in the folder `parent` as a regular file only: lstat first, so a
    symlink or a special file is never opened; then O_NOFOLLOW|O_NONBLOCK and an
    fstat check that it is the same regular file."""
    st = _lstat_beneath(parent, name, path, "file is missing")
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=parent)
        raise PathProblem("symlink", path, f"was replaced by a symlink to {target!r}")
    if stat.S_ISDIR(st.st_mode):
        raise PathProblem("directory", path, "should be a file but is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise PathProblem("special", path, f"was replaced by {describe_mode(st.st_mode)}")
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathProblem("symlink", path, "was replaced by a symlink") from None
        raise PathProblem("unreadable", path, f"cannot open: {exc.strerror}") from None
    return fd, _confirm_opened(fd, st, path, "changed while being opened; refusing to read it")


@dataclass(frozen=True)
class Unreadable:
    """An entry `walk_tree` could not read: what it tried, and the error."""

    action: str  # "read", "open folder", "list"
    error: OSError


def walk_entries(dir_fd: int) -> Iterator[tuple[str, os.DirEntry[str] | Unreadable]]:
    """Every entry beneath the open folder `dir_fd`, as ('a/b', DirEntry) pairs.

    Symlinks and special files are listed (so they can be reported), never
    followed; folders are walked, not listed (a folder is opened O_NOFOLLOW, so
    one swapped for a symlink is refused, whatever the listing said). Depth
    first with one descriptor per level, so no recursion limit; a fresh
    descriptor for the top, so listing never shares the caller's read offset.
    An entry that cannot be read comes with `Unreadable` ('' for the top folder).

    Entries carry the listing's file type, so telling folders from files costs
    no lstat; an entry's `stat(follow_symlinks=False)` must be taken before the
    next entry is (its folder's descriptor is closed once walked).
    """
    top = os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
    try:
        entries = _sorted_entries(top)
    except OSError as exc:
        os.close(top)
        yield "", Unreadable("list", exc)
        return
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = [(top, "", iter(entries))]
    try:
        while stack:
            fd, prefix, items = stack[-1]
            entry = next(items, None)
            if entry is None:
                stack.pop()
                os.close(fd)
                continue
            child = prefix + entry.name
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                yield child, Unreadable("read", exc)
                continue
            if not is_folder:
                yield child, entry
                continue
            try:
                sub = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                yield child, Unreadable("open folder", exc)
                continue
            try:
                entries = _sorted_entries(sub)
            except OSError as exc:
                os.close(sub)
                yield child, Unreadable("list", exc)
                continue
            stack.append((sub, child + "/", iter(entries)))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _sorted_entries(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as listing:
        return sorted(listing, key=lambda entry: entry.name)


def walk_tree(dir_fd: int) -> Iterator[tuple[str, os.stat_result | Unreadable]]:
    """`walk_entries`, each entry with its lstat."""
    for rel, item in walk_entries(dir_fd):
        if isinstance(item, Unreadable):
            yield rel, item
            continue
        try:
            st = item.stat(follow_symlinks=False)
        except OSError as exc:
            yield rel, Unreadable("read", exc)
            continue
        yield rel, st


def walk_directory(root_fd: int, path: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry beneath manifest directory `path`, recursively, as (manifest path,
    entry) pairs as they are read (sorted within each folder, depth first): nothing
    is kept per entry, so memory does not grow with the number of files. See
    `walk_entries` (take an entry's stat before the next entry).

    Symlinks and special files are listed (so they can be reported), never followed.
    Raises OSError when part of the tree cannot be read, PathProblem when a folder
    leading to `path` is not one.
    """
    parts = path.split("/")
    folder = _open_parent(root_fd, [*parts, "_"])
    try:
        for rel, item in walk_entries(folder):
            if isinstance(item, Unreadable):
                raise item.error
            yield f"{path}/{rel}", item
    finally:
        os.close(folder)


def list_directory(root_fd: int, path: str) -> dict[str, os.stat_result]:
    """Every entry beneath manifest directory `path` with its lstat, sorted by path."""
    found = {
        name: entry.stat(follow_symlinks=False) for name, entry in walk_directory(root_fd, path)
    }
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
    import tempfile  # only init writes files: kept off the start-up of every command

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
