"""Measuring machinery shared by the benchmark scripts in this folder.

Each command runs as its own process, forked by a minimal launcher interpreter
(`python -S -I`, no imports but os/sys/time, and signal only with a timeout), which
times it and reads its rusage with os.wait4. Why not Popen from the benchmark itself:
Linux counts into a child's ru_maxrss the RSS of the memory it had before exec, that
is a copy of its parent's, so every command spawned straight from the benchmark would
report at least the benchmark's own ~20 MB. Forked from the launcher, that floor is
the launcher's ~5 MB.

Alongside, /proc/stat tells how much CPU the rest of the machine used meanwhile.
Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

# argv: result file, timeout in seconds (0: none), the command. Writes
# "seconds maxrss_kib exit_code cpu_seconds" to the result file.
_LAUNCHER = """
import os, sys, time
out, timeout, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
if timeout:
    import signal
    signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
    signal.alarm(timeout)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
if timeout:
    signal.alarm(0)
with open(out, "w") as f:
    cpu = usage.ru_utime + usage.ru_stime
    f.write(f"{seconds!r} {usage.ru_maxrss} {os.waitstatus_to_exitcode(status)} {cpu!r}")
"""

T = TypeVar("T")


class BenchmarkError(Exception):
    """The benchmark cannot produce trustworthy figures; the message says why."""


@dataclass
class Run:
    """One run of one command."""

    seconds: float
    maxrss_kib: int
    returncode: int
    stdout: bytes
    stderr: bytes
    cpu: float = 0.0  # the command's user + system seconds (its whole process tree)
    others_cpu: float = 0.0  # CPU seconds everything else on the machine used meanwhile

    def output(self) -> str:
        """stdout and stderr, decoded, joined by a newline."""
        return self.stdout.decode(errors="replace") + "\n" + self.stderr.decode(errors="replace")


class Measured:
    """Summary figures over the timed `runs` of a command (mixed into a dataclass)."""

    runs: list[Run]

    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def peak_mb(self) -> float:
        """The largest ru_maxrss, MB = 10^6 bytes."""
        return max(r.maxrss_kib for r in self.runs) * 1024 / 1e6

    def median_cpu(self) -> float:
        return statistics.median(r.cpu for r in self.runs)

    def max_others(self) -> float:
        return max(r.others_cpu for r in self.runs)


@dataclass
class Command(Measured):
    """A command a benchmark runs, and its timed runs."""

    key: str
    label: str
    argv: list[str]
    stdin: Path | None = None
    runs: list[Run] = field(default_factory=list)
    retried: int = 0  # timed runs thrown away because other load disturbed them


def run(argv: list[str], cwd: Path, stdin: Path | None = None, timeout: int = 0) -> Run:
    """Run one command as its own process; its wall time and its own ru_maxrss (os.wait4).

    A command still running after `timeout` seconds (0: no limit) is killed (SIGKILL).
    """
    with (
        tempfile.TemporaryDirectory() as scratch,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        open(stdin or os.devnull, "rb") as inp,
    ):
        result = Path(scratch) / "result"
        # Resolved here: a PATH search in the forked child would fault in pages, raising the floor.
        program = shutil.which(argv[0])
        if program is None:
            raise BenchmarkError(f"{argv[0]}: not found on PATH")
        program = os.path.abspath(program)  # the command runs in another directory
        launcher = [
            sys.executable,
            "-S",
            "-I",
            "-c",
            _LAUNCHER,
            str(result),
            str(timeout),
            program,
            *argv[1:],
        ]
        busy_before = busy_seconds()
        done = subprocess.run(launcher, cwd=cwd, stdin=inp, stdout=out, stderr=err, check=False)
        busy = busy_seconds() - busy_before
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        if done.returncode != 0 or not result.exists():
            raise BenchmarkError(
                f"launcher failed for {' '.join(argv)}: {stderr.decode(errors='replace')}"
            )
        seconds, maxrss, code, cpu = result.read_text().split()
        # Machine-wide busy time minus the command's own: what other processes (and the
        # launcher's own start, a few hundredths) took from the cores meanwhile.
        others = max(0.0, busy - float(cpu))
        return Run(float(seconds), int(maxrss), int(code), stdout, stderr, float(cpu), others)


def build_in_child(argv: list[str], meta_path: Path, what: str) -> dict[str, object]:
    """Run a build script (`argv`, niced) that prints its metadata as JSON on its last
    line; the metadata, also written to `meta_path`."""
    done = subprocess.run(["nice", "-n", "19", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"building {what} failed:\n{done.stderr[-4000:]}")
    meta: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def disturbed(result: Run, cores: int) -> bool:
    """Other processes took a noticeable share of the cores during this run."""
    return result.others_cpu > max(0.1, 0.05 * result.seconds * cores)


class Timed(Protocol):
    """A command whose timed runs are collected (bench_digests.Command, ...)."""

    runs: list[Run]
    retried: int


C = TypeVar("C", bound=Timed)


def timed_rounds(
    commands: Sequence[C],
    rounds: int,
    retries: int,
    cores: int,
    run_one: Callable[[C], Run],
    name: str,
) -> None:
    """`rounds` timed runs of every command, in rotating order; a run disturbed by
    other load is run again, at most `retries` times (counted in `retried`)."""
    for round_ in range(rounds):
        for command in rotated(list(commands), round_):
            for attempt in range(retries + 1):
                result = run_one(command)
                if not disturbed(result, cores) or attempt == retries:
                    break
                command.retried += 1
            command.runs.append(result)
        print(f"  {name}: round {round_ + 1}/{rounds} done", file=sys.stderr)


def publish(report: str, output: Path | None) -> None:
    """Print the Markdown report, and write it to `output` too when given."""
    print(report)
    if output:
        output.write_text(report)


def checked(command: Command, cwd: Path) -> Run:
    """One run of `command` in `cwd`; a non-zero exit stops the benchmark."""
    result = run(command.argv, cwd, command.stdin)
    if result.returncode != 0:
        raise BenchmarkError(
            f"{command.label} exited {result.returncode} in {cwd}\n"
            f"  command: {' '.join(command.argv)}\n"
            f"  stdout: {result.stdout.decode(errors='replace').strip()[-2000:]}\n"
            f"  stderr: {result.stderr.decode(errors='replace').strip()[-2000:]}"
        )
    return result


def rotated(items: list[T], round_: int) -> list[T]:
    """The order of one timed round: `items` rotated left by `round_`, so that each
    round starts one command later than the one before."""
    shift = round_ % len(items)
    return items[shift:] + items[:shift]


def command_line(script: str, argv: list[str] | None) -> str:
    """How the benchmark `script` (a file name in this folder) was run, from the
    repository root, for the report: `argv`, or this process's arguments if None."""
    given = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{script}", *given])


def busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat); 0 where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or "unknown"."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def memory_total() -> str:
    """Total RAM (/proc/meminfo) as "N.N GiB", or "unknown"."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    return "unknown"


def source_state(repo: Path) -> str | None:
    """`repo`'s commit and whether integrity/ had uncommitted changes, as
    "git abc1234[ with uncommitted changes in integrity/]"; None where git cannot tell."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "integrity"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"git {head}" + (" with uncommitted changes in integrity/" if dirty else "")
