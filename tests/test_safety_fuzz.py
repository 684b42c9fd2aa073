"""Property tests (hypothesis) for the static pickle/joblib safety scanner.

The scanner (`integrity.safety.scanner`) reads a model file symbolically and says whether it
is safe to load. These tests check four properties over generated and mutated inputs:

1. No crash: `scan_path` returns a ScanResult for any file: arbitrary bytes, arbitrary bytes
   after a protocol header or a compressor's magic bytes, random opcode sequences built from
   the real opcode table (`pickletools.opcodes`) with random arguments, and bit flips,
   truncations, insertions and deletions of real benign pickles and joblib files (raw, and
   compressed with zlib, gzip, bz2, xz, lzma and lz4) of small scikit-learn models and arrays.
2. No hang: every scan of an input up to 64 KiB finishes in well under `MAX_SCAN_SECONDS`,
   including inputs that claim huge lengths (BINBYTES8 of 2**62 bytes, a FRAME of 2**60
   bytes, LONG4 of 2**31-1 bytes, joblib arrays with huge dimensions, decompression bombs).
3. No garbage passes: whenever the scan says safe, the real unpicklers (`joblib.load`, the
   pure-Python unpickler joblib extends, and the C `pickle.Unpickler`), run in a subprocess
   sandbox, resolve only globals the scanner reported in `globals_used`. The sandbox records
   every `find_class` and refuses any global the scan did not report, so nothing else runs.
   When the real load succeeds, the two sets are equal.
4. Exact view: for every benign artifact, the scanner's `globals_used` is exactly the set of
   globals the real unpickler resolves: the symbolic machine agrees with CPython.

Loading is batched: accepted inputs are written to files and one long-lived subprocess loads
them all (a load that crashes it is reported, and the subprocess restarted). Inputs crafted
from the bugs these properties found are kept as explicit examples and `CRAFTED` entries.
SAFETY_FUZZ_SCALE=N multiplies every example count, for a deeper run.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import lzma
import math
import os
import pickle
import pickletools
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType

# The test extra installs these; a missing one must fail the run, not skip it.
import joblib
import lz4.frame as lz4_frame
import numpy as np
import pytest
import sklearn  # noqa: F401
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from malicious_corpus import REPO, sglobal, text_global, ustr
from sandbox import LoadJob, LoadOutcome, Sandbox

from integrity.safety.allowlist import AllowList
from integrity.safety.scanner import ScanResult, scan_path

# ---------------------------------------------------------------- settings

MAX_SCAN_SECONDS = 2.0  # per scan of an input up to MAX_INPUT bytes
WATCHDOG_SECONDS = 20.0  # a scan still running after this is aborted (Python-level loops only)
MAX_INPUT = 64 * 1024
# A file the scan passes whose real load crashes the interpreter (a segfault in an allowed
# global, e.g. numpy's dtype.__setstate__) fails property 3 too.
CRASH_IS_FAILURE = True
# SAFETY_FUZZ_SCALE=20 runs 20 times as many examples (a longer, deeper local or nightly run).
SCALE = float(os.environ.get("SAFETY_FUZZ_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


settings.register_profile(
    "safety-fuzz",
    max_examples=examples(100),
    deadline=timedelta(seconds=10),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
    print_blob=True,
)
FUZZ = settings.get_profile("safety-fuzz")

Pair = tuple[str, str]


def by_name(cases: list[tuple[str, bytes]]) -> pytest.MarkDecorator:
    """pytest.mark.parametrize over (name, data) inputs, each test named after its input."""
    return pytest.mark.parametrize(("name", "data"), cases, ids=[name for name, _ in cases])


# ---------------------------------------------------------------- scanning


class ScanHang(Exception):
    pass


@contextmanager
def _watchdog(seconds: float) -> Iterator[None]:
    """Abort a scan stuck in a Python-level loop, so a hang fails instead of blocking."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise ScanHang(f"scan still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def scan_file(path: Path, allowlist: AllowList) -> ScanResult:
    """Scan `path`; the result must be well formed and come back in time (properties 1, 2)."""
    start = time.perf_counter()
    with _watchdog(WATCHDOG_SECONDS):
        result = scan_path(path, allowlist)
    elapsed = time.perf_counter() - start
    assert isinstance(result, ScanResult)
    assert elapsed < MAX_SCAN_SECONDS, f"scan took {elapsed:.2f} s"
    assert isinstance(result.safe, bool)
    assert result.safe or result.findings, "unsafe without a finding"
    assert isinstance(result.format, str) and result.format
    for finding in result.findings:
        assert isinstance(finding.code, str) and finding.code
        assert isinstance(finding.message, str) and finding.message
    for use in result.globals_used:
        assert allowlist.verdict(use.module, use.name).allowed, use
    return result


def scan_bytes(data: bytes, path: Path, allowlist: AllowList) -> ScanResult:
    path.write_bytes(data)
    return scan_file(path, allowlist)


def scanned_globals(result: ScanResult) -> frozenset[Pair]:
    return frozenset((use.module, use.name) for use in result.globals_used)


# ---------------------------------------------------------------- the loading sandbox


def load_modes(result: ScanResult) -> tuple[str, ...]:
    """The real loaders to try on a file the scan passed: joblib.load (the pure-Python
    unpickler plus joblib's array reader), C pickle.load, and numpy.load for .npy files."""
    return ("joblib", "pickle", "numpy") if result.format == "npy" else ("joblib", "pickle")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path_factory.mktemp("sandbox"))
    yield box
    box.close()


@dataclass
class Accepted:
    """An input the scanner said was safe, saved for the batched load."""

    path: Path
    scanned: frozenset[Pair]
    label: str
    modes: tuple[str, ...]


class AcceptedInputs:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.items: list[Accepted] = []
        self._counter = itertools.count()

    def add(self, data: bytes, result: ScanResult, label: str) -> None:
        if not result.safe:
            return
        path = self.folder / f"accepted-{next(self._counter):05d}.bin"
        path.write_bytes(data)
        self.items.append(Accepted(path, scanned_globals(result), label, load_modes(result)))


