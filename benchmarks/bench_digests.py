#!/usr/bin/env python3
"""Benchmark model-integrity's SHA-256 work against openssl and coreutils.

    python benchmarks/bench_digests.py [--data-dir DIR] [--runs N] [--small] [--sets NAMES]
                                       [--retries N] [--output FILE] [--cli PATH]
                                       [--delete-data]

On the same files, in one run, it measures:

  hash            model-integrity hash FILE...              (sha256sum-compatible output)
  init            model-integrity init --model DIR --force  (writes the manifest verify uses)
  verify          model-integrity verify [--only digests]   (against that manifest; every
                                                            check registered, and digests alone)
  openssl -P N    xargs -P <cores> -n 1 openssl dgst -sha256  (the baseline: parallel openssl)
  sha256sum       sha256sum FILE...                         (coreutils, one process)
  startup         model-integrity --version                 (interpreter start-up, no hashing)
  floor           true                                      (what measuring itself costs)

Wall time is the median of --runs timed runs (default 3), taken after one untimed
warm-up run of every command, so all data is in the page cache: the figures are
hashing and process cost, not disk speed. Commands run in rotating order each round.
On a shared machine, a timed run during which other processes used a noticeable
share of the cores (measured from /proc/stat) is run again, up to --retries times;
the table shows how much CPU other processes still took and how many runs were
thrown away.

Peak RSS is the `ru_maxrss` that os.wait4 returns for each command's own process,
spawned alone, so the figures never mix. Each command is forked by a minimal
launcher (`python -S -I`) because Linux counts the pre-exec copy of the parent into
a child's ru_maxrss: the `true` row shows that floor (about 5 MB); a figure at
the floor means "at most this". For the xargs pipeline the figure is the largest
single process in its tree (xargs or one openssl); the openssl processes running
at the same time add up to about <cores> times that.

Correctness: every run's `model-integrity hash` output must equal sha256sum's
byte for byte, and openssl's digests and the manifest's digests must match
sha256sum's; otherwise the benchmark stops with exit code 1.

Data sets (generated once under --data-dir, default benchmarks/data/, which git
ignores; reused while the sizes match): 8 files of 256 MiB and one 2 GiB file,
or with --small 8 x 16 MiB and 1 x 128 MiB. Content is pseudo-random: one
os.urandom MiB, repeated with a per-file, per-block counter written over its start.
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # measure.py, beside this script

import measure  # noqa: E402
from measure import BenchmarkError, Run  # noqa: E402

MIB = 1 << 20
GIB = 1 << 30
MANIFEST = "model-integrity.json"
MODEL_DIR = "model"
BASELINE = "openssl"


@dataclass(frozen=True)
class DataSet:
    name: str
    count: int
    size: int

    @property
    def total(self) -> int:
        return self.count * self.size

    def label(self) -> str:
        return f"{self.count} x {_size_text(self.size)}"


FULL = (DataSet("8x256MiB", 8, 256 * MIB), DataSet("1x2GiB", 1, 2 * GIB))
SMALL = (DataSet("8x16MiB", 8, 16 * MIB), DataSet("1x128MiB", 1, 128 * MIB))


@dataclass
class Command(measure.Command):
    hashes: bool = True  # reads every byte of the data set (throughput is meaningful)


def _size_text(n: int) -> str:
    return f"{n // GIB} GiB" if n % GIB == 0 else f"{n // MIB} MiB"


# --- data ------------------------------------------------------------------------------


def ensure_data(root: Path, dataset: DataSet) -> list[str]:
    """The data set's file names (relative to its folder), generated if missing or mis-sized."""
    model = root / dataset.name / MODEL_DIR
    model.mkdir(parents=True, exist_ok=True)
    names = [f"{MODEL_DIR}/part-{i:02d}.bin" for i in range(dataset.count)]
    wanted = {Path(n).name for n in names}
    for entry in model.iterdir():  # a data set of another shape left files behind
        if entry.name not in wanted:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    base = os.urandom(MIB)
    for index, name in enumerate(names):
        path = root / dataset.name / name
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size == dataset.size:
                continue
        started = time.perf_counter()
        _generate(path, dataset.size, seed=index, base=base)
        print(
            f"  generated {path} ({_size_text(dataset.size)}) "
            f"in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    return names


def _generate(path: Path, size: int, seed: int, base: bytes) -> None:
    """Pseudo-random content, distinct per file and per MiB; written to a temporary name
    and renamed, so an interrupted run never leaves a right-sized wrong file."""
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as out:
        block = bytearray(base)
        for counter in range(0, size, MIB):
            struct.pack_into("<QQ", block, 0, seed, counter)
            out.write(block[: min(MIB, size - counter)])
    os.replace(partial, path)


# --- correctness -----------------------------------------------------------------------

_SHA256SUM_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64})  (?P<name>.+)$")
_OPENSSL_LINE = re.compile(r"^SHA2?-?256\((?P<name>.+)\)= (?P<digest>[0-9a-f]{64})$")


