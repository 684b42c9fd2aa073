"""SHA-256 of files: streamed in large blocks into a reused buffer, several files at once.

hashlib releases the GIL while hashing large buffers, so threads hash files in
parallel; memory is one buffer per worker whatever the file sizes.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
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

# The helper maps a large file this much at a time, so its resident memory stays
# small whatever the file's size (mapped pages count in it). From 2 to 32 MiB the
# CPU time was the same; 32 MiB windows made the peak RSS 82 MB, against 35 MB.
MAP_WINDOW = 4 << 20

# How often a caller waiting for the helper passes on the bytes it has hashed.
_PROGRESS_EVERY = 0.2

# The shared memory file: bytes hashed so far, then one record per path:
# hashed?, raw digest, bytes read, fstat size.
_COUNTER = struct.Struct("<q")
_RECORD = struct.Struct("<?32sqq")


class ForkedDigests:
    """SHA-256 of files computed ahead by a forked helper process: every large
    file, and a share of many small ones, while the caller does the rest.

    `verify` starts it as soon as the manifest's JSON is read, so the files are
    hashed while pydantic is imported and the manifest validated. A process, not
    threads, for two reasons measured in issue 6:
    - on files this small Python holds the GIL for most of each file: a second
      thread made 20,000 x 4 KiB files slower, a second process twice as fast;
    - a large file is hashed from a memory map, which skips copying it into a
      buffer (a fifth less CPU than reading it, and less than openssl's own
      reads); but a mapped file that shrinks or fails to read kills its reader
      with SIGBUS. Here that kills only the helper: the caller finds it did not
      exit cleanly and hashes every file itself, by reading, and reports.

    The helper opens each path exactly as the caller would (`Folders`, beneath a
    fresh descriptor of the same root: never through a symlink, regular files
    only, checked with fstat) and writes fixed-size records to an anonymous
    memory file. Whatever it could not open or read, and everything when it did
    not finish cleanly, is `None` for `take`: the caller then takes its own path,
    which says what is wrong. Only where the process has no other thread (a fork
    copies only the calling one) and on Linux (memfd, and a fork without exec).
    """

    def __init__(self, pid: int, memfd: int, shared: mmap.mmap, paths: Sequence[str]) -> None:
        self._pid = pid
        self._memfd = memfd
        self._shared = shared
        self._index = {path: i for i, path in enumerate(paths)}
        self._results: list[tuple[str, int, int] | None] | None = None
        self._collecting = threading.Lock()

    @classmethod
    def start(cls, root_fd: int, files: Iterable[tuple[str, int]]) -> ForkedDigests | None:
        """Fork a helper for `files` (manifest path, recorded size, in the order
        the caller will come to them) beneath the folder `root_fd` (borrowed), or
        None where that does not pay or cannot be done safely."""
        if sys.platform != "linux" or default_workers() < 2 or threading.active_count() != 1:
            return None
        small: list[str] = []
        large: list[str] = []
        for path, size in files:
            (small if size < INLINE_BELOW else large).append(path)
        # The second half of the small files: the caller comes to it last.
        share = small[len(small) // 2 :] if len(small) >= FORK_AT_LEAST else []
        paths = list(dict.fromkeys(large + share))  # each once (validation refuses repeats)
        if not paths:
            return None
        size = _COUNTER.size + _RECORD.size * len(paths)
        memfd = os.memfd_create("model-integrity-digests", os.MFD_CLOEXEC)
        try:
            os.ftruncate(memfd, size)
            shared = mmap.mmap(memfd, size)
        except BaseException:
            os.close(memfd)
            raise
        try:
            pid = os.fork()
        except OSError:  # no process to spare (EAGAIN, ENOMEM): the caller hashes them all
            shared.close()
            os.close(memfd)
            return None
        if pid == 0:  # the helper: never returns
            status = 1
            try:
                faults = sys.modules.get("faulthandler")
                if faults is not None:  # a SIGBUS here is expected: say nothing of it
                    faults.disable()
                _hash_into(root_fd, paths, len(large), shared)
                status = 0
            finally:
                os._exit(status)  # no atexit handlers, no flush of the parent's buffers
        return cls(pid, memfd, shared, paths)

    def take(self, path: str, advance: Callable[[int], None]) -> tuple[str, int, int] | None:
        """(hex digest, bytes read, fstat size) of `path` if the helper hashed it.

        The first call that needs the helper waits for it to exit, passing the
        bytes it hashed to `advance` meanwhile; calls from other threads wait
        for that one.
        """
        i = self._index.get(path)
        if i is None:
            return None
        with self._collecting:
            if self._results is None:
                self._results = self._collect(advance)
        return self._results[i]

    def _collect(self, advance: Callable[[int], None]) -> list[tuple[str, int, int] | None]:
        reported = 0
        with _ExitWatch(self._pid) as watch:
            while not watch.exited(_PROGRESS_EVERY):
                done = _COUNTER.unpack_from(self._shared, 0)[0]
                if done > reported:
                    advance(done - reported)
                    reported = done
        status = watch.status
        self._pid = 0
        results: list[tuple[str, int, int] | None] = [None] * len(self._index)
        if status != 0:
            return results  # all left to the caller (and the bytes counted again: a rare case)
        hashed = 0
        for i in range(len(results)):
            ok, digest, count, st_size = _RECORD.unpack_from(
                self._shared, _COUNTER.size + i * _RECORD.size
            )
            if ok:
                results[i] = (digest.hex(), count, st_size)
                hashed += count
        if hashed > reported:
            advance(hashed - reported)
        return results

    def close(self) -> None:
        """Stop the helper if it still runs (the caller failed or was interrupted)."""
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            self._pid = 0
        if self._memfd >= 0:
            self._shared.close()
            os.close(self._memfd)
            self._memfd = -1

    def __enter__(self) -> ForkedDigests:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _ExitWatch:
    """Waits for a child to exit, in slices (to report progress between them):
    on a pidfd where the kernel has them, else in one blocking wait."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._pidfd = -1
        self.status: int | None = None

    def __enter__(self) -> _ExitWatch:
        with contextlib.suppress(OSError, AttributeError):  # Linux 5.3+
            self._pidfd = os.pidfd_open(self._pid)
        return self

    def exited(self, timeout: float) -> bool:
        if self._pidfd >= 0:
            import select

            readable, _, _ = select.select([self._pidfd], [], [], timeout)
            if not readable:
                return False
        _, self.status = os.waitpid(self._pid, 0)
        return True

    def __exit__(self, *exc_info: object) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)


