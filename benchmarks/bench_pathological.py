#!/usr/bin/env python3
"""Benchmark the safety scan on pathological inputs: time per byte against an ordinary model's.

    python benchmarks/bench_pathological.py [--runs N] [--scale F] [--output FILE]

Inputs (tests/pathological_inputs.py): small pickles that once cost the scanner far more
than their size (memo-shared wide tuples handed to a call, one wide tuple passed to many
calls, long names and keys used again and again through the memo, many joblib arrays on
a deep stack, a wrapper rebuilt with a wide shape), each built at its test scale times
--scale (default 1). The ordinary model: a real scikit-learn model of many small objects
(300 fitted StandardScaler + LogisticRegression pipelines in a list, joblib.dump,
uncompressed), built by a child process.

Each scan runs in its own process (measure.run: forked by a minimal launcher), which
times `scan_path` alone with time.perf_counter and prints it; the benchmark takes the
median of --runs runs (default 5; rounds rotate the order) and reports, for each input,
its size, the scan's median seconds, seconds per byte, and the ratio of that to the
ordinary model's seconds per byte in the same run. A linear scan keeps every ratio a
small constant; the test suite asserts the same on smaller inputs.

Python standard library only in this process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # measure.py, beside this script
sys.path.insert(0, str(REPO / "tests"))  # pathological_inputs.py

import measure  # noqa: E402
from pathological_inputs import PATHOLOGICAL  # noqa: E402

ORDINARY = "ordinary model"
SCAN_TIMER = """
import sys, time
from pathlib import Path
from integrity.safety.scanner import scan_path
start = time.perf_counter()
result = scan_path(Path(sys.argv[1]))
print(time.perf_counter() - start, len(result.findings))
"""
BUILD_ORDINARY = """
import sys
import joblib
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
X, y = make_classification(n_samples=200, n_features=20, random_state=0)
models = [make_pipeline(StandardScaler(), LogisticRegression(max_iter=50)).fit(X, y)
          for _ in range(300)]
joblib.dump(models, sys.argv[1])
"""


@dataclass
class Input:
    name: str
    path: Path
    size: int
    seconds: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.seconds)

    def per_byte(self) -> float:
        return self.median() / self.size


def scan_seconds(path: Path) -> float:
    run = measure.run([sys.executable, "-c", SCAN_TIMER, str(path)], REPO, timeout=600)
    if run.returncode != 0:
        raise measure.BenchmarkError(f"scan of {path.name} failed: {run.output()[-500:]}")
    return float(run.stdout.split()[0])


def build_inputs(folder: Path, scale: float) -> list[Input]:
    ordinary = folder / "ordinary.joblib"
    built = measure.run([sys.executable, "-c", BUILD_ORDINARY, str(ordinary)], REPO)
    if built.returncode != 0:
        raise measure.BenchmarkError(f"building the ordinary model failed: {built.output()}")
    inputs = [Input(ORDINARY, ordinary, ordinary.stat().st_size)]
    for name, (build, base) in PATHOLOGICAL.items():
        path = folder / f"{name}.pkl"
        path.write_bytes(build(max(1, int(base * scale))))
        inputs.append(Input(name, path, path.stat().st_size))
    return inputs


def table(inputs: list[Input]) -> str:
    ordinary = inputs[0].per_byte()
    rows = [
        "| input | bytes | scan (median s) | µs per byte | ratio to ordinary |",
        "|---|---:|---:|---:|---:|",
    ]
    for item in inputs:
        rows.append(
            f"| {item.name} | {item.size:,} | {item.median():.3f} | "
            f"{item.per_byte() * 1e6:.2f} | {item.per_byte() / ordinary:.2f} |"
        )
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per input")
    parser.add_argument("--scale", type=float, default=1.0, help="input scale factor")
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.scale <= 0:
        parser.error("--runs must be at least 1 and --scale positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            inputs = build_inputs(Path(scratch), args.scale)
            for item in inputs:  # warm-up: page cache, .pyc files
                scan_seconds(item.path)
            for round_ in range(args.runs):
                for item in measure.rotated(inputs, round_):
                    item.seconds.append(scan_seconds(item.path))
        except measure.BenchmarkError as exc:
            print(f"bench_pathological: {exc}", file=sys.stderr)
            return 1
    report = (
        f"Command: `{measure.command_line('bench_pathological.py', argv)}`\n\n"
        f"- CPU: {measure.cpu_model()}; RAM {measure.memory_total()}\n"
        f"- model-integrity: {measure.source_state(REPO) or 'source state unknown'}\n\n"
        f"{table(inputs)}"
    )
    print(report)
    if args.output:
        args.output.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
