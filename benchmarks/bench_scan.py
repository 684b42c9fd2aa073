#!/usr/bin/env python3
"""Benchmark the static safety scan against joblib.load, picklescan and modelscan.

    python benchmarks/bench_scan.py [--data-dir DIR] [--runs N] [--size-mb 500]
                                    [--output FILE] [--tools-dir DIR]
                                    [--quiet-threshold F] [--quiet-seconds S]
                                    [--quiet-timeout S] [--delete-data]

Model: a real scikit-learn RandomForestClassifier fitted (n_jobs=2, niced) on synthetic
data from sklearn.datasets.make_classification, with n_estimators tuned so that its
uncompressed joblib file is about --size-mb MB; it is dumped twice, raw
(joblib.dump(model, f)) and compressed (compress=3, zlib). Both files are built once
and cached under --data-dir (default benchmarks/data/scan/, which git ignores) while
the size asked for and the library versions match; --delete-data removes them at the end.

On each file, in one run, it measures:

  model-integrity scan   python -m integrity scan FILE       (this repository's scanner)
  joblib.load            python -c "import joblib; joblib.load(FILE)"   (the baseline)
  picklescan             picklescan --path FILE               (own venv under --tools-dir)
  modelscan              modelscan -p FILE                    (own venv under --tools-dir)

picklescan and modelscan are installed from PyPI with pip (niced) into their own
virtual environments under --tools-dir (default /tmp/bench-scan-tools) when missing.

Wall time is the median of --runs timed runs (default 3), after one untimed warm-up run
of every command (so the files are in the page cache: the figures are CPU, not disk);
commands run in rotating order each round. Before every timed run the benchmark waits
until the machine is quiet: less than --quiet-threshold (default 10 %) of all cores
busy over the last --quiet-seconds (default 20 s), per /proc/stat; after
--quiet-timeout (default 600 s) it runs anyway and the table says so. The table also
shows the most CPU time other processes took during any timed run of a command.

Peak RSS is the `ru_maxrss` that os.wait4 returns for the command's own process, max
over the timed runs, MB = 10^6 bytes. Each command is forked by a minimal launcher
(`python -S -I`), because Linux counts the pre-exec memory of a child (a copy of its
parent) into its ru_maxrss; the launcher keeps that floor at a few MB. The ratio is the
command's median time over joblib.load's median time on the same file, in this run.

Verdicts: the scanner must call both files safe (exit 0); if it does not, the run still
finishes, the row says so and the benchmark exits 1. For picklescan and modelscan the
table gives a short verdict read from their output, and the report lists their exit
codes and the key lines of their output (what they really say about the file).
Python standard library only in this process; scikit-learn, joblib and numpy are used
by child processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # measure.py, beside this script

import measure  # noqa: E402
from measure import BenchmarkError, Measured, Run, busy_seconds, run  # noqa: E402

REPO = HERE.parent
MB = 1_000_000
BASELINE = "joblib.load"
SCAN = "model-integrity scan"
# What joblib.load of a forest imports before it reads any array.
IMPORTS = "import joblib, sklearn.ensemble"
RAW, COMPRESSED = "raw", "compress=3"
# The files this benchmark writes in --data-dir, and only these are deleted.
MODEL_FILES = {RAW: "forest_raw.joblib", COMPRESSED: "forest_compress3.joblib"}
META = "meta.json"
TIMEOUT = 3600  # seconds for one command run; longer is killed and reported

# Built in a child process (niced), so this process never holds the model.
# argv: directory, target size in bytes, MODEL_FILES as JSON. Prints the metadata as JSON.
_BUILD = r"""
import io, json, os, sys, time
import joblib, numpy, sklearn
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

out, target, files = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
params = dict(n_samples=200_000, n_features=20, n_informative=10, n_redundant=4,
              flip_y=0.1, random_state=0)
X, y = make_classification(**params)
forest = dict(min_samples_leaf=1, n_jobs=2, random_state=0)
pilot = RandomForestClassifier(n_estimators=8, **forest).fit(X, y)
buffer = io.BytesIO()
joblib.dump(pilot, buffer)
per_tree = len(buffer.getvalue()) / 8
del pilot, buffer
n_estimators = max(1, round(target / per_tree))
started = time.perf_counter()
model = RandomForestClassifier(n_estimators=n_estimators, **forest).fit(X, y)
fit_seconds = time.perf_counter() - started
accuracy = float(model.score(X[:20_000], y[:20_000]))
joblib.dump(model, os.path.join(out, files["raw"] + ".tmp"))
joblib.dump(model, os.path.join(out, files["compress=3"] + ".tmp"), compress=3)
sizes = {}
for kind, name in files.items():
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
    sizes[kind] = os.path.getsize(os.path.join(out, name))
