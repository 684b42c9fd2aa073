#!/usr/bin/env python3
"""Benchmark the safety scan against joblib.load on models made of many small objects.

    python benchmarks/bench_scan_objects.py [--data-dir DIR] [--runs N] [--objects N]
                                            [--compare DIR ...] [--output FILE]
                                            [--quiet-threshold F] [--quiet-seconds S]
                                            [--quiet-timeout S] [--delete-data]

Models (real scikit-learn objects, fitted on a 50 x 4 random matrix, in a niced child):

  pipeline      Pipeline of --objects transformers (StandardScaler and MinMaxScaler in
                turn) and a LogisticRegression
  featureunion  FeatureUnion of --objects transformers (StandardScaler, MinMaxScaler,
                RobustScaler in turn)
  dict          a dict of --objects small estimators (LogisticRegression,
                DecisionTreeClassifier(max_depth=2), StandardScaler in turn)

Each is dumped raw (joblib.dump(model, f)) and compressed (compress=3, zlib): six files,
cached under --data-dir (default benchmarks/data/scan_objects/, which git ignores) while
--objects and the library versions match; --delete-data removes them at the end.

On each file, in one run, it measures:

  scan                 python -m integrity scan FILE           (this repository)
  joblib.load          python -c "import joblib; joblib.load(FILE)"   (the baseline)
  scan in-process      scan_path(FILE) timed inside the process, imports excluded
  load in-process      joblib.load(FILE) timed inside the process, imports excluded
                       (scikit-learn's modules the models name imported beforehand)
  scan (DIR)           with --compare DIR: the same two scan commands with the
                       `integrity` package of another checkout (e.g. main's), to give
                       before/after figures from the same rounds

Each command runs as its own process, forked by measure.py's launcher (wall time and
ru_maxrss from os.wait4); one untimed warm-up run of each, then --runs rounds (default
5) in rotating order; figures are medians. Before every timed run the benchmark waits
until the machine is quiet (below --quiet-threshold of all cores busy over the last
--quiet-seconds, per /proc/stat), or runs anyway after --quiet-timeout and says so.
In-process commands print the seconds they timed; that figure is the one reported.

Verdicts: every scan must call every file safe (exit 0) and the in-process scans must
agree; with --compare, both checkouts must give the same verdict. Otherwise the row
says so and the benchmark exits 1. Standard library only in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # measure.py and bench_scan.py, beside this script

import measure  # noqa: E402
from bench_scan import library_versions, wait_quiet  # noqa: E402
from measure import BenchmarkError, Measured, Run, run  # noqa: E402

REPO = HERE.parent
MB = 1_000_000
MODELS = ("pipeline", "featureunion", "dict")
RAW, COMPRESSED = "raw", "compress=3"
META = "meta.json"
TIMEOUT = 1800
SCAN, LOAD = "scan", "joblib.load"
SCAN_IN, LOAD_IN = "scan in-process", "load in-process"
# What the models name: imported before the in-process load is timed.
SKLEARN_IMPORTS = (
    "import joblib, sklearn.pipeline, sklearn.preprocessing, sklearn.linear_model, sklearn.tree"
)

_BUILD = r"""
import json, os, sys
import joblib, numpy, sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier

out, n = sys.argv[1], int(sys.argv[2])
X = numpy.random.RandomState(0).rand(50, 4)
y = (X[:, 0] > 0.5).astype(int)
scalers = (StandardScaler, MinMaxScaler, RobustScaler)
models = {
    "pipeline": Pipeline(
        [(f"s{i}", (StandardScaler, MinMaxScaler)[i % 2]()) for i in range(n)]
        + [("lr", LogisticRegression())]
    ).fit(X, y),
    "featureunion": FeatureUnion(
        [(f"s{i}", scalers[i % 3]()) for i in range(n)]
    ).fit(X, y),
    "dict": {
        f"m{i}": (
            LogisticRegression() if i % 3 == 0
            else DecisionTreeClassifier(max_depth=2, random_state=i) if i % 3 == 1
            else StandardScaler()
        ).fit(X, y)
        for i in range(n)
    },
}
files, sizes = {}, {}
for name, model in models.items():
    for kind, compress in (("raw", 0), ("compress=3", 3)):
        file = f"{name}_{'raw' if not compress else 'compress3'}.joblib"
        joblib.dump(model, os.path.join(out, file + ".tmp"), compress=compress)
        os.replace(os.path.join(out, file + ".tmp"), os.path.join(out, file))
        files[f"{name} {kind}"] = file
        sizes[f"{name} {kind}"] = os.path.getsize(os.path.join(out, file))