def assert_loads_match_scans(accepted: Sequence[Accepted], sandbox: Sandbox) -> None:
    """Property 3: what the real unpicklers resolve is what the scan reported."""
    jobs = [
        LoadJob(item.path, mode, item.scanned, item.label)
        for item in accepted
        for mode in item.modes
    ]
    outcomes = sandbox.load(jobs)
    problems: list[str] = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        data = job.path.read_bytes()
        shown = data if len(data) <= 400 else data[:400] + b"..."
        assert job.allowed is not None
        if outcome.refused:
            problems.append(
                f"{job.label} [{job.mode}]: scan said safe with globals {sorted(job.allowed)}, "
                f"but the real unpickler resolved {sorted(set(outcome.refused))} "
                f"({outcome.error}); input {shown!r}"
            )
        elif outcome.crashed and CRASH_IS_FAILURE:
            # Not a global the scan missed, but a load that corrupts memory is no safer.
            problems.append(
                f"{job.label} [{job.mode}]: scan said safe, but loading it crashes the "
                f"interpreter ({outcome.error}); input {shown!r}"
            )
        elif outcome.error is None and outcome.resolved != job.allowed:
            problems.append(
                f"{job.label} [{job.mode}]: loaded, resolving {sorted(outcome.resolved)}, "
                f"but the scan reported {sorted(job.allowed)}; input {shown!r}"
            )
    assert not problems, f"{len(problems)} problems; the first:\n" + "\n".join(problems[:10])


# ---------------------------------------------------------------- the benign corpus


@dataclass(frozen=True)
class Artifact:
    name: str
    data: bytes  # the file's bytes
    method: str | None  # compression method, None for a raw pickle or joblib file
    payload: bytes  # the pickle stream inside (data itself when not compressed)


COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "zlib": (zlib.compress, zlib.decompress),
    "gzip": (lambda data: gzip.compress(data, mtime=0), gzip.decompress),
    "bz2": (bz2.compress, bz2.decompress),
    "xz": (
        lambda data: lzma.compress(data, format=lzma.FORMAT_XZ),
        lambda data: lzma.decompress(data, format=lzma.FORMAT_XZ),
    ),
    "lzma": (
        lambda data: lzma.compress(data, format=lzma.FORMAT_ALONE),
        lambda data: lzma.decompress(data, format=lzma.FORMAT_ALONE),
    ),
    "lz4": (lz4_frame.compress, lz4_frame.decompress),
}


def _benign_objects() -> list[tuple[str, object]]:
    import warnings
    from collections import OrderedDict

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 3))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logistic = LogisticRegression(max_iter=50).fit(x, y)
        tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(x, y)
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=50)).fit(x, y)
    arrays = [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        np.array([True, False]),
        np.array(["ab", "c"]),
        np.array([1 + 2j]),
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=[("a", "<i4"), ("b", ">f8")]),
        np.array(["x", 1, None], dtype=object),
        np.zeros(0, dtype=np.uint8),
        np.array(3.5, dtype=">f4"),
        np.float64(1.5),
    ]
    bundle = {
        "model": logistic,
        "meta": OrderedDict(name="demo", version=(1, 2)),
        "labels": {"a", "b"},
        "frozen": frozenset({1, 2}),
        "blob": b"\x00\x01bytes",
        "values": [1, -(2**70), 2.5, None, True, "text", ("t",)],
        "mixed": np.array([{"k": 1}, [2]], dtype=object),
    }
    return [
        ("logistic", logistic),
        ("tree", tree),
        ("pipeline", pipeline),
        ("arrays", arrays),
        ("bundle", bundle),
    ]


def build_corpus(folder: Path) -> list[Artifact]:
    folder.mkdir(parents=True, exist_ok=True)
    artifacts: list[Artifact] = []
    for name, obj in _benign_objects():
        for protocol in range(6):
            data = pickle.dumps(obj, protocol=protocol)
            artifacts.append(Artifact(f"{name}.p{protocol}.pkl", data, None, data))
        for protocol in (2, pickle.HIGHEST_PROTOCOL):
            path = folder / f"{name}.p{protocol}.joblib"
            joblib.dump(obj, path, protocol=protocol)
            data = path.read_bytes()
            artifacts.append(Artifact(path.name, data, None, data))
        for method, (_, decompress) in COMPRESSORS.items():
            path = folder / f"{name}.joblib.{method}"
            joblib.dump(obj, path, compress=(method, 3))
            data = path.read_bytes()
            artifacts.append(Artifact(path.name, data, method, decompress(data)))
    return artifacts


def _allowlist_of(outcomes: Sequence[LoadOutcome]) -> AllowList:
    """Exactly the globals the benign corpus files' loads resolved."""
    union = frozenset().union(*(o.resolved for o in outcomes))
    return AllowList(extra={pair: "resolved by a benign corpus file" for pair in union})


@dataclass
class Corpus:
    artifacts: list[Artifact]
    paths: list[Path]
    real_globals: list[frozenset[Pair]]  # what joblib.load resolves, per artifact
    load_errors: list[str | None]
    c_globals: dict[int, LoadOutcome]  # what C pickle.load resolves, per plain pickle
    allowlist: AllowList  # exactly the globals the benign artifacts resolve


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, sandbox: Sandbox) -> Corpus:
    folder = tmp_path_factory.mktemp("benign")
    artifacts = build_corpus(folder / "dumps")
    paths = []
    for i, artifact in enumerate(artifacts):
        path = folder / f"{i:03d}-{artifact.name}"
        path.write_bytes(artifact.data)
        paths.append(path)
    jobs = [LoadJob(path, "joblib", None, path.name) for path in paths]
    plain = [i for i, a in enumerate(artifacts) if a.name.endswith(".pkl")]
    jobs += [LoadJob(paths[i], "pickle", None, paths[i].name) for i in plain]
    outcomes = sandbox.load(jobs)
    joblib_outcomes = outcomes[: len(paths)]
    allowlist = _allowlist_of(joblib_outcomes)
    return Corpus(
        artifacts,
        paths,
        [o.resolved for o in joblib_outcomes],
        [o.error for o in joblib_outcomes],
        dict(zip(plain, outcomes[len(paths) :], strict=True)),
        allowlist,
    )


# ---------------------------------------------------------------- strategies

HEADERS = [b"\x80\x02", b"\x80\x04", b"\x80\x05"]
MAGICS = [
    b"\x78",
    b"\x1f\x8b",
    b"BZh9",
    b"\x5d\x00\x00\x80\x00",
    b"\xfd7zXZ\x00",
    b"\x04\x22\x4d\x18",
    b"\x93NUMPY\x01\x00",
    b"PK\x03\x04",
    b"ZF",
]