meta = {
    "target_bytes": target,
    "versions": {"sklearn": sklearn.__version__, "joblib": joblib.__version__,
                 "numpy": numpy.__version__},
    "data": params,
    "forest": dict(forest, n_estimators=n_estimators),
    "nodes": int(sum(t.tree_.node_count for t in model.estimators_)),
    "pilot_bytes_per_tree": per_tree,
    "fit_seconds": fit_seconds,
    "train_accuracy_first_20k": accuracy,
    "files": files,
    "sizes": sizes,
}
print(json.dumps(meta))
"""

_VERSIONS = r"""
import json, joblib, numpy, sklearn
print(json.dumps({"sklearn": sklearn.__version__, "joblib": joblib.__version__,
                  "numpy": numpy.__version__}))
"""


@dataclass
class Command(Measured):
    tool: str
    argv: list[str]
    warmup: Run | None = None
    runs: list[Run] = field(default_factory=list)
    noisy: int = 0  # timed runs started on a busy machine (the wait for quiet gave up)

    def exit_codes(self) -> list[int]:
        return sorted({r.returncode for r in [*self.runs, *([self.warmup] if self.warmup else [])]})


@dataclass
class FileBench:
    kind: str
    path: Path
    size: int
    commands: list[Command]


# --- data --------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _VERSIONS], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchmarkError(f"scikit-learn/joblib/numpy not importable:\n{done.stderr}")
    versions: dict[str, str] = json.loads(done.stdout)
    return versions


def delete_model(data_dir: Path) -> None:
    """Remove what ensure_model writes, then the folder if nothing else is in it:
    --data-dir may name a folder that holds other files too."""
    for name in (META, *MODEL_FILES.values(), *(f"{n}.tmp" for n in MODEL_FILES.values())):
        with contextlib.suppress(FileNotFoundError):
            (data_dir / name).unlink()
    with contextlib.suppress(OSError):
        data_dir.rmdir()


def ensure_model(data_dir: Path, size_mb: float) -> dict[str, object]:
    """The cached forest files, built when missing or made for another size or versions."""
    data_dir.mkdir(parents=True, exist_ok=True)
    meta_path = data_dir / META
    target = int(size_mb * MB)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        meta = json.loads(meta_path.read_text())
        files: dict[str, str] = meta["files"]
        sizes: dict[str, int] = meta["sizes"]
        if (
            meta["target_bytes"] == target
            and meta["versions"] == library_versions()
            and all((data_dir / files[k]).stat().st_size == sizes[k] for k in files)
        ):
            print(f"using the cached model in {data_dir}", file=sys.stderr)
            return dict(meta)
    print(
        f"building a RandomForestClassifier of about {size_mb:g} MB in {data_dir} "
        "(nice -n 19; several minutes)...",
        file=sys.stderr,
    )
    with contextlib.suppress(FileNotFoundError):
        meta_path.unlink()
    argv = [sys.executable, "-c", _BUILD, str(data_dir), str(target), json.dumps(MODEL_FILES)]
    return measure.build_in_child(argv, meta_path, "the model")


def ensure_tool(tools_dir: Path, package: str) -> Path:
    """The console script of `package`, pip-installed (niced) into its own venv if missing."""
    venv = tools_dir / package
    script = venv / "bin" / package
    if not script.exists():
        print(f"installing {package} into {venv} (nice -n 19)...", file=sys.stderr)
        for argv in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "--quiet", package],
        ):
            done = subprocess.run(
                ["nice", "-n", "19", *argv], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise BenchmarkError(f"{' '.join(argv)} failed:\n{done.stderr[-4000:]}")
    return script


def tool_version(script: Path, package: str) -> str:
    python = script.parent / "python"
    done = subprocess.run(
        [
            str(python),
            "-c",
            f"import importlib.metadata as m; print(m.version({package!r}))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


# --- running -----------------------------------------------------------------------------


def wait_quiet(threshold: float, window: float, timeout: float) -> tuple[float, bool]:
    """Wait until less than `threshold` of all cores were busy over the last `window`
    seconds; (seconds waited, True) or, after `timeout`, (seconds waited, False)."""
    cores = os.cpu_count() or 1
    started = time.monotonic()
    samples: deque[tuple[float, float]] = deque()
    while True:
        now = time.monotonic()
        samples.append((now, busy_seconds()))
        while len(samples) > 1 and now - samples[1][0] >= window:
            samples.popleft()
        then, busy_then = samples[0]
        if now - then >= window:
            share = (samples[-1][1] - busy_then) / ((now - then) * cores)
            if share < threshold:
                return now - started, True
        if now - started >= timeout:
            return now - started, False
        time.sleep(1.0)


def commands_for(path: Path, picklescan: Path, modelscan: Path) -> list[Command]:
    python = sys.executable
    load = "import sys, joblib; joblib.load(sys.argv[1])"
    return [
        Command(SCAN, [python, "-m", "integrity", "scan", str(path)]),
        Command(BASELINE, [python, "-c", load, str(path)]),
        Command("picklescan", [str(picklescan), "--path", str(path)]),
        Command("modelscan", [str(modelscan), "-p", str(path)]),
        # References: what interpreter start-up and imports alone cost.
        Command("(python -m integrity --version)", [python, "-m", "integrity", "--version"]),
        Command("(import joblib, sklearn.ensemble)", [python, "-c", IMPORTS]),
    ]


def bench_file(bench: FileBench, args: argparse.Namespace) -> None:
    for command in bench.commands:
        print(f"  warm-up: {command.tool}", file=sys.stderr)
        command.warmup = run(command.argv, REPO, timeout=TIMEOUT)
    for round_ in range(args.runs):
        for command in measure.rotated(bench.commands, round_):
            waited, quiet = wait_quiet(args.quiet_threshold, args.quiet_seconds, args.quiet_timeout)
            result = run(command.argv, REPO, timeout=TIMEOUT)
            command.runs.append(result)
            command.noisy += not quiet
            print(
                f"  round {round_ + 1}/{args.runs} {command.tool}: {result.seconds:.2f} s, "
                f"{result.maxrss_kib * 1024 / MB:.0f} MB, exit {result.returncode}, "
                f"others {result.others_cpu:.2f} CPU s, waited {waited:.0f} s"
                + ("" if quiet else " (machine never quiet)"),
                file=sys.stderr,
            )


# --- verdicts ----------------------------------------------------------------------------

_KEY_LINE = re.compile(
    r"error|warn|skip|scanned|infected|dangerous|issue|total|safe|unsafe|not |unable|"
    r"fail|exception|unsupported|no |found",
    re.IGNORECASE,
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def shown_output(run_: Run, path: Path) -> str:
    """A run's output without ANSI colours, `path` shortened to its file name."""
    return _ANSI.sub("", run_.output()).replace(str(path), path.name)


