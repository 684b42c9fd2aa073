"""A sandbox that loads files with the real loaders, in a subprocess, and records what they do.

Used by the property tests (tests/test_safety_fuzz.py, tests/test_safety_differential.py):
the scanner claims a file is safe; the sandbox loads it with every loader a user may run and
reports every global the loader resolved, the spans of array data joblib read, and whether
the loader (or a first use of what it loaded: every element of each array is read) crashed
the interpreter or tried something the audit hook forbids.

One long-lived subprocess (it imports numpy, joblib and scikit-learn once) runs batches of
jobs; a job is a file and a loader:
- "pickle": the C unpickler (`pickle.Unpickler(f).load()`, what `pickle.load` runs);
- "python": the pure-Python unpickler (`pickle._Unpickler`, which joblib's extends);
- "joblib": `joblib.load`;
- "numpy": `numpy.load(allow_pickle=True)` (every member of an `.npz`; for any other
  file numpy falls back to `pickle.load`);
- "loader": this project's `integrity.safety.loader.load_model`.

Containment, in layers: `find_class` is gated for every unpickler (pickle's own, joblib's
nested object-array unpicklers, this project's loader), it records each global and refuses
one the scan did not report, so a scanner bug shows up as a refusal, never as code run (a
global whose top-level module does not exist fails as a missing module, as it would
unguarded: nothing can run there, whatever the scan said); an
audit hook (`sys.addaudithook`) ends the process on a shell, a process, a socket or a file
opened for writing while a job runs; the process runs with a scrubbed environment, an
address-space limit and a CPU-time limit per job; a process killed by a signal is reported
as a crash of the job it was running, and restarted.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Per file (wall clock), inside the loading subprocess: room for a first import of
# scikit-learn on a busy machine (not imported up front: a restart after a crash stays fast).
LOAD_TIMEOUT_SECONDS = 20.0
LOAD_CPU_SECONDS = 10  # per file, enforced by RLIMIT_CPU (SIGXCPU ends the process)
MEMORY_LIMIT_BYTES = 4 << 30  # RLIMIT_AS of the loading subprocess
BATCH_TIMEOUT_SECONDS = 120.0  # per batch of files: the loading subprocess is killed after it
AUDIT_EXIT = 86  # the loading subprocess's exit status when the audit hook stops a job
MODES = ("pickle", "python", "joblib", "numpy", "loader")

Pair = tuple[str, str]

# Runs in the subprocess. It records every global an unpickler resolves, under the name
# find_class imports (Python 2 names mapped below protocol 3, as `pickle._Unpickler`
# does with fix_imports).
LOADER_SOURCE = r"""
import _compat_pickle, importlib.util, json, os, pickle, resource, signal, sys, warnings

warnings.simplefilter("ignore")
import joblib
import joblib.numpy_pickle
import numpy
from integrity.safety.allowlist import AllowList
from integrity.safety.loader import load_model

AUDIT_EXIT = int(sys.argv[1])
LOAD_CPU_SECONDS = int(sys.argv[2])
MEMORY_LIMIT_BYTES = int(sys.argv[3])

class Refused(Exception):
    pass

class Timeout(BaseException):
    pass

STATE = {"allowed": None, "resolved": [], "refused": [], "reads": [], "armed": False, "out": None}

def python3(module, name):
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    if module in _compat_pickle.IMPORT_MAPPING:
        return _compat_pickle.IMPORT_MAPPING[module], name
    return module, name

def importable(module):
    # Whether the import could succeed, found without running anything: a module whose
    # top-level package does not exist fails to import in the real loader too.
    top = module.partition(".")[0]
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False

def gate(candidates):
    # candidates: the names find_class may import, the most likely last.
    allowed = STATE["allowed"]
    if allowed is None:
        STATE["resolved"].append(list(candidates[-1]))
        return
    for candidate in candidates:
        if candidate in allowed:
            STATE["resolved"].append(list(candidate))
            return
    if not any(importable(module) for module, _ in candidates):
        raise ModuleNotFoundError("no module named %r" % candidates[0][0])
    STATE["refused"].append(list(candidates[0]))
    raise Refused("%s.%s was not reported by the scan" % candidates[0])