# Globals a generated program may name: harmless ones the toy allow-list admits (the sandbox
# may really call them), dangerous ones it refuses, and Python 2 names mapped below protocol 3.
TOY_ALLOWED: dict[Pair, str] = {
    ("collections", "OrderedDict"): "toy",
    ("builtins", "complex"): "toy",
    ("builtins", "set"): "toy",
    ("builtins", "frozenset"): "toy",
    ("builtins", "slice"): "toy",
    ("builtins", "object"): "toy",
    ("copyreg", "_reconstructor"): "toy",
    ("datetime", "date"): "toy",
    ("numpy", "dtype"): "toy",
    ("numpy", "ndarray"): "toy",
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): "toy",
}
TOY_ALLOWLIST = AllowList(extra=TOY_ALLOWED)
NAME_POOL: list[Pair] = [
    *TOY_ALLOWED,
    ("__builtin__", "set"),
    ("__builtin__", "object"),
    ("copy_reg", "_reconstructor"),
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "getattr"),
    ("builtins", "print"),
    ("__builtin__", "eval"),
    ("subprocess", "Popen"),
    ("builtins", "__import__"),
    ("numpy", "load"),
    ("os.path", "join"),
    ("builtins", "object.__subclasses__"),
]

HUGE = [2**31 - 1, 2**31, 2**32 - 1, 2**60, 2**62, 2**63, 2**64 - 1]
DECIMALS = ["0", "1", "00", "01", "-1", "010", "0x10", "1_0", " 7", "+3", "7 ", "1e3", "x", ""]


def _decimal_lines(suffix: bytes = b"") -> st.SearchStrategy[bytes]:
    text = st.one_of(
        st.sampled_from(DECIMALS), st.integers(-(2**70), 2**70).map(str), st.just("9" * 5000)
    )
    return text.map(lambda s: s.encode() + suffix + b"\n")


def _names() -> st.SearchStrategy[Pair]:
    return st.one_of(
        st.sampled_from(NAME_POOL),
        st.tuples(st.text(max_size=8), st.text(max_size=8)),
    )