def parse_digests(tool: str, line_format: re.Pattern[str], text: bytes) -> dict[str, str]:
    """{file name: digest} from `tool`'s output, one `line_format` match per line."""
    found = {}
    for line in text.decode().splitlines():
        match = line_format.match(line)
        if not match:
            raise BenchmarkError(f"{tool} printed an unexpected line: {line!r}")
        found[match["name"]] = match["digest"]
    return found


def check_hash_output(reference: bytes, actual: bytes) -> None:
    if actual == reference:
        return
    diff = "".join(
        difflib.unified_diff(
            reference.decode(errors="replace").splitlines(keepends=True),
            actual.decode(errors="replace").splitlines(keepends=True),
            "sha256sum",
            "model-integrity hash",
        )
    )
    raise BenchmarkError(
        "model-integrity hash output differs from sha256sum's (byte for byte):\n" + diff
    )


def check_same(what: str, reference: dict[str, str], actual: dict[str, str]) -> None:
    if actual != reference:
        wrong = sorted(set(reference) ^ set(actual)) + sorted(
            k for k in set(reference) & set(actual) if reference[k] != actual[k]
        )
        raise BenchmarkError(f"{what} digests differ from sha256sum's for: {', '.join(wrong)}")


def manifest_digests(path: Path) -> dict[str, str]:
    data = json.loads(path.read_text())
    return {f["path"]: f["sha256"] for f in data["files"]}


# --- the benchmark ---------------------------------------------------------------------


def bench_dataset(
    root: Path, dataset: DataSet, cli: str, cores: int, runs: int, retries: int
) -> list[Command]:
    names = ensure_data(root, dataset)
    folder = root / dataset.name
    listing = folder / "files.txt"
    listing.write_text("".join(f"{n}\n" for n in names))

    reference = Command("sha256sum", "sha256sum", ["sha256sum", *names])
    commands = [
        Command(
            BASELINE,
            f"xargs -P {cores} -n 1 openssl dgst -sha256",
            ["xargs", "-P", str(cores), "-n", "1", "openssl", "dgst", "-sha256"],
            stdin=listing,
        ),
        reference,
        Command("hash", "model-integrity hash", [cli, "hash", *names]),
        Command(
            "init",
            "model-integrity init --model",
            [cli, "init", "--manifest", MANIFEST, "--model", MODEL_DIR, "--force"],
        ),
        Command(
            "verify-digests",
            "model-integrity verify --only digests",
            [cli, "verify", "--manifest", MANIFEST, "--only", "digests"],
        ),
        Command("verify", "model-integrity verify", [cli, "verify", "--manifest", MANIFEST]),
        Command("startup", "model-integrity --version", [cli, "--version"], hashes=False),
        Command("floor", "true", ["true"], hashes=False),
    ]
    by_key = {c.key: c for c in commands}

    # Warm-up: every command once, untimed; sha256sum first reads everything into the
    # page cache and gives the reference digests; init writes the manifest verify uses.
    expected_out = measure.checked(reference, folder).stdout
    expected = parse_digests("sha256sum", _SHA256SUM_LINE, expected_out)
    if sorted(expected) != sorted(names):
        raise BenchmarkError(f"sha256sum listed {sorted(expected)}, expected {names}")
    for command in commands:
        if command is not reference:  # its warm-up run was the one just above
            result = measure.checked(command, folder)
            _validate(command.key, result, expected_out, expected, folder)

    def run_one(command: Command) -> Run:
        result = measure.checked(command, folder)
        _validate(command.key, result, expected_out, expected, folder)
        return result

    measure.timed_rounds(commands, runs, retries, cores, run_one, dataset.name)
    order = (BASELINE, "hash", "init", "verify-digests", "verify", "sha256sum", "startup", "floor")
    return [by_key[k] for k in order]