def _hash_into(root_fd: int, paths: Sequence[str], large: int, shared: mmap.mmap) -> None:
    """In the helper: a record per path into `shared`; the first `large` paths
    are large files, hashed from memory maps on a thread each, the rest small
    files hashed by reading on this thread meanwhile."""
    from integrity.files import Folders  # the helper's only extra import

    counted = threading.Lock()
    done = [0]

    def record(i: int, result: tuple[str, int, int] | None) -> None:
        offset = _COUNTER.size + i * _RECORD.size
        if result is None:
            _RECORD.pack_into(shared, offset, False, b"", 0, 0)
        else:
            _RECORD.pack_into(shared, offset, True, bytes.fromhex(result[0]), *result[1:])

    def advance(n: int) -> None:
        with counted:
            done[0] += n
            _COUNTER.pack_into(shared, 0, done[0])

    def hash_one(folders: Folders, path: str, mapped: bool) -> tuple[str, int, int] | None:
        try:
            fd, st = folders.open_file(path)
        except Exception:  # PathProblem, OSError: the caller will say what it is
            return None
        try:
            if mapped:
                digest, count = _sha256_mapped(fd, st.st_size, advance), st.st_size
            else:
                digest, count = sha256_fd(fd, advance, st.st_size)
        except OSError:
            return None
        finally:
            os.close(fd)
        return digest, count, st.st_size

    # A fresh descriptor: the caller lists folders through its own meanwhile.
    own_root = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    with Folders(own_root) as folders:
        todo = deque(range(large))

        def work() -> None:
            while True:
                try:
                    i = todo.popleft()
                except IndexError:
                    return
                record(i, hash_one(folders, paths[i], mapped=True))

        threads = [threading.Thread(target=work) for _ in range(min(default_workers(), large))]
        for thread in threads:
            thread.start()
        for i in range(large, len(paths)):
            record(i, hash_one(folders, paths[i], mapped=False))
        for thread in threads:
            thread.join()
    os.close(own_root)


def _sha256_mapped(fd: int, size: int, advance: Callable[[int], None]) -> str:
    """Hex SHA-256 of the first `size` bytes of regular file `fd`, read through
    memory maps of MAP_WINDOW bytes (SIGBUS if the file shrinks meanwhile: run
    only in a process that may die of it)."""
    digest = hashlib.sha256()
    for offset in range(0, size, MAP_WINDOW):
        length = min(MAP_WINDOW, size - offset)
        with mmap.mmap(fd, length, offset=offset, prot=mmap.PROT_READ) as window:
            with contextlib.suppress(OSError, AttributeError):
                window.madvise(mmap.MADV_SEQUENTIAL)  # a hint for files not yet cached
            with memoryview(window) as view:
                digest.update(view)  # the GIL released: threads hash in parallel
        advance(length)
    return digest.hexdigest()
