"""The safety scanner against malicious model files (`tests/malicious_corpus.py`).

For every case: `model-integrity scan FILE` exits 1 and prints UNSAFE; `scan_path` says unsafe
with a finding that names the offending global and says what it does; the `safety` check of
`model-integrity verify` fails on a manifest made with `model-integrity init --model FILE`; and
the case's marker file never appears, because nothing ran. Every payload is also proven real:
the stock loader it targets (pickle.load, joblib.load, numpy.load, skops) does create the
marker, in a forked child of a subprocess, never in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from malicious_corpus import (
    REPO,
    Built,
    Case,
    Outcome,
    assert_nothing_ran,
    build_corpus,
    by_name,
    joblib_array_file,
    load_corpus,
    malicious_cases,
    zlib_zeros,
)

from integrity.cli import main
from integrity.safety.scanner import scan_path

CASES = malicious_cases()
LOADABLE = [case for case in CASES if case.control]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:
    with build_corpus(tmp_path_factory.mktemp("malicious"), CASES) as built:
        yield built


@pytest.fixture(scope="module")
def controls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Outcome, bool]]]:
    """Each loadable case, built afresh and loaded by its stock loader: (outcome, marker made)."""
    root = tmp_path_factory.mktemp("controls")
    with load_corpus(root, LOADABLE, lambda case: case.control, wait_seconds=5) as loaded:
        yield loaded


# ------------------------------------------------------------------ every case


@by_name(CASES)
def test_scan_command_says_unsafe(
    case: Case, corpus: dict[str, Built], capsys: pytest.CaptureFixture[str]
) -> None:
    item = corpus[case.name]
    assert main(["scan", str(item.path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"UNSAFE  {item.path}")
    for name in case.globals:
        assert name in out
    for code in case.codes:
        assert code in out
    assert_nothing_ran(item)


@by_name(CASES)
def test_scan_names_the_offending_global(case: Case, corpus: dict[str, Built]) -> None:
    item = corpus[case.name]
    result = scan_path(item.path)
    assert not result.safe
    for finding in result.findings:
        assert finding.code and finding.message
        assert finding.offset is not None or finding.member is not None or case.control == "skops"
    for name in case.globals:
        named = [f for f in result.findings if f.global_name == name]
        assert named, f"no finding names {name}: {[f.message for f in result.findings]}"
        # One finding per global; it names it and says in words what loading it would do.
        assert len(named) == 1
        assert named[0].message.startswith(f"{name}: ")
        assert len(named[0].message.split(": ", 1)[1]) >= 10
    codes = {f.code for f in result.findings}
    for code in case.codes:
        assert code in codes, f"no {code} finding: {[f.message for f in result.findings]}"
    assert_nothing_ran(item)


@by_name(CASES)
def test_verify_fails_the_safety_check(case: Case, corpus: dict[str, Built]) -> None:
    item = corpus[case.name]
    folder = item.path.parent
    manifest = folder / "model-integrity.json"
    report = folder / "report.json"
    init = ["init", "--manifest", str(manifest), "--model", str(item.path), "--force"]
    assert main(init) == 0
    assert (
        main(["verify", "--manifest", str(manifest), "--json", str(report), "--no-progress"]) == 1
    )
    checks = {check["id"]: check for check in json.loads(report.read_text())["checks"]}
    assert checks["digests"]["status"] == "pass"
    assert checks["safety"]["status"] == "fail"
    messages = " ".join(f["message"] for f in checks["safety"]["findings"])
    for name in case.globals:
        assert name in messages
    assert_nothing_ran(item)


@by_name(LOADABLE)
def test_payload_is_real(case: Case, controls: dict[str, tuple[Outcome, bool]]) -> None:
    """The stock loader does run it: the corpus tests real attacks, not garbage."""
    outcome, marker_made = controls[case.name]
    assert marker_made, f"{case.control} did not run the payload: {outcome}"


def test_scan_command_in_its_own_process(corpus: dict[str, Built]) -> None:
    """The command as CI runs it, on many files at once: every one is UNSAFE. (Not the skops
    files, whose audit imports scikit-learn, nor the bomb: seconds each, tested above.)"""
    items = [item for item in corpus.values() if item.path.suffix != ".skops"]
    items = [item for item in items if item.case.name != "zlib_decompression_bomb"]
    run = subprocess.run(
        [sys.executable, "-m", "integrity", "scan", *(str(item.path) for item in items)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    for item in items:
        assert f"UNSAFE  {item.path}  " in run.stdout
        assert_nothing_ran(item)


# ------------------------------------------------------------------ resources


# The scan runs in a grandchild: ru_maxrss survives exec, so a child forked from this
# (large) test process would report this process's size; the small launcher's child does not.
BOMB_SCAN = """
import json, sys, time
from pathlib import Path
from integrity.safety.scanner import scan_path
start = time.monotonic()
result = scan_path(Path(sys.argv[1]))
seconds = time.monotonic() - start
print(json.dumps({"safe": result.safe, "codes": [f.code for f in result.findings],
                  "seconds": seconds}))
"""
BOMB_PROBE = """
import json, resource, subprocess, sys
run = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], capture_output=True,
                     text=True, check=True)
probe = json.loads(run.stdout)
probe["max_rss_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps(probe))
"""


def test_decompression_bomb_is_refused_fast_in_bounded_memory(corpus: dict[str, Built]) -> None:
    item = corpus["zlib_decompression_bomb"]
    assert item.path.stat().st_size < 4 << 20  # 2 GiB of zeros, and a payload after them
    run = subprocess.run(
        [sys.executable, "-c", BOMB_PROBE, BOMB_SCAN, str(item.path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    probe = json.loads(run.stdout)
    assert not probe["safe"]
    assert "bad-compression" in probe["codes"]
    assert probe["seconds"] < 15
    assert probe["max_rss_kib"] < 100 * 1024  # never more than a few blocks of the 2 GiB
    assert_nothing_ran(item)


# ------------------------------------------------------------------ the corpus's own tools


def test_zlib_zeros_is_the_stream_it_claims() -> None:
    data = zlib_zeros(b"head", 3, b"tail", chunk=1 << 16)
    assert zlib.decompress(data) == b"head" + bytes(3 << 16) + b"tail"


def test_assembled_joblib_arrays_load_as_joblib_reads_them(tmp_path: Path) -> None:
    """The hand-assembled wrapper is the one joblib writes: joblib.load reads the array."""
    import joblib
    import numpy as np

    values = np.array([1.5, -2.0, 3.25])
    path = tmp_path / "array.joblib"
    path.write_bytes(joblib_array_file((3,), "f8", values.tobytes()))
    loaded = joblib.load(path)
    assert loaded.dtype == np.float64
    assert np.array_equal(loaded, values)
    assert scan_path(path).safe


def test_controls_run_in_a_subprocess_not_here(controls: dict[str, tuple[Outcome, bool]]) -> None:
    """No module a payload imports was imported into this process by the controls."""
    assert "payload_module" not in sys.modules
    assert "skops_payload_module" not in sys.modules
    assert controls  # the fixture ran


def test_scanning_every_case_is_fast(corpus: dict[str, Built]) -> None:
    start = time.monotonic()
    for name, item in corpus.items():
        if name != "zlib_decompression_bomb":
            scan_path(item.path)
    assert time.monotonic() - start < 5
