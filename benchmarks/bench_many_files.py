#!/usr/bin/env python3
"""Benchmark model-integrity on many small files, and its start-up, against the
tools it replaces; optionally an older source tree beside the current one.

    python benchmarks/bench_many_files.py [--data-dir DIR] [--counts 20000,50000]
                                          [--file-size BYTES] [--runs N] [--startup-runs N]
                                          [--retries N] [--before DIR] [--output FILE]
                                          [--delete-data]

Many small files (one data set per --counts entry, --file-size bytes each, 200 per
folder under model/), in one run:

  sha256sum -c     sha256sum -c --quiet SUMS          (coreutils; the baseline)
  openssl          xargs -P <cores> -n 1000 openssl dgst -sha256  (batched, parallel)
  init             model-integrity init --model model --force
  verify digests   model-integrity verify --only digests  (against that manifest)

Start-up (a manifest of one 3-byte file), each against `python -c pass` with the
same interpreter and environment (and, as the floor while keeping pydantic,
`python -c 'from pydantic import BaseModel, Field'`):

  python -c pass, python -I -S -c pass (the bare interpreter, a reference),
  model-integrity --version, verify --only digests, verify

model-integrity runs as `python -m integrity` with PYTHONPATH set to the source
tree measured: this repository, and with --before DIR also DIR (for example
`git archive OLD integrity | tar -x -C DIR`), so both are measured in the same
rounds against the same baselines. PYTHONDONTWRITEBYTECODE is removed from the
commands' environment (an installed package has its bytecode; compiling our
modules at every start is not what users pay) and one untimed warm-up run of
every command writes it.

Timing and peak RSS as in bench_digests.py (measure.py: each command forked by a
minimal launcher, ru_maxrss from os.wait4, median of --runs, rotating order,
disturbed runs retried). On a shared machine the CPU columns (user + system
seconds of the command's process tree) move less with other load than wall time;
for the single-threaded commands they are close to wall time on a quiet machine.
Correctness: every verify must exit 0 and every manifest
must hold the digests hashlib computes; otherwise exit 1. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # measure.py, beside this script

import measure  # noqa: E402
from measure import BenchmarkError, Command, Run  # noqa: E402

PER_FOLDER = 200
BASELINE = "sha256sum-c"
STARTUP_BASELINE = "python"


@dataclass(frozen=True)
class Source:
    """A source tree of the `integrity` package to measure."""

    label: str  # "" for this repository, else "before"
    path: Path

    def cli(self, *args: str) -> list[str]:
        env = ["env", "-u", "PYTHONDONTWRITEBYTECODE", f"PYTHONPATH={self.path}"]
        return [*env, sys.executable, "-m", "integrity", *args]

    def name(self, text: str) -> str:
        return f"{text} ({self.label})" if self.label else text


# --- data ------------------------------------------------------------------------------


def ensure_data(root: Path, count: int, size: int) -> tuple[Path, dict[str, str]]:
    """The data set's folder and {path: sha256}; generated if missing or mis-shaped."""
    folder = root / f"{count}x{size}"
    model = folder / "model"
    names = [f"model/d{i // PER_FOLDER:04d}/f{i % PER_FOLDER:04d}.bin" for i in range(count)]
    stamp = folder / "shape.json"
    shape = {"count": count, "size": size, "per_folder": PER_FOLDER}
    if not (stamp.exists() and json.loads(stamp.read_text()) == shape):
        shutil.rmtree(folder, ignore_errors=True)
        model.mkdir(parents=True)
        for name in names:
            path = folder / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(os.urandom(size))
        stamp.write_text(json.dumps(shape))
        print(f"  generated {count} files of {size} bytes in {model}", file=sys.stderr)
    digests = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}
    (folder / "sums.txt").write_text("".join(f"{d}  {n}\n" for n, d in digests.items()))
    (folder / "list.txt").write_text("".join(f"{n}\n" for n in names))
    return folder, digests