print(json.dumps({
    "objects": n,
    "versions": {"sklearn": sklearn.__version__, "joblib": joblib.__version__,
                 "numpy": numpy.__version__},
    "files": files,
    "sizes": sizes,
}))
"""

# argv: the file. Prints the seconds the call took, then the verdict.
_SCAN_IN = r"""
import sys, time
from pathlib import Path
from integrity.safety.scanner import scan_path
started = time.perf_counter()
result = scan_path(Path(sys.argv[1]))
print(time.perf_counter() - started)
print("safe" if result.safe else "unsafe: " + "; ".join(f.code for f in result.findings))
"""

_LOAD_IN = (
    SKLEARN_IMPORTS
    + r"""
import sys, time
started = time.perf_counter()
joblib.load(sys.argv[1])
print(time.perf_counter() - started)
print("loaded")
"""
)


@dataclass
class Command(Measured):
    tool: str
    argv: list[str]
    cwd: Path
    in_process: bool = False
    runs: list[Run] = field(default_factory=list)
    timed: list[float] = field(default_factory=list)  # in-process: the seconds printed
    noisy: int = 0

    def figure(self) -> float:
        """The median of what is compared: the printed seconds in-process, else wall."""
        if self.in_process:
            return statistics.median(self.timed) if self.timed else float("nan")
        return self.median()

    def verdict(self) -> str:
        last = self.runs[-1]
        lines = last.stdout.decode(errors="replace").strip().splitlines()
        if last.returncode != 0:
            return f"exit {last.returncode}: " + " ".join(lines[:1])
        if self.in_process:
            return lines[-1] if lines else "no output"
        if self.tool.startswith(SCAN):
            return lines[0].split()[0] if lines else "no output"
        return "loaded"


@dataclass
class FileBench:
    name: str
    path: Path
    size: int
    commands: list[Command]

    def get(self, tool: str) -> Command:
        return next(c for c in self.commands if c.tool == tool)


def ensure_models(data_dir: Path, objects: int) -> dict[str, object]:
    """The cached model files, built when missing or made for another size or versions."""
    data_dir.mkdir(parents=True, exist_ok=True)
    meta_path = data_dir / META
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        meta = json.loads(meta_path.read_text())
        if (
            meta["objects"] == objects
            and meta["versions"] == library_versions()
            and all(
                (data_dir / meta["files"][k]).stat().st_size == meta["sizes"][k]
                for k in meta["files"]
            )
        ):
            print(f"using the cached models in {data_dir}", file=sys.stderr)
            return dict(meta)
    print(f"building models of {objects} objects in {data_dir} (nice -n 19)...", file=sys.stderr)
    with contextlib.suppress(FileNotFoundError):
        meta_path.unlink()
    argv = [sys.executable, "-c", _BUILD, str(data_dir), str(objects)]
    return measure.build_in_child(argv, meta_path, "the models")


def delete_models(data_dir: Path, meta: dict[str, object] | None) -> None:
    files = meta.get("files") if meta else None
    for name in [META, *(files.values() if isinstance(files, dict) else [])]:
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).unlink()
    with contextlib.suppress(OSError):
        data_dir.rmdir()


def commands_for(path: Path, compare: list[Path]) -> list[Command]:
    python = sys.executable
    file = str(path)
    commands = [
        Command(SCAN, [python, "-m", "integrity", "scan", file], REPO),
        Command(LOAD, [python, "-c", "import sys, joblib; joblib.load(sys.argv[1])", file], REPO),
        Command(SCAN_IN, [python, "-c", _SCAN_IN, file], REPO, in_process=True),
        Command(LOAD_IN, [python, "-c", _LOAD_IN, file], REPO, in_process=True),
    ]
    for other in compare:
        # `python -m` and `-c` put the working folder first on sys.path: its
        # `integrity` package is the one imported.
        commands += [
            Command(f"{SCAN} ({other})", [python, "-m", "integrity", "scan", file], other),
            Command(f"{SCAN_IN} ({other})", [python, "-c", _SCAN_IN, file], other, in_process=True),
        ]
    return commands


def bench_file(bench: FileBench, args: argparse.Namespace) -> None:
    for command in bench.commands:
        run(command.argv, command.cwd, timeout=TIMEOUT)  # warm-up: page cache, pyc files
    for round_ in range(args.runs):
        for command in measure.rotated(bench.commands, round_):
            waited, quiet = wait_quiet(args.quiet_threshold, args.quiet_seconds, args.quiet_timeout)
            result = run(command.argv, command.cwd, timeout=TIMEOUT)
            command.runs.append(result)
            command.noisy += not quiet
            if command.in_process and result.returncode == 0:
                command.timed.append(float(result.stdout.split()[0]))
            print(
                f"  round {round_ + 1}/{args.runs} {command.tool}: {result.seconds:.3f} s"
                + (f" ({command.timed[-1]:.3f} s timed)" if command.in_process else "")
                + f", exit {result.returncode}, waited {waited:.0f} s"
                + ("" if quiet else " (machine never quiet)"),
                file=sys.stderr,
            )


def problems(bench: FileBench) -> list[str]:
    """What is wrong with the verdicts on this file (empty: all safe, all agree)."""
    wrong = []
    for command in bench.commands:
        if command.tool.startswith(SCAN) and command.verdict() != "safe":
            wrong.append(f"{bench.name}: {command.tool} says {command.verdict()}")
        if command.tool.startswith(LOAD) and command.runs[-1].returncode != 0:
            wrong.append(f"{bench.name}: {command.tool} failed")
    return wrong


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def table(benches: list[FileBench], compare: list[Path]) -> str:
    head = (
        "| file | MB | scan s | joblib.load s | ratio | CPU ratio | scan in-process s "
        "| load in-process s | ratio | scan MB | load MB |"
    )
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows = [("", SCAN, SCAN_IN)]
    rows += [(f" ({other})", f"{SCAN} ({other})", f"{SCAN_IN} ({other})") for other in compare]
    for bench in benches:
        load, load_in = bench.get(LOAD), bench.get(LOAD_IN)
        for label, scan_tool, scan_in_tool in rows:
            scan, scan_in = bench.get(scan_tool), bench.get(scan_in_tool)
            lines.append(
                f"| {bench.name}{label} | {bench.size / MB:.2f} | {scan.figure():.3f} "
                f"| {load.figure():.3f} | {_ratio(scan.figure(), load.figure())} "
                f"| {_ratio(scan.median_cpu(), load.median_cpu())} "
                f"| {scan_in.figure():.3f} | {load_in.figure():.3f} "
                f"| {_ratio(scan_in.figure(), load_in.figure())} | {scan.peak_mb():.0f} "
                f"| {load.peak_mb():.0f} |"
            )
    return "\n".join(lines) + "\n"


def noise(benches: list[FileBench]) -> str:
    noisy = sum(c.noisy for b in benches for c in b.commands)
    others = max(c.max_others() for b in benches for c in b.commands)
    total = sum(len(c.runs) for b in benches for c in b.commands)
    return (
        f"{noisy} of {total} timed runs started on a busy machine; other processes took "
        f"at most {others:.2f} CPU s during any one run.\n"
    )


def machine(meta: dict[str, object]) -> str:
    versions = meta["versions"]
    assert isinstance(versions, dict)
    return (
        f"- CPU: {measure.cpu_model()}, {os.cpu_count()} cores; RAM {measure.memory_total()}; "
        f"{platform.system()} {platform.release()}\n"
        f"- Python {platform.python_version()} ({sys.executable})\n"
        f"- scikit-learn {versions['sklearn']}, joblib {versions['joblib']}, "
        f"numpy {versions['numpy']}\n"
        f"- model-integrity: {measure.source_state(REPO) or 'source state unknown'}\n"
        f"- models of {meta['objects']} objects each\n"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data" / "scan_objects")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command")
    parser.add_argument("--objects", type=int, default=3000, help="objects per model")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        help="another checkout whose scanner is measured too (repeatable)",
    )
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument("--quiet-threshold", type=float, default=0.10)
    parser.add_argument("--quiet-seconds", type=float, default=10.0)
    parser.add_argument("--quiet-timeout", type=float, default=120.0)
    parser.add_argument("--delete-data", action="store_true", help="remove the model files")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.objects < 1:
        parser.error("--runs and --objects must be at least 1")
    for other in args.compare:
        if not (other / "integrity" / "__init__.py").exists():
            parser.error(f"--compare {other}: no integrity package there")
    args.compare = [other.resolve() for other in args.compare]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    meta: dict[str, object] | None = None
    benches: list[FileBench] = []
    try:
        meta = ensure_models(args.data_dir, args.objects)
        files, sizes = meta["files"], meta["sizes"]
        assert isinstance(files, dict) and isinstance(sizes, dict)
        for model in args.models:
            for kind in (RAW, COMPRESSED):
                name = f"{model} {kind}"
                path = (args.data_dir / files[name]).resolve()
                bench = FileBench(name, path, sizes[name], commands_for(path, args.compare))
                print(f"{name}: {path} ({sizes[name] / MB:.2f} MB)", file=sys.stderr)
                bench_file(bench, args)
                benches.append(bench)
    except BenchmarkError as exc:
        print(f"bench_scan_objects: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.delete_data:
            delete_models(args.data_dir, meta)
    wrong = [line for bench in benches for line in problems(bench)]
    report = (
        f"Command: `{measure.command_line('bench_scan_objects.py', argv)}`\n\n"
        f"{machine(meta)}\n"
        f"{table(benches, args.compare)}\n"
        f"Medians of {args.runs} runs; ratio: scan over joblib.load, same file, same run "
        "(CPU ratio: of user + system CPU seconds, less sensitive to a busy machine). "
        f"{noise(benches)}"
        + ("".join(f"\n- VERDICT PROBLEM: {line}" for line in wrong) + "\n" if wrong else "")
    )
    print(report)
    if args.output:
        args.output.write_text(report)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
