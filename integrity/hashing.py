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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

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


def sha256_fd(fd: int, advance: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Hex SHA-256 and byte count of everything readable from `fd` (not closed here)."""
    if hasattr(os, "posix_fadvise"):
        # Only a hint; pipes and some filesystems refuse it.
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    digest = hashlib.sha256()
    view = _buffer()
    total = 0
    while True:
        n = os.readv(fd, [view])
        if not n:
            break
        digest.update(view[:n])
        total += n
        if advance is not None:
            advance(n)
    return digest.hexdigest(), total


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


def parallel_map(
    function: Callable[[T], R], items: Iterable[T], workers: int | None = None
) -> Iterator[R]:
    """`map` on worker threads, results yielded in input order as they complete.

    At most a few items per worker are in flight, so memory does not grow with
    the number of items (Executor.map would queue them all at once).
    """
    workers = workers or default_workers()
    if workers == 1:
        yield from map(function, items)
        return
    window = 4 * workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