def key_lines(run_: Run, path: Path, limit: int = 12) -> list[str]:
    """The lines of a run's output that carry its verdict."""
    lines = [" ".join(line.split()) for line in shown_output(run_, path).splitlines()]
    lines = [line for line in lines if line and not set(line) <= set("-=─━")]
    keyed = [line for line in lines if _KEY_LINE.search(line)]
    picked = keyed or lines
    if len(picked) > limit:
        picked = [*picked[: limit - 1], f"... ({len(picked) - limit + 1} more lines)"]
    return picked


def verdict(command: Command, path: Path) -> str:
    """A short verdict from the last timed run's exit code and output."""
    last = command.runs[-1]
    text = shown_output(last, path)
    code = last.returncode
    if code < 0:
        return f"killed by signal {-code}" + (" (timeout)" if last.seconds >= TIMEOUT else "")
    if command.tool == SCAN:
        first = text.strip().splitlines()[0] if text.strip() else ""
        word = "safe" if code == 0 and first.startswith("safe") else "NOT SAFE (bug)"
        inside = first[first.find("(") :] if "(" in first else ""
        return f"{word}, exit {code} {inside}".strip()
    if command.tool == BASELINE:
        return "loaded" if code == 0 else f"load failed, exit {code}"
    if command.tool.startswith("("):
        return "reference" if code == 0 else f"failed, exit {code}"
    if command.tool == "picklescan":
        parts = [_clip(m.group(0)) for m in re.finditer(r"(ERROR|WARNING): .*", text)][:2]
        infected = re.search(r"Infected files: *(\d+)", text)
        if infected:
            parts.append(f"{infected.group(1)} infected")
        return f"exit {code}: " + ("; ".join(parts) or "see output")
    if command.tool == "modelscan":
        meaning = {0: "no issues", 1: "issues found", 2: "scan errors", 3: "nothing scanned"}
        parts = []
        if "No issues found" in text:
            parts.append('prints "No issues found!"')
        issues = re.search(r"Total Issues: *(\d+)", text)
        if issues:
            parts.append(f"{issues.group(1)} issues")
        skipped = re.search(r"Total skipped: *(\d+)", text)
        if skipped and skipped.group(1) != "0":
            parts.append(f"{skipped.group(1)} skipped")
        errors = [
            _clip(m.group(0)) for m in re.finditer(r"(Parsing error|Exception|Error): .*", text)
        ]
        if errors:
            parts.append("error " + errors[0])
        return f"exit {code} ({meaning.get(code, '?')}): " + ("; ".join(parts) or "see output")
    return f"exit {code}"


def _clip(line: str, width: int = 110) -> str:
    line = " ".join(line.split())
    return line if len(line) <= width else line[: width - 3] + "..."


