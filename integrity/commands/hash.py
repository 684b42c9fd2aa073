"""`model-integrity hash`: print or check SHA-256 digests, compatible with GNU sha256sum.

`hash PATH...` prints, byte for byte, the lines `sha256sum PATH...` prints
(coreutils 9.1), names as given and escaped the same way; `-` is standard input.
Beyond sha256sum:

- a folder is expanded to every regular file beneath it, in byte order of the
  whole path (as `find DIR -type f | LC_ALL=C sort`), printed as `DIR/sub/file`;
  symlinks inside it are not followed and special files are not read: each is
  reported on stderr and makes the exit code 2. A symlink named on the command
  line is followed, like sha256sum does.
- a FIFO, device or socket is never opened for reading (it could block forever
  or have side effects): the path is checked with stat first, opened with
  O_NONBLOCK and checked again with fstat.
- a path that cannot be hashed is one `model-integrity: error: PATH: reason` line
  on stderr; the other paths are still hashed; the exit code is then 2 (missing
  input), else 0.

`hash --check FILE` (FILE may be `-`) reads what sha256sum prints (plain,
`*` binary marker, escaped, `--tag`) and prints `NAME: OK`, `NAME: FAILED` or
`NAME: FAILED open or read` per line, then sha256sum's WARNING lines on stderr.
Exit 0 when every listed file matched; 1 when one did not or could not be read
(integrity not proven). Unlike sha256sum, which warns and goes on, the whole
list is parsed before anything is hashed and a line sha256sum would call
improperly formatted stops the run with exit 2, naming FILE and the line: a
checksum list that says less than it seems must not pass. Empty lines and `#`
comment lines are skipped as sha256sum does (its own output never contains
them, and a trailing blank line in a hand-edited list is harmless); a line of
blanks is improperly formatted, as in `sha256sum --strict`. A list with no
checksum line at all is exit 2. Listed names are used as written (absolute
paths and `..` included, as sha256sum does: the list is the user's own);
symlinks are followed like sha256sum, special files are never opened. A listed
name `-` means standard input, unless the list itself is read from it.

Files are hashed on worker threads (hashlib releases the GIL), results are
printed in argument order as soon as they are ready, with a progress line on
stderr for long runs only.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import queue
import select
import stat
import sys
import threading
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass
from typing import BinaryIO, Literal

from integrity import sha256sum
from integrity.cli import EXIT_FAIL, EXIT_PASS, EXIT_USAGE, PROG
from integrity.errors import UserError
from integrity.files import (
    PathProblem,
    Unreadable,
    describe_mode,
    open_regular,
    open_regular_file,
    open_root,
    walk_tree,
)
from integrity.hashing import BLOCK_SIZE, parallel_map, sha256_fd
from integrity.progress import Progress, draws_bar
from integrity.text import counted, is_terminal

_STDIN = "-"
_STDIN_LABEL = "standard input"
# A checksum line is a digest and a name (at most PATH_MAX bytes, twice that
# escaped); anything far longer is not a checksum list.
_MAX_LINE = 1 << 20


class _Refused(Exception):
    """A path that is deliberately not read; the text says why (one line)."""


class _Cancelled(Exception):
    """The run is ending (interrupt, closed output): stop hashing."""


@dataclass(frozen=True)
class _Job:
    """One thing to hash, or a problem already found while listing it."""

    display: bytes  # the name as printed
    kind: Literal["file", "member", "stdin", "problem"]
    path: str = ""  # file: the path to open; member: the folder named on the command line
    member: str = ""  # member: the '/'-separated path beneath that folder
    size: int = 0
    stdin_turn: int = 0  # stdin: 0 for the first '-', 1 for the second...
    problem: str = ""


@dataclass(frozen=True)
class _Outcome:
    job: _Job
    digest: str | None
    problem: str = ""


def run_hash(args: argparse.Namespace) -> int:
    paths: list[str] = list(args.paths or [])
    check: str | None = args.check
    if check is not None:
        if paths:
            raise UserError("hash: give either PATH... or --check FILE, not both")
        return _run_check(check)
    if not paths:
        raise UserError(
            "hash: give at least one PATH to hash ('-' for standard input), or --check FILE"
        )
    jobs = _expand(paths)
    output = _Output()
    failed = False
    with closing(_hash_all(jobs)) as outcomes:
        for outcome in outcomes:
            if outcome.digest is None:
                failed = True
                output.error(outcome.job.display, outcome.problem)
            else:
                output.line(sha256sum.format_line(outcome.digest, outcome.job.display))
    return EXIT_USAGE if failed else EXIT_PASS


# --- check mode -------------------------------------------------------------------


def _run_check(check: str) -> int:
    entries = _read_check_list(check)
    jobs: list[_Job] = []
    stdin_turns = 0
    for entry in entries:
        if entry.name == b"-":
            jobs.append(_Job(entry.name, "stdin", stdin_turn=stdin_turns))
            stdin_turns += 1
        else:
            path = os.fsdecode(entry.name)
            jobs.append(_Job(entry.name, "file", path=path, size=_size_hint(path)))
    output = _Output()
    mismatched = unreadable = 0
    with closing(_hash_all(jobs)) as outcomes:
        for entry, outcome in zip(entries, outcomes, strict=True):
            if outcome.digest is None:
                unreadable += 1
                output.error(entry.name, outcome.problem)
                output.line(sha256sum.format_check_status(entry.name, "FAILED open or read"))
            elif outcome.digest == entry.digest:
                output.line(sha256sum.format_check_status(entry.name, "OK"))
            else:
                mismatched += 1
                output.line(sha256sum.format_check_status(entry.name, "FAILED"))
    if unreadable:
        output.warning(f"WARNING: {counted(unreadable, 'listed file')} could not be read")
    if mismatched:
        output.warning(f"WARNING: {counted(mismatched, 'computed checksum')} did NOT match")
    return EXIT_FAIL if unreadable or mismatched else EXIT_PASS


def _read_check_list(check: str) -> list[sha256sum.ChecksumEntry]:
    """Every checksum line of `check`; UserError (exit 2) if it cannot be fully trusted."""
    from_stdin = check == _STDIN
    label = _STDIN_LABEL if from_stdin else check
    try:
        fd = os.dup(0) if from_stdin else _open_regular_file(check)
    except _Refused as exc:
        raise UserError(f"{label}: {exc} (use '-' to read the list from standard input)") from None
    except OSError as exc:
        raise UserError(f"{label}: {_strerror(exc)}") from None
    entries: list[sha256sum.ChecksumEntry] = []
    with os.fdopen(fd, "rb") as stream:
        number = 0
        while True:
            try:
                line = stream.readline(_MAX_LINE + 1)
            except OSError as exc:
                raise UserError(f"{label}: cannot read: {_strerror(exc)}") from None
            if not line:
                break
            number += 1
            where = f"{label}: line {number}"
            if len(line) > _MAX_LINE:
                raise UserError(f"{where}: longer than {_MAX_LINE} bytes; not a checksum list")
            try:
                entry = sha256sum.parse_line(line)
            except sha256sum.ChecksumLineError as exc:
                raise UserError(
                    f"{where}: improperly formatted SHA256 checksum line: {exc}"
                ) from None
            if entry is None:
                continue
            if from_stdin and entry.name == b"-":
                raise UserError(
                    f"{where}: the name '-' (standard input) cannot be checked "
                    "when the list itself is read from standard input"
                )
            entries.append(entry)
    if not entries:
        raise UserError(
            f"{label}: no checksum lines found "
            "(expected sha256sum output: 'DIGEST  NAME' or 'SHA256 (NAME) = DIGEST')"
        )
    return entries


def _size_hint(path: str) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


# --- listing the paths to hash -------------------------------------------------


def _expand(paths: list[str]) -> list[_Job]:
    jobs: list[_Job] = []
    stdin_turns = 0
    for path in paths:
        display = os.fsencode(path)
        if path == _STDIN:
            jobs.append(_Job(display, "stdin", stdin_turn=stdin_turns))
            stdin_turns += 1
            continue
        try:
            st = os.stat(path)  # a symlink named on the command line is followed
        except OSError as exc:
            jobs.append(_Job(display, "problem", problem=_strerror(exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            jobs.extend(_expand_folder(path))
        elif stat.S_ISREG(st.st_mode):
            jobs.append(_Job(display, "file", path=path, size=st.st_size))
        else:
            jobs.append(_Job(display, "problem", problem=_not_regular(st.st_mode)))
    return jobs


def _expand_folder(folder: str) -> list[_Job]:
    """Every entry beneath `folder`: regular files to hash, anything else as a problem.

    Walked with directory descriptors and O_NOFOLLOW, so no symlink is followed
    and a folder swapped for a symlink meanwhile is seen. Sorted by the bytes of
    the whole path.
    """
    prefix = folder if folder.endswith("/") else folder + "/"
    found: list[_Job] = []

    def problem(rel: str, text: str) -> None:
        found.append(_Job(os.fsencode(prefix + rel), "problem", problem=text))

    try:
        root = open_root(folder)
    except OSError as exc:
        return [_Job(os.fsencode(folder), "problem", problem=_strerror(exc))]
    try:
        for rel, item in walk_tree(root):
            if isinstance(item, Unreadable):
                reason = _strerror(item.error)
                if item.action != "read":
                    reason = f"cannot {item.action}: {reason}"
                if not rel:
                    return [_Job(os.fsencode(folder), "problem", problem=reason)]
                problem(rel, reason)
            elif stat.S_ISREG(item.st_mode):
                found.append(
                    _Job(
                        os.fsencode(prefix + rel),
                        "member",
                        path=folder,
                        member=rel,
                        size=item.st_size,
                    )
                )
            else:
                problem(rel, _not_regular(item.st_mode))
    finally:
        os.close(root)
    found.sort(key=lambda job: job.display)
    return found


# --- hashing ------------------------------------------------------------------------


_POLL_S = 0.2  # how often a waiting thread looks whether the run is ending


@dataclass(frozen=True)
class _Finished:
    error: BaseException | None


def _hash_all(jobs: list[_Job]) -> Generator[_Outcome, None, None]:
    """Outcomes in job order, hashed on worker threads; close it to stop early.

    A feeder thread drives parallel_map and hands outcomes over; this thread
    only ever waits with a timeout, so Ctrl-C is seen at once (a signal may be
    delivered to a busy worker, and an untimed wait would never notice it).
    """
    with Progress("hashing", sum(job.size for job in jobs)) as progress:
        hasher = _Hasher(progress, sum(1 for job in jobs if job.kind == "stdin"))
        handoff: queue.SimpleQueue[_Outcome | _Finished] = queue.SimpleQueue()
        feeder = threading.Thread(
            target=_feed, args=(hasher, jobs, handoff), name="hash-feed", daemon=True
        )
        feeder.start()
        try:
            while True:
                try:
                    item = handoff.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if isinstance(item, _Finished):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            hasher.stop()  # running jobs stop at their next block, queued ones at once
            while feeder.is_alive():
                feeder.join(_POLL_S)


def _feed(
    hasher: _Hasher, jobs: list[_Job], handoff: queue.SimpleQueue[_Outcome | _Finished]
) -> None:
    error: BaseException | None = None
    try:
        for outcome in parallel_map(hasher, jobs):
            handoff.put(outcome)
    except _Cancelled:
        pass
    except BaseException as exc:  # a bug: re-raised by the consumer
        error = exc
    handoff.put(_Finished(error))


class _Hasher:
    """The worker function: one job in, one outcome out, never an OSError."""

    def __init__(self, progress: Progress, stdin_turns: int) -> None:
        self._progress = progress
        self._stop = threading.Event()
        # '-' twice reads standard input twice, in argument order, like sha256sum
        # (the second one usually sees end of file): one at a time, in turn.
        self._stdin_done = [threading.Event() for _ in range(stdin_turns)]

    def stop(self) -> None:
        self._stop.set()

    def _advance(self, n: int) -> None:
        self._progress.advance(n)
        if self._stop.is_set():
            raise _Cancelled

    def __call__(self, job: _Job) -> _Outcome:
        if self._stop.is_set():
            raise _Cancelled
        if job.kind == "problem":
            return _Outcome(job, None, job.problem)
        try:
            if job.kind == "stdin":
                digest = self._hash_stdin(job.stdin_turn)
            else:
                if job.kind == "file":
                    fd = _open_regular_file(job.path)
                else:
                    fd = _open_member(job.path, job.member)
                try:
                    digest, _ = sha256_fd(fd, self._advance)
                finally:
                    os.close(fd)
        except _Refused as exc:
            return _Outcome(job, None, str(exc))
        except PathProblem as exc:
            return _Outcome(job, None, exc.detail)
        except OSError as exc:
            return _Outcome(job, None, _strerror(exc))
        return _Outcome(job, digest)

    def _hash_stdin(self, turn: int) -> str:
        try:
            if turn > 0:
                previous = self._stdin_done[turn - 1]
                while not previous.wait(_POLL_S):
                    if self._stop.is_set():
                        raise _Cancelled
            return self._hash_stream(0)
        finally:
            self._stdin_done[turn].set()

    def _hash_stream(self, fd: int) -> str:
        """Like sha256_fd, but a terminal or pipe that stays silent cannot hold up Ctrl-C."""
        digest = hashlib.sha256()
        while True:
            while not select.select([fd], [], [], _POLL_S)[0]:
                if self._stop.is_set():
                    raise _Cancelled
            block = os.read(fd, BLOCK_SIZE)
            if not block:
                return digest.hexdigest()
            digest.update(block)
            self._advance(len(block))


def _open_regular_file(path: str) -> int:
    """Open `path` for reading, symlinks followed as sha256sum does, only if it is a
    regular file (see integrity.files.open_regular_file)."""
    try:
        fd, _ = open_regular_file(path, follow_symlinks=True)
    except PathProblem as problem:
        if problem.kind == "directory":
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)) from None
        raise _Refused(problem.detail) from None
    return fd


def _open_member(folder: str, member: str) -> int:
    """Open `member` beneath `folder` with no symlink followed (see integrity.files)."""
    root = open_root(folder)
    try:
        fd, _ = open_regular(root, member)
    finally:
        os.close(root)
    return fd


def _not_regular(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "is a symlink; symlinks inside a folder are not followed"
    kind = describe_mode(mode)
    if kind == "not a regular file":
        return "is not a regular file; not read"
    return f"is {kind}, not a regular file; not read"


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


# --- output -------------------------------------------------------------------------


class _Output:
    """Lines to stdout as bytes (names are bytes), flushed one by one as sha256sum does."""

    def __init__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._out: BinaryIO = sys.stdout.buffer
        self._err: BinaryIO = sys.stderr.buffer
        # On a terminal, wipe the progress bar before a line is printed over it.
        self._clear_err = b"\r\x1b[K" if draws_bar(sys.stderr) else b""
        self._clear_out = self._clear_err if is_terminal(sys.stdout) else b""

    def line(self, data: bytes) -> None:
        if self._clear_out:
            self._err.write(self._clear_out)
            self._err.flush()
        self._out.write(data)
        self._out.flush()

    def error(self, name: bytes, problem: str) -> None:
        self._message(b"error: " + _one_line(name) + b": " + problem.encode("utf-8", "replace"))

    def warning(self, text: str) -> None:
        self._message(text.encode("utf-8", "replace"))

    def _message(self, text: bytes) -> None:
        self._out.flush()
        self._err.write(self._clear_err + PROG.encode("ascii") + b": " + text + b"\n")
        self._err.flush()


def _one_line(name: bytes) -> bytes:
    """A name in a message: kept on one line whatever it holds."""
    return name.replace(b"\r", b"\\r").replace(b"\n", b"\\n")