def _sized(fmt: str, payload: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A length field (`fmt`: struct format), then a payload that may disagree with it."""
    bits = struct.calcsize(fmt) * 8
    signed = fmt[-1].islower()
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    huge = [n for n in HUGE if low <= n <= high] or [high]

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = draw(payload)
        length = draw(
            st.one_of(
                st.just(len(data)),
                st.integers(max(low, 0), min(high, 40)),
                st.sampled_from(huge),
                st.integers(low, high),
            )
        )
        return struct.pack(fmt, length) + data

    return build()


_TEXT = st.text(max_size=12)
_UTF8 = _TEXT.map(lambda s: s.encode("utf-8", "surrogatepass"))
_ASCII = st.text(alphabet=st.characters(max_codepoint=127), max_size=12).map(str.encode)
_BYTES = st.binary(max_size=24)


def _arg(arg: pickletools.ArgumentDescriptor | None) -> st.SearchStrategy[bytes]:
    if arg is None:
        return st.just(b"")
    name = arg.name
    simple: dict[str, st.SearchStrategy[bytes]] = {
        "uint1": st.integers(0, 255).map(lambda n: bytes([n])),
        "uint2": st.integers(0, 2**16 - 1).map(lambda n: struct.pack("<H", n)),
        "int4": st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(HUGE[:1])).map(
            lambda n: struct.pack("<i", n)
        ),
        "uint4": st.integers(0, 2**32 - 1).map(lambda n: struct.pack("<I", n)),
        "uint8": st.one_of(st.integers(0, 64), st.sampled_from(HUGE)).map(
            lambda n: struct.pack("<Q", n)
        ),
        "float8": st.binary(min_size=8, max_size=8),
        "decimalnl_short": _decimal_lines(),
        "decimalnl_long": _decimal_lines(b"L"),
        "floatnl": st.one_of(
            st.floats().map(repr), st.sampled_from(["nan", "inf", "-0", "1e999", "x", ""])
        ).map(lambda s: s.encode() + b"\n"),
        "stringnl": st.one_of(
            _ASCII.map(lambda b: b"'" + b.replace(b"\n", b"") + b"'\n"),
            st.sampled_from([b"'\\x41'\n", b'"\\n"\n', b"'unterminated\n", b"''\n", b"'\\'\n"]),
            _BYTES.map(lambda b: b.replace(b"\n", b"") + b"\n"),
        ),
        "stringnl_noescape": _ASCII.map(lambda b: b.replace(b"\n", b"") + b"\n"),
        "stringnl_noescape_pair": _names().map(
            lambda p: (p[0].replace("\n", "") + "\n" + p[1].replace("\n", "") + "\n").encode(
                "utf-8", "surrogatepass"
            )
        ),
        "unicodestringnl": _TEXT.map(
            lambda s: s.encode("raw-unicode-escape").replace(b"\n", b"") + b"\n"
        ),
        "string1": _sized("<B", st.one_of(_ASCII, _BYTES)),
        "string4": _sized("<i", st.one_of(_ASCII, _BYTES)),
        "bytes1": _sized("<B", _BYTES),
        "bytes4": _sized("<I", _BYTES),
        "bytes8": _sized("<Q", _BYTES),
        "bytearray8": _sized("<Q", _BYTES),
        "unicodestring1": _sized("<B", st.one_of(_UTF8, _BYTES)),
        "unicodestring4": _sized("<I", st.one_of(_UTF8, _BYTES)),
        "unicodestring8": _sized("<Q", st.one_of(_UTF8, _BYTES)),
        "long1": _sized("<B", _BYTES),
        "long4": _sized("<i", _BYTES),
    }
    return simple[name]


OPCODES = list(pickletools.opcodes)


def _opcode(op: pickletools.OpcodeInfo) -> st.SearchStrategy[bytes]:
    code = op.code.encode("latin-1")
    return _arg(op.arg).map(lambda a: code + a)


OPCODE = st.one_of(*(_opcode(op) for op in OPCODES))


def _global_ref(pair: Pair) -> st.SearchStrategy[bytes]:
    return st.sampled_from([text_global(*pair), sglobal(*pair)])


# A snippet of opcodes that, when well formed, pushes exactly one value.
_LEAF: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from([b"N", b"\x88", b"\x89", b")", b"]", b"}", b"\x8f", b"I01\n", b"I00\n"]),
    st.integers(0, 255).map(lambda n: b"K" + bytes([n])),
    st.integers(0, 2**16 - 1).map(lambda n: b"M" + struct.pack("<H", n)),
    st.integers(-(2**31), 2**31 - 1).map(lambda n: b"J" + struct.pack("<i", n)),
    st.integers(-(2**80), 2**80).map(lambda n: b"I" + str(n).encode() + b"\n"),
    st.integers(-(2**80), 2**80).map(lambda n: b"L" + str(n).encode() + b"L\n"),
    st.integers(-(2**80), 2**80).map(lambda n: b"\x8a" + _long1(n)),
    st.floats(allow_nan=False).map(lambda f: b"G" + struct.pack(">d", f)),
    st.floats(allow_nan=False).map(lambda f: b"F" + repr(f).encode() + b"\n"),
    _TEXT.map(ustr),
    _TEXT.map(lambda s: b"X" + _with_len("<I", s.encode("utf-8", "surrogatepass"))),
    _TEXT.map(lambda s: b"\x8d" + _with_len("<Q", s.encode("utf-8", "surrogatepass"))),
    _TEXT.filter(lambda s: "\n" not in s and "\r" not in s and "\\" not in s).map(
        lambda s: b"V" + s.encode("raw-unicode-escape") + b"\n"
    ),
    _ASCII.filter(lambda b: b"\n" not in b and b"\\" not in b and b"'" not in b).map(
        lambda b: b"S'" + b + b"'\n"
    ),
    _ASCII.map(lambda b: b"U" + bytes([len(b)]) + b),
    _ASCII.map(lambda b: b"T" + _with_len("<i", b)),
    _BYTES.map(lambda b: b"C" + bytes([len(b)]) + b),
    _BYTES.map(lambda b: b"B" + _with_len("<I", b)),
    _BYTES.map(lambda b: b"\x8e" + _with_len("<Q", b)),
    _BYTES.map(lambda b: b"\x96" + _with_len("<Q", b)),
    st.integers(0, 3).map(lambda k: b"h" + bytes([k])),
    st.integers(0, 3).map(lambda k: b"g" + str(k).encode() + b"\n"),
    st.integers(0, 3).map(lambda k: b"g0" + str(k).encode() + b"\n"),
    st.integers(0, 3).map(lambda k: b"j" + struct.pack("<I", k)),
    _names().flatmap(_global_ref),
)


def _long1(n: int) -> bytes:
    raw = pickle.encode_long(n)
    return bytes([len(raw)]) + raw


def _with_len(fmt: str, raw: bytes) -> bytes:
    return struct.pack(fmt, len(raw)) + raw


def _cat(parts: Sequence[bytes]) -> bytes:
    return b"".join(parts)


def _memo_put(k: int) -> st.SearchStrategy[bytes]:
    return st.sampled_from(
        [
            b"q" + bytes([k]),
            b"\x94",
            b"p" + str(k).encode() + b"\n",
            b"p0" + str(k).encode() + b"\n",  # leading zero: int() takes it, int(x, 0) not
            b"r" + struct.pack("<I", k),
        ]
    )


# A joblib NumpyArrayWrapper's pickle, in pieces: the class; an instance made without naming
# the class as the callable (copyreg._reconstructor(NumpyArrayWrapper, object, None)); and
# entries of its BUILD state.
_WRAPPER = sglobal("joblib.numpy_pickle", "NumpyArrayWrapper")
_RECONSTRUCTED_WRAPPER = (
    sglobal("copyreg", "_reconstructor") + _WRAPPER + sglobal("builtins", "object") + b"N\x87R"
)
_SUBCLASS = ustr("subclass") + sglobal("numpy", "ndarray")
_ORDER_C = ustr("order") + ustr("C")


def _shape(dims: Sequence[int]) -> bytes:
    """A tuple of LONG1 integers."""
    return b"(" + b"".join(b"\x8a" + _long1(n) for n in dims) + b"t"


def _dtype(spec: str) -> bytes:
    """The state entry "dtype": numpy.dtype(spec)."""
    return ustr("dtype") + sglobal("numpy", "dtype") + ustr(spec) + b"\x85R"


def _wrapper_state(shape: bytes, spec: str = "u1", alignment: bytes | None = None) -> bytes:
    """A wrapper's BUILD state: subclass, `shape` (opcodes), order C, dtype `spec`, and
    numpy_array_alignment_bytes = `alignment` (opcodes) when given."""
    aligned = b"" if alignment is None else ustr("numpy_array_alignment_bytes") + alignment
    return b"}(" + _SUBCLASS + ustr("shape") + shape + _ORDER_C + _dtype(spec) + aligned + b"u"


def _wrapper(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A joblib NumpyArrayWrapper made one of several ways, its BUILD and its raw data."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        head = draw(
            st.sampled_from(
                [
                    _WRAPPER + b")\x81",  # NEWOBJ: no attributes until BUILD
                    _WRAPPER + b"(NNNNtR",  # REDUCE: __init__ sets defaults (alignment 16)
                    _WRAPPER + b"(NNNN\x88K\x10tR",
                    b"(" + _WRAPPER + b"NNNNo",  # OBJ: __init__ too
                    b"(NNNNijoblib.numpy_pickle\nNumpyArrayWrapper\n",  # INST
                    _RECONSTRUCTED_WRAPPER,
                ]
            )
        )
        shape = draw(
            st.one_of(
                st.lists(st.integers(0, 4), max_size=3),
                st.lists(st.sampled_from([0, 1, 2**31, 2**40, 2**62, 2**64]), max_size=4),
            )
        )
        spec = draw(st.sampled_from(["u1", "i4", "f8", "b1", "c16", "U2", "S3", "O8", "V4"]))
        keys = draw(
            st.lists(
                st.sampled_from(
                    ["subclass", "shape", "order", "dtype", "allow_mmap", "alignment", "extra"]
                ),
                unique=True,
            )
        )
        values = {
            "subclass": _SUBCLASS,
            "shape": ustr("shape") + _shape(shape),
            "order": ustr("order") + ustr(draw(st.sampled_from(["C", "F", "K"]))),
            "dtype": ustr("dtype") + sglobal("numpy", "dtype") + ustr(spec) + b"\x89\x88\x87R",
            "allow_mmap": ustr("allow_mmap") + b"\x89",
            "alignment": ustr("numpy_array_alignment_bytes")
            + draw(st.sampled_from([b"K\x10", b"N", b"K\x00"])),
            "extra": ustr("extra") + draw(children),
        }
        state = b"}(" + b"".join(values[k] for k in keys) + b"u"
        count = math.prod(shape)
        size = {"u1": 1, "i4": 4, "f8": 8, "b1": 1, "c16": 16, "U2": 8, "S3": 3, "O8": 8}.get(
            spec, 4
        )
        nbytes = count * size if count * size <= 64 else draw(st.integers(0, 64))
        padding = draw(st.sampled_from([b"", b"\x00", b"\x03\xff\xff\xff", b"\x05"]))
        raw = draw(
            st.one_of(
                st.binary(min_size=nbytes, max_size=nbytes),
                st.lists(children, max_size=3).map(_cat),
                _LEAF.map(lambda b: b + b"."),
            )
        )
        return head + state + b"b" + padding + raw

    return build()


def _extend(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    items = st.lists(children, max_size=3).map(_cat)
    pairs = st.lists(st.tuples(children, children), max_size=3).map(
        lambda kv: b"".join(k + v for k, v in kv)
    )
    call_target = _names().flatmap(_global_ref)
    return st.one_of(
        items.map(lambda b: b"(" + b + b"t"),
        st.tuples(children).map(lambda t: t[0] + b"\x85"),
        st.tuples(children, children).map(lambda t: t[0] + t[1] + b"\x86"),
        st.tuples(children, children, children).map(lambda t: _cat(t) + b"\x87"),
        items.map(lambda b: b"(" + b + b"l"),
        items.map(lambda b: b"](" + b + b"e"),
        children.map(lambda b: b"]" + b + b"a"),
        pairs.map(lambda b: b"(" + b + b"d"),
        pairs.map(lambda b: b"}(" + b + b"u"),
        st.tuples(children, children).map(lambda t: b"}" + t[0] + t[1] + b"s"),
        items.map(lambda b: b"\x8f(" + b + b"\x90"),
        items.map(lambda b: b"(" + b + b"\x91"),
        st.tuples(call_target, items).map(lambda t: t[0] + b"(" + t[1] + b"tR"),
        st.tuples(call_target, items).map(lambda t: t[0] + b"(" + t[1] + b"t\x81"),
        st.tuples(call_target, items).map(lambda t: t[0] + b"(" + t[1] + b"t}\x92"),
        st.tuples(call_target, items).map(lambda t: b"(" + t[0] + t[1] + b"o"),
        st.tuples(_names(), items).map(
            lambda t: (
                b"(" + t[1] + b"i" + (t[0][0] + "\n" + t[0][1] + "\n").encode("utf-8", "replace")
            )
        ),
        st.tuples(call_target, items, children).map(
            lambda t: t[0] + b"(" + t[1] + b"tR" + t[2] + b"b"
        ),
        st.tuples(children, st.integers(0, 3)).flatmap(
            lambda t: _memo_put(t[1]).map(lambda put: t[0] + put)
        ),
        children.map(lambda b: b + b"20"),
        st.tuples(children, children).map(lambda t: t[0] + t[1] + b"0"),
        st.tuples(items, children).map(lambda t: b"(" + t[0] + b"1" + t[1]),
        _wrapper(children),
    )


VALUE = st.recursive(_LEAF, _extend, max_leaves=12)


def npy(descr: object, payload: bytes, version: int = 1) -> bytes:
    """A .npy file: `descr` in its header, then `payload` (a pickle for object arrays)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": (1,)}).encode("latin-1")
    width = 2 if version == 1 else 4
    header = header.ljust(64 - 8 - width - 1) + b"\n"
    size = len(header).to_bytes(width, "little")
    return b"\x93NUMPY" + bytes([version, 0]) + size + header + payload


NPY_DESCRS: list[object] = [
    "|O",
    "O",
    "<f8",
    "|u1",
    "object",
    [("a", "|O"), ("b", "<i4")],
    [("a", "object")],
    [("a", "<i4")],
]


@st.composite
def programs(draw: st.DrawFn) -> bytes:
    """A (usually) well-formed pickle: header, a value, STOP; sometimes framed or damaged,
    sometimes the pickle of a .npy object array."""
    header = draw(st.sampled_from([b"", b"\x80\x01", b"\x80\x02", b"\x80\x03", *HEADERS]))
    body = draw(VALUE) + b"."
    if header in (b"\x80\x04", b"\x80\x05") and draw(st.booleans()):
        body = b"\x95" + struct.pack("<Q", len(body)) + body
    data = header + body
    if draw(st.integers(0, 3)) == 0:
        data = draw(mutations(data))
    if draw(st.integers(0, 7)) == 0:
        data = npy(draw(st.sampled_from(NPY_DESCRS)), data)
    return data


@st.composite
def opcode_sequences(draw: st.DrawFn) -> bytes:
    """Random opcodes from pickletools.opcodes with random arguments."""
    header = draw(st.sampled_from([b"", *HEADERS]))
    ops = draw(st.lists(st.one_of(OPCODE, _LEAF), max_size=40))
    stop = draw(st.sampled_from([b".", b""]))
    return header + _cat(ops) + stop


def op_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each opcode pickletools can follow from the start of `data` (up to
    joblib's raw array data, or the first malformed opcode)."""
    spans: list[tuple[int, int]] = []
    previous: int | None = None
    try:
        for _, _, pos in pickletools.genops(data):
            if pos is None:
                break
            if previous is not None:
                spans.append((previous, pos))
            previous = pos
    except Exception:  # pickletools raises many kinds on bytes that are not a pickle
        pass
    if previous is not None:
        spans.append((previous, previous + 1))
    return spans


_BYTE_KINDS = ["flip", "truncate", "insert", "delete", "set", "duplicate"]
_OP_KINDS = ["op-delete", "op-duplicate", "op-swap", "op-replace", "op-insert", "op-truncate"]


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Bit flips, truncations, insertions, deletions, duplications of `data`'s bytes, and
    the same on whole opcodes (which keeps more mutants parseable: more reach the loader)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(_BYTE_KINDS + _OP_KINDS))
        spans = op_spans(bytes(buf)) if kind.startswith("op-") else []
        if spans:
            i = draw(st.integers(0, len(spans) - 1))
            start, end = spans[i]
            if kind == "op-delete":
                del buf[start:end]
            elif kind == "op-duplicate":
                j_start, _ = spans[draw(st.integers(0, len(spans) - 1))]
                buf[j_start:j_start] = buf[start:end]
            elif kind == "op-swap" and i + 1 < len(spans):
                n_start, n_end = spans[i + 1]
                buf[start:n_end] = buf[n_start:n_end] + buf[start:end]
            elif kind == "op-replace":
                buf[start:end] = draw(st.one_of(OPCODE, _LEAF))
            elif kind == "op-insert":
                buf[start:start] = draw(st.one_of(OPCODE, _LEAF))
            elif kind == "op-truncate":
                del buf[start:]
            continue
        at = draw(st.integers(0, len(buf)))
        if kind == "flip" and buf:
            i = min(at, len(buf) - 1)
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = draw(st.one_of(st.binary(min_size=1, max_size=8), OPCODE, _LEAF))
        elif kind == "delete":
            del buf[at : at + draw(st.integers(1, 8))]
        elif kind == "set" and buf:
            i = min(at, len(buf) - 1)
            buf[i] = draw(st.sampled_from([op.code.encode("latin-1")[0] for op in OPCODES]))
        elif kind == "duplicate" and buf:
            start = draw(st.integers(0, len(buf) - 1))
            piece = buf[start : start + draw(st.integers(1, 32))]
            buf[at:at] = piece
    return bytes(buf[:MAX_INPUT])


# ------------------------------------------------ properties 1 and 2: no crash, no hang

# Reproducers of scanner bugs found by these properties (see the module's report).
DEEP_EQUAL_KEYS = b"\x80\x04}" + b")" + b"\x85" * 3000 + b"Ns" + b")" + b"\x85" * 3000 + b"Ns."
HUGE_DTYPE_DIGITS = (
    b"\x80\x04" + _WRAPPER + b")\x81" + _wrapper_state(b"K\x01\x85", "f" + "1" * 5000) + b"b."
)


@FUZZ
@given(data=st.binary(max_size=4096))
@example(data=DEEP_EQUAL_KEYS)
@example(data=HUGE_DTYPE_DIGITS)
def test_arbitrary_bytes_never_crash(data: bytes, tmp_path: Path) -> None:
    scan_bytes(data, tmp_path / "input.bin", AllowList())


@FUZZ
@given(header=st.sampled_from(HEADERS + MAGICS), rest=st.binary(max_size=4096))
def test_bytes_after_a_header_never_crash(header: bytes, rest: bytes, tmp_path: Path) -> None:
    scan_bytes(header + rest, tmp_path / "input.bin", TOY_ALLOWLIST)


@settings(FUZZ, max_examples=examples(120))
@given(data=opcode_sequences())
@example(data=b"\x80\x02I" + b"9" * 5000 + b"\n.")  # int() refuses over 4300 digits
def test_random_opcode_sequences_never_crash(data: bytes, tmp_path: Path) -> None:
    scan_bytes(data, tmp_path / "input.bin", TOY_ALLOWLIST)


def _huge_claims() -> list[tuple[str, bytes]]:
    # A wrapper whose state names its shape last: the dimensions come next.
    wrapper_head = (
        b"\x80\x04" + _WRAPPER + b")\x81}(" + _SUBCLASS + _ORDER_C + _dtype("f8") + ustr("shape")
    )
    tail = b"x" * 1000 + b"."
    cases = [
        ("BINBYTES8 2**62", b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + tail),
        ("BINBYTES8 2**64-1", b"\x80\x04\x8e" + struct.pack("<Q", 2**64 - 1) + tail),
        ("BYTEARRAY8 2**62", b"\x80\x05\x96" + struct.pack("<Q", 2**62) + tail),
        ("BINUNICODE8 2**63", b"\x80\x04\x8d" + struct.pack("<Q", 2**63) + tail),
        ("BINUNICODE 2**32-1", b"\x80\x04X" + struct.pack("<I", 2**32 - 1) + tail),
        ("BINBYTES 2**32-1", b"\x80\x04B" + struct.pack("<I", 2**32 - 1) + tail),
        ("BINSTRING 2**31-1", b"\x80\x02T" + struct.pack("<i", 2**31 - 1) + tail),
        ("LONG4 2**31-1", b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + tail),
        ("FRAME 2**60", b"\x80\x04\x95" + struct.pack("<Q", 2**60) + b"N" * 1000 + b"."),
        ("FRAME 2**64-1", b"\x80\x04\x95" + struct.pack("<Q", 2**64 - 1) + b"N."),
        ("array 2**40 x 2**40", wrapper_head + _shape((2**40, 2**40)) + b"ub" + tail),
        ("array (2**31,)*8", wrapper_head + _shape((2**31,) * 8) + b"ub" + tail),
        ("array 2**2000", wrapper_head + _shape((2**2000,)) + b"ub" + tail),
        ("long line", b"\x80\x02S'" + b"a" * 60000),
        ("deep marks", b"\x80\x04" + b"(" * 60000 + b"."),
        ("deep tuple", b"\x80\x04" + b")" + b"\x85" * 60000 + b"."),
        ("deep hashed key", b"\x80\x04}" + b")" + b"\x85" * 60000 + b"Ns."),
        ("many memo puts", b"\x80\x04N" + b"\x94" * 60000 + b"."),
    ]
    out: list[tuple[str, bytes]] = []
    for name, data in cases:
        out.append((name, data))
        out += [(f"{name} ({method})", COMPRESSORS[method][0](data)) for method in ("zlib", "lz4")]
    return out


@by_name(_huge_claims())
def test_huge_length_claims_finish_fast(name: str, data: bytes, tmp_path: Path) -> None:
    """Lengths a file claims are never trusted to allocate or wait on."""
    assert len(data) <= MAX_INPUT + 1024
    result = scan_bytes(data, tmp_path / "input.bin", TOY_ALLOWLIST)
    if name.startswith(("BIN", "BYTEARRAY", "LONG", "array")):
        # The data a length names is not there: the unpickler would fail; so must the scan.
        assert not result.safe, result


@FUZZ
@given(
    length_op=st.sampled_from([b"\x8e", b"\x96", b"\x8d", b"B", b"X", b"T", b"\x8b", b"\x95"]),
    length=st.sampled_from(HUGE),
    rest=st.one_of(st.binary(max_size=2048), OPCODE),
    method=st.sampled_from([None, *COMPRESSORS]),
)
def test_huge_length_claims_in_any_container_finish_fast(
    length_op: bytes, length: int, rest: bytes, method: str | None, tmp_path: Path
) -> None:
    fmt = {b"B": "<I", b"X": "<I", b"T": "<i", b"\x8b": "<i"}.get(length_op, "<Q")
    low, high = {"<I": (0, 2**32 - 1), "<i": (-(2**31), 2**31 - 1)}.get(fmt, (0, 2**64 - 1))
    payload = b"\x80\x04" + length_op + struct.pack(fmt, max(low, min(high, length))) + rest
    data = payload if method is None else COMPRESSORS[method][0](payload)
    scan_bytes(data, tmp_path / "input.bin", TOY_ALLOWLIST)


def _bz2_bomb() -> bytes:
    """~14 KB of concatenated bz2 streams that inflate past the scanner's bound (256 MiB),
    after a BINBYTES8 that asks the scanner to skip all of it."""
    first = bz2.compress(b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"\0" * 1024)
    zeros = bz2.compress(b"\0" * (1 << 20))
    return first + zeros * 300


def test_decompression_bomb_is_refused_fast(tmp_path: Path) -> None:
    """bz2 has the highest ratio of joblib's compressors: the worst case for the bound."""
    data = _bz2_bomb()
    assert len(data) <= MAX_INPUT
    result = scan_bytes(data, tmp_path / "bomb.bin", TOY_ALLOWLIST)
    assert not result.safe


DAG_HASH_BOMB = b"\x80\x04}" + b")" + b"2\x86" * 40 + b"Ns."


def test_shared_subtree_key_does_not_hang(tmp_path: Path) -> None:
    """An 87-byte pickle whose dict key is a tuple DAG with 2**40 leaves: hashing it is
    exponential. Scanned in a subprocess, as a C-level hash cannot be interrupted."""
    path = tmp_path / "dag.pkl"
    path.write_bytes(DAG_HASH_BOMB)
    code = (
        "import sys; from pathlib import Path; from integrity.safety.scanner import scan_path;"
        "r = scan_path(Path(sys.argv[1])); print(r.safe)"
    )
    try:
        subprocess.run(
            [sys.executable, "-c", code, str(path)],
            timeout=5,
            capture_output=True,
            check=False,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"scan of a {len(DAG_HASH_BOMB)}-byte pickle did not finish in 5 s")


# ------------------------------------------------ property 4: exact view of benign files


def test_benign_corpus_loads(corpus: Corpus) -> None:
    """The corpus itself is sound: every artifact loads with joblib in the sandbox."""
    failed = [(a.name, e) for a, e in zip(corpus.artifacts, corpus.load_errors, strict=True) if e]
    failed += [(corpus.artifacts[i].name, o.error) for i, o in corpus.c_globals.items() if o.error]
    assert not failed


def test_benign_files_scan_safe_with_exactly_the_real_globals(corpus: Corpus) -> None:
    """Property 4: scanner globals == globals joblib.load resolves (and the C unpickler's,
    for plain pickles), for every benign artifact."""
    problems: list[str] = []
    for i, (artifact, path) in enumerate(zip(corpus.artifacts, corpus.paths, strict=True)):
        result = scan_file(path, corpus.allowlist)
        if not result.safe:
            problems.append(f"{artifact.name}: unsafe: {result.findings[:3]}")
            continue
        scanned = scanned_globals(result)
        real = corpus.real_globals[i]
        if scanned != real:
            problems.append(
                f"{artifact.name} [joblib]: scanner-only {sorted(scanned - real)}, "
                f"unpickler-only {sorted(real - scanned)}"
            )
        c_load = corpus.c_globals.get(i)
        if c_load is not None and (c_load.error or c_load.resolved != scanned):
            problems.append(
                f"{artifact.name} [C pickle]: scanner-only {sorted(scanned - c_load.resolved)}, "
                f"unpickler-only {sorted(c_load.resolved - scanned)}, error {c_load.error}"
            )
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_full_benign_corpus_has_exactly_the_real_globals(
    sandbox: Sandbox, tmp_path: Path, benign_models: list[tuple[str, object]]
) -> None:
    """Property 4 over tests/safety_corpus.py: every estimator in every dump style (but
    skops, which is not a pickle), scanned and loaded by joblib, C pickle or numpy.load."""
    from safety_corpus import dump_styles

    files: list[tuple[Path, str]] = []
    for style, dump in dump_styles():
        if style == "skops":
            continue
        for name, obj in benign_models:
            path = tmp_path / f"{name}.{style}"
            dump(obj, path)
            files.append((path, style))
    jobs: list[LoadJob] = []
    for path, style in files:
        modes = ["joblib"] if style.startswith("joblib") else []
        modes += ["numpy"] if style.startswith("numpy") else []
        modes += ["joblib", "pickle"] if style.startswith("pickle") else []
        jobs += [LoadJob(path, mode, None, f"{path.name} [{mode}]") for mode in modes]
    outcomes = sandbox.load(jobs)
    allowlist = _allowlist_of(outcomes)
    scans = {path: scan_file(path, allowlist) for path, _ in files}
    problems: list[str] = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        result = scans[job.path]
        scanned = scanned_globals(result)
        if outcome.error:
            problems.append(f"{job.label}: does not load: {outcome.error}")
        elif not result.safe:
            problems.append(f"{job.label}: unsafe: {result.findings[:2]}")
        elif scanned != outcome.resolved:
            problems.append(
                f"{job.label}: scanner-only {sorted(scanned - outcome.resolved)}, "
                f"unpickler-only {sorted(outcome.resolved - scanned)}"
            )
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])