def check_manifest(path: Path, expected: dict[str, str]) -> None:
    recorded = {f["path"]: f["sha256"] for f in json.loads(path.read_text())["files"]}
    if recorded != expected:
        wrong = (
            sorted(set(recorded) ^ set(expected))[:5]
            or [k for k in expected if recorded[k] != expected[k]][:5]
        )
        raise BenchmarkError(f"{path}: digests differ from hashlib's, e.g. {wrong}")


def bench_files(
    root: Path, count: int, size: int, sources: list[Source], args: argparse.Namespace, cores: int
) -> list[Command]:
    folder, expected = ensure_data(root, count, size)
    commands = [
        Command(BASELINE, "sha256sum -c", ["sha256sum", "-c", "--quiet", "sums.txt"]),
        Command(
            "openssl",
            f"xargs -P {cores} -n 1000 openssl dgst -sha256",
            ["xargs", "-P", str(cores), "-n", "1000", "openssl", "dgst", "-sha256"],
            stdin=folder / "list.txt",
        ),
    ]
    manifests: dict[str, Path] = {}
    for source in sources:
        manifest = f"model-integrity{'-' + source.label if source.label else ''}.json"
        manifests[source.label] = folder / manifest
        commands += [
            Command(
                f"init{source.label}",
                source.name("model-integrity init --model"),
                source.cli("init", "--manifest", manifest, "--model", "model", "--force"),
            ),
            Command(
                f"verify{source.label}",
                source.name("model-integrity verify --only digests"),
                source.cli("verify", "--manifest", manifest, "--only", "digests", "--no-progress"),
            ),
        ]
    for command in commands:  # warm-up: page cache, bytecode, the manifests verify reads
        measure.checked(command, folder)
    for path in manifests.values():
        check_manifest(path, expected)

    def run_one(command: Command) -> Run:
        result = measure.checked(command, folder)
        if command.key.startswith("init"):
            check_manifest(manifests[command.key.removeprefix("init")], expected)
        return result

    measure.timed_rounds(commands, args.runs, args.retries, cores, run_one, f"{count} files")
    return commands


def bench_startup(
    root: Path, sources: list[Source], args: argparse.Namespace, cores: int
) -> list[Command]:
    folder = root / "startup"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(b"abc")
    python = ["env", "-u", "PYTHONDONTWRITEBYTECODE", sys.executable]
    commands = [
        Command(STARTUP_BASELINE, "python -c pass", [*python, "-c", "pass"]),
        Command("bare", "python -I -S -c pass", [*python, "-I", "-S", "-c", "pass"]),
        # The floor while keeping pydantic: what importing the names we use costs.
        Command(
            "pydantic",
            "python -c 'from pydantic import BaseModel, Field'",
            [*python, "-c", "from pydantic import BaseModel, Field"],
        ),
    ]
    for source in sources:
        subprocess.run(
            source.cli("init", "--model", "model.bin", "--force"),
            cwd=folder,
            check=True,
            capture_output=True,
        )
        commands += [
            Command(
                f"version{source.label}",
                source.name("model-integrity --version"),
                source.cli("--version"),
            ),
            Command(
                f"digests{source.label}",
                source.name("model-integrity verify --only digests"),
                source.cli("verify", "--only", "digests", "--no-progress"),
            ),
            Command(
                f"verify{source.label}",
                source.name("model-integrity verify"),
                source.cli("verify", "--no-progress"),
            ),
        ]
    for command in commands:
        measure.checked(command, folder)
    measure.timed_rounds(
        commands,
        args.startup_runs,
        args.retries,
        cores,
        lambda c: measure.checked(c, folder),
        "start-up",
    )
    return commands


# --- report ----------------------------------------------------------------------------