_py_find_class = pickle._Unpickler.find_class

def py_find_class(self, module, name):
    # joblib's NumpyUnpickler, its nested object-array unpickler and this project's
    # restricted unpicklers all end here.
    proto = getattr(self, "proto", 0)
    mapped = python3(module, name) if proto < 3 and self.fix_imports else (module, name)
    gate([mapped])
    return _py_find_class(self, module, name)

pickle._Unpickler.find_class = py_find_class

class CUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        # The C unpickler keeps its protocol private: either name may be the one it
        # imports (the Python 3 one for a benign file, whose Python 2 names come with
        # protocols 0-2 only).
        mapped = python3(module, name)
        allowed = STATE["allowed"]
        if (
            allowed is not None
            and mapped != (module, name)
            and mapped not in allowed
            and not importable(module)
        ):
            # As written the name cannot be imported (protocol 3+: "__builtin__"), so
            # it resolves only if mapped (protocols 0-2), and the scan, which follows
            # the protocol, would then have reported the mapped name. The pure-Python
            # unpickler reading the same file checks the protocol exactly.
            raise ModuleNotFoundError("no module named %r" % module)
        gate([(module, name), mapped])
        return super().find_class(module, name)

def c_load(file, **kwargs):
    return CUnpickler(file, **kwargs).load()

pickle.load = c_load  # numpy.load(allow_pickle=True) unpickles with pickle.load

_read_array = joblib.numpy_pickle.NumpyArrayWrapper.read_array

def read_array(self, unpickler, *args, **kwargs):
    # The file offsets (decompressed ones in a compressed file) joblib reads array data
    # from and to: the padding byte, the padding and the data.
    handle = unpickler.file_handle
    try:
        start = handle.tell()
    except Exception:
        start = None
    array = _read_array(self, unpickler, *args, **kwargs)
    try:
        end = handle.tell()
    except Exception:
        end = None
    STATE["reads"].append([start, end, bool(self.dtype.hasobject)])
    return array

joblib.numpy_pickle.NumpyArrayWrapper.read_array = read_array

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_FORBIDDEN = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
              "subprocess.Popen", "socket.", "os.kill", "os.remove", "os.rename",
              "os.rmdir", "shutil.", "pty.spawn", "ctypes.dlopen")

def audit(event, args):
    if not STATE["armed"]:
        return
    if event == "open":
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        if not flags & _WRITE_FLAGS:
            return
    elif not event.startswith(_FORBIDDEN):
        return
    STATE["armed"] = False
    out = STATE["out"]
    try:
        detail = repr(args)[:200]
    except BaseException:
        detail = "?"
    out.write(json.dumps({"resolved": STATE["resolved"], "refused": STATE["refused"],
                          "reads": STATE["reads"], "error": "audit: %s %s" % (event, detail),
                          "audit": event}) + "\n")
    out.flush()
    os._exit(AUDIT_EXIT)

def on_alarm(signum, frame):
    raise Timeout()

def touch(value, depth=0):
    # First use after the load: read every element of each array (a dtype whose fields
    # point outside its items reads out of bounds here, not during the load).
    if depth > 4:
        return
    if isinstance(value, numpy.ndarray):
        if value.size <= 4096:
            value.tolist()
    elif isinstance(value, (list, tuple)):
        for item in value[:64]:
            touch(item, depth + 1)
    elif isinstance(value, dict):
        for item in list(value.values())[:64]:
            touch(item, depth + 1)

def numpy_load(path):
    loaded = numpy.load(path, allow_pickle=True)
    if isinstance(loaded, numpy.lib.npyio.NpzFile):
        with loaded:
            return [loaded[name] for name in loaded.files]
    return loaded