# ------------------------------------------------ property 3: nothing unscanned runs


def test_mutated_benign_files_never_pass_garbage(
    corpus: Corpus, sandbox: Sandbox, tmp_path: Path
) -> None:
    """Mutants of real pickles and joblib files (the file's bytes, or the pickle inside a
    compressed file, recompressed): never a crash or a slow scan, and a mutant the scan
    passes resolves only the globals the scan reported when really loaded."""
    accepted = AcceptedInputs(tmp_path / "accepted")
    scratch = tmp_path / "input.bin"

    @settings(FUZZ, max_examples=examples(250))
    @given(st.data())
    def mutate_and_scan(data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(corpus.artifacts) - 1), label="artifact")
        artifact = corpus.artifacts[index]
        if artifact.method is not None and data.draw(st.booleans(), label="inner"):
            inner = data.draw(mutations(artifact.payload), label="mutant payload")
            mutant = COMPRESSORS[artifact.method][0](inner)
        else:
            mutant = data.draw(mutations(artifact.data), label="mutant")
        result = scan_bytes(mutant, scratch, corpus.allowlist)
        accepted.add(mutant, result, f"mutant of {artifact.name}")

    mutate_and_scan()
    assert_loads_match_scans(accepted.items, sandbox)


def test_generated_programs_never_pass_garbage(sandbox: Sandbox, tmp_path: Path) -> None:
    """Well-formed and damaged generated pickles (calls, BUILDs, memo, frames, joblib array
    wrappers made every way) and random opcode sequences, scanned with a toy allow-list."""
    accepted = AcceptedInputs(tmp_path / "accepted")
    scratch = tmp_path / "input.bin"

    @settings(FUZZ, max_examples=examples(250))
    @given(st.one_of(programs(), opcode_sequences()))
    def generate_and_scan(data: bytes) -> None:
        result = scan_bytes(data, scratch, TOY_ALLOWLIST)
        accepted.add(data, result, "generated")

    generate_and_scan()
    assert_loads_match_scans(accepted.items, sandbox)