# --- report ------------------------------------------------------------------------------


def table(benches: list[FileBench]) -> str:
    lines = [
        "| tool | file | median s | vs joblib.load | peak RSS MB | verdict | runs | "
        "others' CPU s (max) |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for bench in benches:
        base = next(c for c in bench.commands if c.tool == BASELINE).median()
        label = f"{bench.kind} ({bench.size / MB:.0f} MB)"
        for command in bench.commands:
            every = ", ".join(f"{r.seconds:.2f}" for r in command.runs)
            note = f"; {command.noisy} on a busy machine" if command.noisy else ""
            lines.append(
                f"| {command.tool} | {label} | {command.median():.2f} "
                f"| {command.median() / base:.2f}x | {command.peak_mb():.0f} "
                f"| {verdict(command, bench.path)} | {every}{note} "
                f"| {command.max_others():.2f} |"
            )
    return "\n".join(lines) + "\n"


def reports(benches: list[FileBench]) -> str:
    out: list[str] = []
    for bench in benches:
        for command in bench.commands:
            if command.tool == BASELINE or command.tool.startswith("("):
                continue
            last = command.runs[-1]
            out.append(
                f"- **{command.tool}** on {bench.kind} `{bench.path.name}`: exit "
                f"{'/'.join(map(str, command.exit_codes()))}"
            )
            out.extend(
                "    - `" + line.replace("`", "'") + "`" for line in key_lines(last, bench.path)
            )
    return "\n".join(out) + "\n"


def machine(meta: dict[str, object], tools: dict[str, str]) -> str:
    cpu = measure.cpu_model()
    memory = measure.memory_total()
    versions = meta["versions"]
    assert isinstance(versions, dict)
    forest = meta["forest"]
    assert isinstance(forest, dict)
    return (
        f"- CPU: {cpu}, {os.cpu_count()} cores; RAM {memory}; "
        f"{platform.system()} {platform.release()}\n"
        f"- Python {platform.python_version()} ({sys.executable})\n"
        f"- scikit-learn {versions['sklearn']}, joblib {versions['joblib']}, "
        f"numpy {versions['numpy']}; picklescan {tools['picklescan']}, "
        f"modelscan {tools['modelscan']} (each in its own venv)\n"
        f"- model-integrity: {measure.source_state(REPO) or 'source state unknown'}\n"
        f"- model: RandomForestClassifier(n_estimators={forest['n_estimators']}, "
        f"min_samples_leaf={forest['min_samples_leaf']}), {meta['nodes']:,} tree nodes, "
        f"fitted on make_classification({_params(meta['data'])})\n"
    )


def _params(data: object) -> str:
    assert isinstance(data, dict)
    return ", ".join(f"{k}={v}" for k, v in data.items())


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data" / "scan")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per command")
    parser.add_argument("--size-mb", type=float, default=500.0, help="raw file size, MB")
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument("--tools-dir", type=Path, default=Path("/tmp/bench-scan-tools"))
    parser.add_argument("--quiet-threshold", type=float, default=0.10)
    parser.add_argument("--quiet-seconds", type=float, default=20.0)
    parser.add_argument("--quiet-timeout", type=float, default=600.0)
    parser.add_argument("--delete-data", action="store_true", help="remove the model files")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        picklescan = ensure_tool(args.tools_dir, "picklescan")
        modelscan = ensure_tool(args.tools_dir, "modelscan")
        tools = {
            "picklescan": tool_version(picklescan, "picklescan"),
            "modelscan": tool_version(modelscan, "modelscan"),
        }
        meta = ensure_model(args.data_dir, args.size_mb)
        files = meta["files"]
        sizes = meta["sizes"]
        assert isinstance(files, dict) and isinstance(sizes, dict)
        benches = []
        for kind in (RAW, COMPRESSED):
            path = args.data_dir / files[kind]
            bench = FileBench(kind, path, sizes[kind], commands_for(path, picklescan, modelscan))
            print(f"{kind}: {path} ({sizes[kind] / MB:.0f} MB)", file=sys.stderr)
            bench_file(bench, args)
            benches.append(bench)
    except BenchmarkError as exc:
        print(f"bench_scan: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.delete_data:
            delete_model(args.data_dir)
    report = (
        f"Command: `{measure.command_line('bench_scan.py', argv)}`\n\n"
        f"{machine(meta, tools)}\n"
        f"{table(benches)}\n"
        f"What the other scanners report (exit codes of all runs; key lines of the last):\n\n"
        f"{reports(benches)}"
    )
    print(report)
    if args.output:
        args.output.write_text(report)
    if not all(verdict(b.commands[0], b.path).startswith("safe") for b in benches):
        for bench in benches:
            print(
                f"scanner output on {bench.path}:\n{bench.commands[0].runs[-1].output()}",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