def run_job(job):
    allowed = job["allowed"]
    STATE["allowed"] = None if allowed is None else {tuple(p) for p in allowed}
    STATE["resolved"] = []
    STATE["refused"] = []
    STATE["reads"] = []
    error = None
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime) + 1 + LOAD_CPU_SECONDS
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
    mode = job["mode"]
    signal.setitimer(signal.ITIMER_REAL, job["timeout"])
    STATE["armed"] = True
    try:
        if mode == "joblib":
            loaded = joblib.load(job["path"])
        elif mode == "numpy":
            loaded = numpy_load(job["path"])
        elif mode == "loader":
            extra = {tuple(p): "test" for p in job.get("extra") or ()}
            loaded = load_model(job["path"], AllowList(extra=extra))
        elif mode in ("pickle", "python"):
            with open(job["path"], "rb") as f:
                loaded = (CUnpickler if mode == "pickle" else pickle._Unpickler)(f).load()
        else:
            raise ValueError("unknown mode %r" % mode)
        touch(loaded)
        # Freed within the job, so that glibc's heap checks (MALLOC_CHECK_) catch a
        # corruption this job made while it is still the one running.
        del loaded
    except Timeout:
        error = "timeout"
    except BaseException as exc:
        try:
            error = ("%s: %s" % (type(exc).__name__, exc))[:300]
        except BaseException:
            error = type(exc).__name__
    finally:
        STATE["armed"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
    return {"resolved": STATE["resolved"], "refused": STATE["refused"],
            "reads": STATE["reads"], "error": error}

def main():
    # Requests come on stdin ("JOBS_FILE OUTCOMES_FILE" lines); each job's outcome is one
    # JSON line, flushed before the next job starts (so a crash shows which job it was);
    # "done" goes to the original stdout; anything a loaded object prints goes to stderr.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or hard > MEMORY_LIMIT_BYTES:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, hard))
    signal.signal(signal.SIGALRM, on_alarm)
    sys.addaudithook(audit)
    for line in sys.stdin:
        request, response = line.rstrip("\n").split("\t")
        with open(request) as f:
            jobs = json.load(f)
        with open(response, "w") as out:
            STATE["out"] = out
            for job in jobs:
                out.write(json.dumps(run_job(job)) + "\n")
                out.flush()
        replies.write("done\n")
        replies.flush()

main()
"""


@dataclass(frozen=True)
class LoadJob:
    path: Path
    mode: str  # one of MODES
    allowed: frozenset[Pair] | None  # None: record everything, refuse nothing
    label: str = ""
    extra: frozenset[Pair] = frozenset()  # allow-list entries for the "loader" mode


@dataclass(frozen=True)
class LoadOutcome:
    resolved: frozenset[Pair]
    refused: tuple[Pair, ...]
    error: str | None
    crashed: bool = False  # the loader crashed the interpreter (a signal, not an error)
    # (start, end, has objects) of each array joblib's NumpyArrayWrapper.read_array read.
    reads: tuple[tuple[int | None, int | None, bool], ...] = ()
    audit: str | None = None  # the forbidden audit event that stopped the job
    # "cpu", "wall" or "exit" (a status, not a signal): stopped by a limit, not a crash.
    limit: str | None = None
    delayed: bool = False  # crashed in a batch but not alone: an earlier job's doing


def _scrubbed_environment(home: Path) -> dict[str, str]:
    """Only what Python needs to find this checkout; one thread per numerical library."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
    }
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    # glibc checks the heap at each free: a job that corrupts memory aborts in that job
    # more often than in a later one. (Not MALLOC_PERTURB_: it writes every byte of each
    # allocation, and files that claim gigabytes would time out instead of failing.)
    env["MALLOC_CHECK_"] = "3"
    return env


