"""Progress output: silent for short runs, periodic lines in logs, a bar on terminals."""

from __future__ import annotations

import io
import time

from integrity.progress import Progress, human_size


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_short_run_prints_nothing() -> None:
    stream = _Stream(tty=False)
    with Progress("digests", 100, stream, delay=5.0) as progress:
        progress.advance(100)
    assert stream.getvalue() == ""


def test_log_lines_every_interval_when_not_a_terminal() -> None:
    stream = _Stream(tty=False)
    with Progress("digests", 4 * 2**20, stream, delay=0.0, log_interval=0.05) as progress:
        progress.advance(2**20)
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    assert "1.0 MiB of 4.0 MiB (25%)" in lines[-1]


def test_terminal_bar_redraws_in_place_and_is_cleared() -> None:
    stream = _Stream(tty=True)
    with Progress("hashing", 10, stream, delay=0.0) as progress:
        progress.advance(5)
        time.sleep(0.3)
    out = stream.getvalue()
    assert out.count("\r") >= 2
    assert "\n" not in out
    assert out.endswith("\r\x1b[K")


def test_disabled_prints_nothing_even_when_slow() -> None:
    stream = _Stream(tty=False)
    with Progress("digests", 10, stream, delay=0.0, log_interval=0.01, enabled=False):
        time.sleep(0.1)
    assert stream.getvalue() == ""


def test_human_size_units() -> None:
    assert human_size(512) == "512 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(3 * 2**30) == "3.0 GiB"