def _validate(
    key: str, result: Run, expected_out: bytes, expected: dict[str, str], folder: Path
) -> None:
    if key in ("hash", "sha256sum"):  # sha256sum: stable between runs
        check_hash_output(expected_out, result.stdout)
    elif key == BASELINE:
        check_same("openssl", expected, parse_digests("openssl", _OPENSSL_LINE, result.stdout))
    elif key == "init":
        check_same("the manifest's", expected, manifest_digests(folder / MANIFEST))


def table(results: list[tuple[DataSet, list[Command]]]) -> str:
    lines = [
        "| data set | command | median s | vs parallel openssl | GiB/s | peak RSS MB "
        "| CPU s | others' CPU s | all runs s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for dataset, commands in results:
        baseline = next(c for c in commands if c.key == BASELINE).median()
        for command in commands:
            median = command.median()
            ratio = f"{median / baseline:.2f}x" if command.hashes else "-"
            rate = f"{dataset.total / GIB / median:.2f}" if command.hashes else "-"
            every = ", ".join(f"{r.seconds:.3f}" for r in command.runs)
            retried = f" ({command.retried} retried)" if command.retried else ""
            lines.append(
                f"| {dataset.label()} | `{command.label}` | {median:.3f} | {ratio} | {rate} "
                f"| {command.peak_mb():.1f} | {command.median_cpu():.2f} "
                f"| {command.max_others():.2f}{retried} | {every} |"
            )
    return "\n".join(lines) + "\n"


def machine(cli: str, cores: int) -> str:
    cpu = measure.cpu_model()
    flags = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        flags = ", ".join(f for f in ("sha_ni", "avx2", "avx512f") if f" {f}" in text)
    memory = measure.memory_total()
    openssl = _version(["openssl", "version"])
    coreutils = _version(["sha256sum", "--version"])
    tool = _version([cli, "--version"])
    return (
        f"- CPU: {cpu} ({flags or 'no SHA/AVX flags listed'}); {cores} cores usable "
        f"(os.sched_getaffinity), {os.cpu_count()} online; RAM {memory}\n"
        f"- OS: {platform.system()} {platform.release()}\n"
        f"- Python {platform.python_version()} ({sys.executable})\n"
        f"- {openssl}\n"
        f"- {coreutils}\n"
        f"- {tool} ({cli}){_source_state()}\n"
    )


def _source_state() -> str:
    """The repository's commit, and whether integrity/ had uncommitted changes."""
    state = measure.source_state(HERE.parent)
    return f", source at {state}" if state else ""


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        return f"{argv[0]}: not runnable ({exc.strerror})"
    return (done.stdout or done.stderr).splitlines()[0].strip()


def default_cli() -> str:
    """The console script next to this interpreter (not a pyenv/asdf shim, which adds
    a shell start to every run), else whatever is on PATH."""
    beside = shutil.which("model-integrity", path=str(Path(sys.executable).parent))
    found = beside or shutil.which("model-integrity")
    if not found:
        raise BenchmarkError("model-integrity is not installed (pip install -e .)")
    return found


def _resolve_cli(given: str) -> str:
    found = shutil.which(given)
    if found is None:
        raise BenchmarkError(f"--cli {given}: not an executable")
    return os.path.abspath(found)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time and measure the peak RSS of model-integrity hash/init/verify "
        "against parallel openssl and sha256sum on the same files."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=HERE / "data",
        help="where the data sets are generated and reused (default: benchmarks/data)",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="timed runs per command; the median is reported"
    )
    parser.add_argument(
        "--small", action="store_true", help="8 x 16 MiB and 1 x 128 MiB: a quick smoke run"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="repeat a timed run disturbed by other load (see 'others' CPU') up to this "
        "many times (default 3; 0 keeps every run)",
    )
    parser.add_argument(
        "--sets",
        help="only these data sets, comma-separated (e.g. 8x256MiB; default: both)",
    )
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument(
        "--cli", help="the model-integrity executable (default: the one beside this Python)"
    )
    parser.add_argument(
        "--delete-data", action="store_true", help="delete the generated data at the end"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.retries < 0:
        parser.error("--retries must be at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        for tool in ("openssl", "sha256sum", "xargs"):
            if not shutil.which(tool):
                raise BenchmarkError(f"{tool} is not on PATH")
        cli = _resolve_cli(args.cli) if args.cli else default_cli()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        datasets: tuple[DataSet, ...] = SMALL if args.small else FULL
        if args.sets:
            wanted = args.sets.split(",")
            unknown = sorted(set(wanted) - {d.name for d in datasets})
            if unknown:
                raise BenchmarkError(f"--sets: unknown data set(s) {', '.join(unknown)}")
            datasets = tuple(d for d in datasets if d.name in wanted)
        root = args.data_dir.resolve()
        results = []
        for dataset in datasets:
            print(f"{dataset.name}: preparing and warming up", file=sys.stderr)
            results.append(
                (dataset, bench_dataset(root, dataset, cli, cores, args.runs, args.retries))
            )
    except BenchmarkError as exc:
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.delete_data:
            for dataset in (*FULL, *SMALL):
                shutil.rmtree(args.data_dir / dataset.name, ignore_errors=True)
            with contextlib.suppress(OSError):
                args.data_dir.rmdir()  # only if nothing else is left in it

    report = (
        f"Command: `{measure.command_line('bench_digests.py', argv)}`\n\n"
        f"{machine(cli, cores)}\n"
        f"- Wall time: median of {args.runs} timed run(s) per command, after one untimed "
        "warm-up run of every command (all data in the page cache); commands rotate order "
        "each round.\n"
        "- Peak RSS: `ru_maxrss` of the command's own process (os.wait4), max over the timed "
        "runs, MB = 10^6 bytes. Each command is forked by a minimal `python -S -I` launcher; "
        "the `true` row is the floor this leaves (no figure can go below it). For xargs, the "
        f"largest single process in its tree; {cores} openssl processes run at once.\n"
        "- CPU s: median user + system seconds of the command's process tree.\n"
        "- Others' CPU s: the most CPU seconds the rest of the machine used during one timed "
        "run of the command (/proc/stat; includes the launcher's start, about 0.02 s). A run "
        "where that exceeded max(0.1 s, 5% of the run's wall time x cores) was disturbed by "
        f"other load and was run again, at most {args.retries} times; '(n retried)' counts "
        "them. Above that threshold the figure is still disturbed.\n"
        "- Correctness: `model-integrity hash` output matched sha256sum's byte for byte in "
        "every run; openssl's and the manifest's digests matched sha256sum's.\n\n"
        f"{table(results)}"
    )
    measure.publish(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
