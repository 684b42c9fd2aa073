"""SHA-256 of files: streamed in large blocks into a reused buffer, several files at once.

hashlib releases the GIL while hashing large buffers, so threads hash files in
parallel; memory is one buffer per worker whatever the file sizes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
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
    digest = hashlib.sha256()
    view = _buffer()
    total = 0
    while True:
        n = os.readv(fd, [view])
        if not n:
            break
        if total == 0 and n == BLOCK_SIZE:
            _read_ahead(fd)  # more than one block: worth a hint (a small file is not)
        digest.update(view[:n])
        total += n
        if advance is not None:
            advance(n)
        if n < BLOCK_SIZE and total == size:
            break
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
