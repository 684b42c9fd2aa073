"""Progress for long runs: a bar on a terminal, a line every few seconds in CI logs.

Short runs print nothing: output starts only after `delay` seconds.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

from integrity.text import is_terminal


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def draws_bar(stream: TextIO) -> bool:
    """Whether progress on `stream` is a bar redrawn in place (a terminal), not log lines."""
    return is_terminal(stream) and os.environ.get("TERM") != "dumb"


class Progress:
    """Counts bytes done out of `total`; thread-safe `advance`."""

    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO | None = None,
        *,
        delay: float = 1.0,
        log_interval: float = 5.0,
        enabled: bool = True,
    ) -> None:
        self._enabled = enabled
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = draws_bar(self._stream)
        self._delay = delay
        self._interval = 0.2 if self._tty else log_interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread: threading.Thread | None = None
        self._printed = False

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if not self._enabled:
            return self
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._printed and self._tty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def _run(self) -> None:
        if self._stop.wait(self._delay):
            return
        while True:
            self._print()
            if self._stop.wait(self._interval):
                return

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        done = self.done
        fraction = done / self.total if self.total else 1.0
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else 0.0
        return (
            f"{self.label}: {human_size(done)} of {human_size(self.total)} ({fraction:.0%}), "
            f"{human_size(rate)}/s, {eta:.0f} s left"
        )

    def _print(self) -> None:
        self._printed = True
        text = self.line()
        if self._tty:
            width = 24
            fraction = self.done / self.total if self.total else 1.0
            filled = int(width * min(fraction, 1.0))
            bar = "#" * filled + "-" * (width - filled)
            self._stream.write(f"\r\x1b[K[{bar}] {text}")
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