class Sandbox:
    """A long-lived loader subprocess, restarted when a load ends it (the crash being that
    job's outcome)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._batches = itertools.count()
        self._script = folder / "loader.py"
        self._script.write_text(LOADER_SOURCE)
        self._stderr = (folder / "loader.stderr").open("ab")
        self._proc: subprocess.Popen[str] | None = None
        self.restarts = 0

    def _start(self) -> subprocess.Popen[str]:
        home = self.folder / "home"
        home.mkdir(exist_ok=True)
        return subprocess.Popen(
            [
                sys.executable,
                str(self._script),
                str(AUDIT_EXIT),
                str(LOAD_CPU_SECONDS),
                str(MEMORY_LIMIT_BYTES),
            ],
            cwd=self.folder,
            env=_scrubbed_environment(home),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def _run_batch(self, jobs: Sequence[LoadJob]) -> list[dict[str, Any]]:
        """Outcomes of the jobs, up to and including one that ends the loader."""
        batch = next(self._batches)
        request = self.folder / f"jobs-{batch}.json"
        response = self.folder / f"outcomes-{batch}.jsonl"
        request.write_text(
            json.dumps(
                [
                    {
                        "path": str(job.path),
                        "mode": job.mode,
                        "allowed": None if job.allowed is None else sorted(job.allowed),
                        "extra": sorted(job.extra),
                        "timeout": LOAD_TIMEOUT_SECONDS,
                    }
                    for job in jobs
                ]
            )
        )
        if self._proc is None:
            self._proc = self._start()
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        # A hang in C code (which the loader's alarm cannot interrupt) kills the loader.
        watchdog = threading.Timer(BATCH_TIMEOUT_SECONDS, proc.kill)
        watchdog.start()
        try:
            proc.stdin.write(f"{request}\t{response}\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
        except BrokenPipeError:
            reply = ""
        finally:
            watchdog.cancel()
        text = response.read_text() if response.exists() else ""
        outcomes: list[dict[str, Any]] = [
            json.loads(line) for line in text.splitlines() if line.endswith("}")
        ]
        if reply != "done\n":
            proc.kill()
            code = proc.wait()
            self._proc = None
            self.restarts += 1
            if outcomes and outcomes[-1].get("audit"):
                outcomes[-1]["crashed"] = True  # the audit hook ended it: no restart needed
                return outcomes
            outcomes = outcomes[: len(jobs) - 1]
            crash: dict[str, Any] = {"resolved": [], "refused": [], "crashed": True}
            if code >= 0 or code in (-signal.SIGXCPU, -signal.SIGKILL):
                # Our own limits (CPU time, the batch watchdog, memory: an allocation that
                # fails outside the job's own error handling ends the process with a
                # status): slow or hungry, not killed by a signal of its own making.
                limits = {-signal.SIGXCPU: "cpu", -signal.SIGKILL: "wall"}
                crash["limit"] = limits.get(code, "exit")
                crash["crashed"] = False
            crash["error"] = f"the loader ended (exit status {code}) loading this file"
            outcomes.append(crash)
        return outcomes

    def load(self, jobs: Sequence[LoadJob]) -> list[LoadOutcome]:
        """Load every job's file with the real loader named by its mode."""
        raw: list[dict[str, Any]] = []
        while len(raw) < len(jobs):
            raw += self._run_batch(jobs[len(raw) :])
            if raw[-1].get("crashed") and not raw[-1].get("audit") and len(jobs) > 1:
                # Loaded again alone, in a new process: a crash that does not come back
                # was set up by an earlier job of the batch (memory it corrupted).
                (alone,) = self._run_batch([jobs[len(raw) - 1]])
                if not alone.get("crashed"):
                    raw[-1]["error"] += (
                        "; not again when loaded alone: an earlier job corrupted memory"
                    )
                    raw[-1]["delayed"] = True
        return [
            LoadOutcome(
                resolved=frozenset((m, n) for m, n in item["resolved"]),
                refused=tuple((m, n) for m, n in item["refused"]),
                error=item["error"],
                crashed=bool(item.get("crashed")),
                reads=tuple((s, e, bool(o)) for s, e, o in item.get("reads", ())),
                audit=item.get("audit"),
                limit=item.get("limit"),
                delayed=bool(item.get("delayed")),
            )
            for item in raw
        ]

    def close(self) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._stderr.close()