_EVIL = b"0" + sglobal("builtins", "print") + ustr("PWNED") + b"\x85R."

# Regressions: each of these once passed the scan (default allow-list), yet the real loader
# named reached builtins.print (a stand-in for os.system). The comments say how the
# scanner's reading differed from the loader's when they were found.
CRAFTED: list[tuple[str, bytes]] = [
    # NumpyArrayWrapper made by REDUCE: __init__ sets numpy_array_alignment_bytes=16, the
    # BUILD state leaves it out; joblib reads a padding byte and 5 bytes of padding the
    # scanner does not, so the scanner sees a bytes constant where joblib sees opcodes.
    (
        "joblib.load: REDUCE-made wrapper keeps its default alignment",
        b"\x80\x04"
        + _WRAPPER
        + b"(NNNNtR"
        + _wrapper_state(b"K\x01\x85")
        + b"b\x05C"
        + bytes([4 + len(_EVIL)])
        + b"xxxD"
        + _EVIL
        + b"0.",
    ),
    # A wrapper without an alignment key in a plain pickle: the C unpickler has no notion of
    # joblib's raw array data and runs the "data" bytes as opcodes.
    (
        "pickle.load: joblib array data read as opcodes",
        b"\x80\x04"
        + _WRAPPER
        + b")\x81"
        + _wrapper_state(b"K" + bytes([len(_EVIL)]) + b"\x85")
        + b"b"
        + _EVIL
        + b".",
    ),
    # The scanner parsed PUT's argument with int(x, 0), which refuses "010"; the unpickler
    # uses int(x) and accepts it. The scan failed before naming a global, decided the file
    # was "not-pickle", and reported it safe.
    ("PUT 010: sniffed as not-pickle", b"Np010\n0c__builtin__\nprint\n(S'PWNED'\ntR."),
    # copyreg._reconstructor(NumpyArrayWrapper, object, None) makes a wrapper instance; the
    # scanner only treated a BUILD on an object whose callable is the wrapper class as one,
    # joblib treats any NumpyArrayWrapper instance as one and reads 2 bytes of array data.
    (
        "joblib.load: wrapper made by copyreg._reconstructor",
        b"\x80\x02"
        + _RECONSTRUCTED_WRAPPER
        + _wrapper_state(b"K\x02\x85", alignment=b"N")
        + b"b"
        + b"C"
        + bytes([len(_EVIL)])
        + _EVIL
        + b"0.",
    ),
    # The C unpickler reads INT with strtol base 0 (010 is octal 8); Python's int refuses it.
    ("C INT 010: sniffed as not-pickle", b"I010\n0cbuiltins\nprint\n(S'PWNED'\ntR."),
    # The pure-Python unpickler (joblib's) takes a last line without its newline, drops its
    # last byte, and imports the module named: importing `this` runs its code. The scan
    # saw a truncated GLOBAL before any name and called the file "not-pickle".
    ("truncated GLOBAL: sniffed as not-pickle", b"cthis\nx"),
    # numpy.dtype("object") holds Python objects; the scanner only knew the "O" spelling,
    # so it did not scan the pickle numpy.load(allow_pickle=True) runs.
    ("npy descr 'object'", npy("object", _EVIL[1:])),
]