def files_table(results: list[tuple[int, int, list[Command]]]) -> str:
    lines = [
        "| files | command | median s | vs sha256sum -c | vs openssl | CPU s "
        "| CPU vs sha256sum -c | peak RSS MB | others' CPU s | all runs s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for count, size, commands in results:
        by_key = {c.key: c for c in commands}
        sums, openssl = by_key[BASELINE].median(), by_key["openssl"].median()
        sums_cpu = by_key[BASELINE].median_cpu()
        for command in commands:
            lines.append(
                f"| {count:,} x {size} B | `{command.label}` | {command.median():.3f} "
                f"| {command.median() / sums:.2f}x | {command.median() / openssl:.2f}x "
                f"| {command.median_cpu():.2f} | {command.median_cpu() / sums_cpu:.2f}x "
                f"| {command.peak_mb():.1f} | {_others(command)} | {_every(command)} |"
            )
    return "\n".join(lines) + "\n"


def startup_table(commands: list[Command]) -> str:
    reference = next(c for c in commands if c.key == STARTUP_BASELINE)
    baseline, baseline_cpu = reference.median(), reference.median_cpu()
    lines = [
        "| command | median ms | vs python -c pass | CPU ms | CPU vs python -c pass "
        "| peak RSS MB | others' CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for command in commands:
        lines.append(
            f"| `{command.label}` | {command.median() * 1000:.1f} "
            f"| {command.median() / baseline:.2f}x | {command.median_cpu() * 1000:.1f} "
            f"| {command.median_cpu() / baseline_cpu:.2f}x | {command.peak_mb():.1f} "
            f"| {_others(command)} |"
        )
    return "\n".join(lines) + "\n"


def _others(command: Command) -> str:
    retried = f" ({command.retried} retried)" if command.retried else ""
    return f"{command.max_others():.2f}{retried}"


def _every(command: Command) -> str:
    return ", ".join(f"{r.seconds:.3f}" for r in command.runs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=HERE / "data" / "many")
    parser.add_argument("--counts", default="20000,50000", help="file counts, comma-separated")
    parser.add_argument("--file-size", type=int, default=4096, help="bytes per file")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per command")
    parser.add_argument("--startup-runs", type=int, default=15, help="timed start-up runs")
    parser.add_argument("--retries", type=int, default=3, help="re-runs of a disturbed run")
    parser.add_argument("--before", type=Path, help="an older source tree to measure too")
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument("--delete-data", action="store_true")
    args = parser.parse_args(argv)
    args.counts = [int(c) for c in args.counts.split(",") if c]
    if args.runs < 1 or args.startup_runs < 1 or args.retries < 0:
        parser.error("--runs and --startup-runs must be at least 1, --retries at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sources = [Source("", HERE.parent)]
    if args.before:
        if not (args.before / "integrity" / "__init__.py").is_file():
            print(f"--before {args.before}: holds no integrity package", file=sys.stderr)
            return 1
        sources.append(Source("before", args.before.resolve()))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    root = args.data_dir.resolve()
    try:
        for tool in ("openssl", "sha256sum", "xargs", "env"):
            if not shutil.which(tool):
                raise BenchmarkError(f"{tool} is not on PATH")
        startup = bench_startup(root, sources, args, cores)
        results = []
        for count in args.counts:
            print(f"{count} files: preparing and warming up", file=sys.stderr)
            results.append(
                (
                    count,
                    args.file_size,
                    bench_files(root, count, args.file_size, sources, args, cores),
                )
            )
    except BenchmarkError as exc:
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.delete_data:
            shutil.rmtree(root, ignore_errors=True)
    state = measure.source_state(HERE.parent)
    before = f"; before: {args.before}" if args.before else ""
    report = (
        f"Command: `{measure.command_line('bench_many_files.py', argv)}`\n\n"
        f"- CPU: {measure.cpu_model()}; {cores} cores usable; RAM {measure.memory_total()}\n"
        f"- Python {sys.version.split()[0]} ({sys.executable}); source {state or '?'}{before}\n"
        f"- Median of {args.runs} timed runs (start-up: {args.startup_runs}) after one untimed "
        "warm-up of every command; rotating order; a run during which other processes used "
        f"more than max(0.1 s, 5% of wall x cores) CPU was re-run, at most {args.retries} "
        "times. Peak RSS: ru_maxrss of the command's own process (MB = 10^6 bytes), max over "
        "the timed runs; for xargs the largest single process.\n\n"
        f"Many small files ({PER_FOLDER} per folder):\n\n{files_table(results)}\n"
        f"Start-up (one 3-byte file):\n\n{startup_table(startup)}"
    )
    measure.publish(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
