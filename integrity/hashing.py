"""SHA-256 of files: streamed in large blocks into a reused buffer, several files at once.

hashlib releases the GIL while hashing large buffers, so threads hash files in
parallel; memory is one buffer per worker whatever the file sizes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

BLOCK_SIZE = 1 << 20  # 1 MiB: large enough to amortise syscalls, small enough to stay in cache

_local = threading.local()
T = TypeVar("T")
R = TypeVar("R")


def _buffer() -> memoryview:
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = memoryview(bytearray(BLOCK_SIZE))
        _local.view = view
    return view


def sha256_fd(
    fd: int, advance: Callable[[int], None] | None = None, size: int | None = None
) -> tuple[str, int]:
    """Hex SHA-256 and byte count of everything readable from `fd` (not closed here).

    `size`, the fstat size of a regular file, saves the read that would only
    find the end: a short read that reaches it is the end of the file as it
    stood when it was opened (a read of a regular file is short only at its end).
    """
    view = _buffer()
    n = os.readv(fd, [view])
    if advance is not None:
        advance(n)
    if n < BLOCK_SIZE and (n == size or n == 0):
        # Whole in one read, as most small files are: the fewest steps.
        return hashlib.sha256(view[:n]).hexdigest(), n
    if n == BLOCK_SIZE:
        _read_ahead(fd)  # more than one block: worth a hint (a small file is not)
    digest = hashlib.sha256(view[:n])
    total = n
    while not (n < BLOCK_SIZE and total == size):
        n = os.readv(fd, [view])
        if not n:
            break
        digest.update(view[:n])
        total += n
        if advance is not None:
            advance(n)
    return digest.hexdigest(), total


def _read_ahead(fd: int) -> None:
    if hasattr(os, "posix_fadvise"):
        # Only a hint; pipes and some filesystems refuse it.
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def default_workers() -> int:
    return max(
        1,
        min(
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1),
            16,
        ),
    )


# Below this size a file is hashed on the calling thread: handing it to a worker
# costs more (a queue, futex wake-ups, GIL hand-offs) than hashing it. On 4 KiB
# files one thread was 2.6x faster than two (issue 6). The threshold itself is a
# judgement, not a measurement: 256 KiB takes about 0.1 ms to hash with SHA-NI,
# well above a hand-off's tens of microseconds, so larger files go to the workers.
INLINE_BELOW = 256 * 1024


class _Ready(Generic[R]):
    """A result computed on the calling thread, queued behind the futures before it."""

    __slots__ = ("value",)

    def __init__(self, value: R) -> None:
        self.value = value

    def done(self) -> bool:
        return True

    def result(self) -> R:
        return self.value


def parallel_map(
    function: Callable[[T], R],
    items: Iterable[T],
    workers: int | None = None,
    *,
    inline: Callable[[T], bool] | None = None,
) -> Iterator[R]:
    """`map` on worker threads, results yielded in input order as they complete.

    Items for which `inline` is true (cheap ones: small files) run on the calling
    thread instead, while the workers hash the large ones; no thread is started
    until a large item comes. At most a few items per worker are in flight, so
    memory does not grow with the number of items (Executor.map would queue them
    all at once). An exception from an inline item is raised at once.
    """
    workers = workers or default_workers()
    if workers == 1:
        yield from map(function, items)
        return
    window = 4 * workers
    pool: ThreadPoolExecutor | None = None
    pending: deque[Future[R] | _Ready[R]] = deque()
    try:
        for item in items:
            if inline is not None and inline(item):
                if not pending:
                    yield function(item)
                    continue
                pending.append(_Ready(function(item)))
            else:
                if pool is None:
                    # Imported here: a run of small files never starts a thread.
                    from concurrent.futures import ThreadPoolExecutor

                    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash")
                pending.append(pool.submit(function, item))
            while pending and (len(pending) >= window or pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


# With this many small files or more, a forked helper process hashes a share of
# them (see `ForkedDigests`). A judgement: the fork costs a few milliseconds
# (the time of a few hundred small files), so below this it does not pay.
FORK_AT_LEAST = 2000

# Per path: hashed?, raw digest, bytes read, fstat size.
_RECORD = struct.Struct("<?32sqq")


class ForkedDigests:
    """SHA-256 of a share of many small files, computed by a forked child process
    while the caller hashes the rest, for when one core is the limit.

    Threads cannot share this work: on files this small Python holds the GIL for
    most of each file, and a second thread made 20,000 x 4 KiB files slower, where
    a second process made them twice as fast (issue 6).

    The child opens each path exactly as the caller would (`Folders`, beneath a
    fresh descriptor of the same root: never through a symlink, regular files
    only, checked with fstat) and writes fixed-size records to an anonymous
    memory file. Whatever it could not open or read, and everything when it did
    not finish cleanly, is `None` for `take`: the caller then takes its own path,
    which says what is wrong. Only where the process has no other thread (a fork
    copies only the calling one) and on Linux (memfd, and a fork without exec).
    """

    def __init__(self, pid: int, memfd: int, paths: Sequence[str]) -> None:
        self._pid = pid
        self._memfd = memfd
        self._index = {path: i for i, path in enumerate(paths)}
        self._results: list[tuple[str, int, int] | None] | None = None

    @classmethod
    def start(cls, root_fd: int, small: Sequence[str]) -> ForkedDigests | None:
        """Fork a child hashing the second half of `small` (paths of small files in
        the order the caller will come to them), or None where that does not pay
        or cannot be done safely."""
        if (
            len(small) < FORK_AT_LEAST
            or sys.platform != "linux"
            or default_workers() < 2
            or threading.active_count() != 1
        ):
            return None
        paths = small[len(small) // 2 :]
        memfd = os.memfd_create("model-integrity-digests", os.MFD_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:  # no process to spare (EAGAIN, ENOMEM): the caller hashes them all
            os.close(memfd)
            return None
        if pid == 0:  # the child: never returns
            status = 1
            try:
                _hash_into(root_fd, paths, memfd)
                status = 0
            finally:
                os._exit(status)  # no atexit handlers, no flush of the parent's buffers
        return cls(pid, memfd, paths)

    def take(self, path: str) -> tuple[str, int, int] | None:
        """(hex digest, bytes read, fstat size) of `path` if the child hashed it;
        waits for the child on the first call that needs it."""
        i = self._index.get(path)
        if i is None:
            return None
        if self._results is None:
            self._results = self._collect()
        return self._results[i]

    def _collect(self) -> list[tuple[str, int, int] | None]:
        _, status = os.waitpid(self._pid, 0)
        self._pid = 0
        results: list[tuple[str, int, int] | None] = [None] * len(self._index)
        size = _RECORD.size * len(results)
        if status != 0 or os.fstat(self._memfd).st_size != size:
            return results  # all left to the caller
        data = os.pread(self._memfd, size, 0)
        for i, (hashed, digest, count, st_size) in enumerate(_RECORD.iter_unpack(data)):
            if hashed:
                results[i] = (digest.hex(), count, st_size)
        return results

    def close(self) -> None:
        """Stop the child if it still runs (the caller failed or was interrupted)."""
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            self._pid = 0
        if self._memfd >= 0:
            os.close(self._memfd)
            self._memfd = -1

    def __enter__(self) -> ForkedDigests:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _hash_into(root_fd: int, paths: Sequence[str], memfd: int) -> None:
    """In the child: one record per path into `memfd`."""
    from integrity.files import Folders  # the child's only extra import

    # A fresh descriptor: the parent lists folders through its own meanwhile.
    own_root = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    records = bytearray()
    with Folders(own_root) as folders:
        for path in paths:
            try:
                fd, st = folders.open_file(path)
            except Exception:  # PathProblem, OSError: the caller will say what it is
                records += _RECORD.pack(False, b"", 0, 0)
                continue
            try:
                digest, count = sha256_fd(fd, None, st.st_size)
            except OSError:
                records += _RECORD.pack(False, b"", 0, 0)
                continue
            finally:
                os.close(fd)
            records += _RECORD.pack(True, bytes.fromhex(digest), count, st.st_size)
    os.close(own_root)
    with open(memfd, "wb", closefd=False) as out:  # writes it all, however large
        out.write(records)