# Files the scan passes whose load crashes the interpreter through an allow-listed global.
CRASHERS: list[tuple[str, bytes]] = [
    # numpy.dtype.__setstate__ with a 6-item state (numpy writes 8) segfaults numpy 2.x.
    (
        "numpy.dtype 6-item state",
        b"\x80\x04"
        + sglobal("numpy", "dtype")
        + ustr("i4")
        + b"\x89\x88\x87R(K\x03"
        + ustr("<")
        + b"NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.",
    ),
]


@by_name(CRASHERS)
def test_states_that_crash_the_loader_are_refused(name: str, data: bytes, tmp_path: Path) -> None:
    result = scan_bytes(data, tmp_path / "crash.pkl", AllowList())
    assert not result.safe, f"{name}: scan says safe, but loading it crashes the interpreter"


@by_name(CRAFTED)
def test_crafted_desyncs_are_refused(name: str, data: bytes, tmp_path: Path) -> None:
    """A file the real unpickler would read differently from the scanner is never safe."""
    result = scan_bytes(data, tmp_path / "crafted.pkl", AllowList())
    assert not result.safe, f"{name}: scan says safe ({result.format})"


def test_crafted_desyncs_load_only_scanned_globals(sandbox: Sandbox, tmp_path: Path) -> None:
    """Property 3 on the crafted inputs, with the default allow-list."""
    accepted = AcceptedInputs(tmp_path / "accepted")
    for name, data in CRAFTED:
        result = scan_bytes(data, tmp_path / "crafted.pkl", AllowList())
        accepted.add(data, result, name)
    assert_loads_match_scans(accepted.items, sandbox)
