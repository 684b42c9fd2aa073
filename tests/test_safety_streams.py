"""The scanner's byte windows (integrity.safety.streams): the symbolic machine reads a
window in memory directly, and where a window ends must never change what a scan finds.

Each scan is repeated with windows of a few bytes (streams.BLOCK patched), so that every
opcode, argument, frame end and array block crosses a window's end somewhere, and must
give exactly the findings, offsets and globals of a scan with the usual 1 MiB windows.
"""

from __future__ import annotations

import bz2
import gzip
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from malicious_corpus import build_corpus, malicious_cases
from safety_corpus import dump_styles
from test_safety_fuzz import opcode_sequences, programs

from integrity.safety import streams
from integrity.safety.allowlist import AllowList
from integrity.safety.pickle_vm import PickleError, PickleMachine
from integrity.safety.scanner import ScanResult, scan_path
from integrity.safety.streams import DecompressingSource, FileSource, Source

SMALL_WINDOWS = (1, 2, 3, 7, 61)
Summary = tuple[
    str, list[tuple[str, int | None, str | None, str | None]], list[tuple[str, str, int]]
]


def summary(result: ScanResult) -> Summary:
    findings = [(f.code, f.offset, f.global_name, f.member) for f in result.findings]
    uses = [(u.module, u.name, u.offset) for u in result.globals_used]
    return result.format, findings, uses


def scan_with_window(path: Path, block: int, allowlist: AllowList | None = None) -> Summary:
    saved = streams.BLOCK
    streams.BLOCK = block
    try:
        return summary(scan_path(path, allowlist))
    finally:
        streams.BLOCK = saved


def assert_windows_agree(path: Path, windows: tuple[int, ...] = SMALL_WINDOWS) -> Summary:
    expected = summary(scan_path(path))
    for block in windows:
        assert scan_with_window(path, block) == expected, f"{path.name}, {block}-byte windows"
    return expected


# ------------------------------------------------------------------ whole files


@pytest.fixture(scope="module")
def malicious_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    with build_corpus(tmp_path_factory.mktemp("windows"), malicious_cases()) as built:
        # Files that inflate to hundreds of MB are left to the bomb tests: with
        # 1-byte windows they would take minutes, and prove nothing more.
        yield [
            item.path
            for item in built.values()
            if item.path.exists() and "bomb" not in item.case.name
        ]


def test_window_ends_never_change_a_malicious_file_s_findings(malicious_files: list[Path]) -> None:
    assert len(malicious_files) > 50
    for path in malicious_files:
        if path.stat().st_size > 256 << 10:
            windows: tuple[int, ...] = (61, 4096)
        else:
            windows = SMALL_WINDOWS
        assert_windows_agree(path, windows)


def test_window_ends_never_change_a_benign_model_s_scan(tmp_path: Path) -> None:
    """A small fitted pipeline (arrays, nested estimators) in every common dump style:
    safe with any window, with the same globals at the same offsets."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, StandardScaler

    x = np.random.RandomState(0).rand(30, 3)
    y = (x[:, 0] > 0.5).astype(int)
    steps = [(f"s{i}", (StandardScaler, MinMaxScaler)[i % 2]()) for i in range(6)]
    model = Pipeline([*steps, ("lr", LogisticRegression())]).fit(x, y)
    for style, dump in dump_styles():
        path = tmp_path / f"model-{style}"
        dump(model, path)
        fmt, findings, uses = assert_windows_agree(path, (1, 3, 61))
        if fmt != "skops":
            assert not findings, (style, findings)
            assert uses, style


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.one_of(opcode_sequences(), programs()), block=st.sampled_from(SMALL_WINDOWS))
def test_window_ends_never_change_a_generated_pickle_s_scan(
    data: bytes, block: int, tmp_path: Path
) -> None:
    path = tmp_path / "input.pkl"
    path.write_bytes(data)
    assert scan_with_window(path, block) == summary(scan_path(path))


@FUZZ
@given(data=programs(), block=st.sampled_from(SMALL_WINDOWS))
def test_window_ends_never_change_a_compressed_pickle_s_scan(
    data: bytes, block: int, tmp_path: Path
) -> None:
    """Decompressed windows: the decompressor's output is cut at every `block` bytes."""
    path = tmp_path / "input.gz"
    path.write_bytes(gzip.compress(data))
    assert scan_with_window(path, block) == summary(scan_path(path))


# ------------------------------------------------------------------ the sources


def _file(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams, "BLOCK", 4)


@pytest.mark.usefixtures("small_blocks")
def test_reads_lines_and_skips_cross_windows_in_a_file(tmp_path: Path) -> None:
    data = b"first line\nsecond\n" + bytes(range(40)) + b"tail"
    fd = _file(tmp_path, data)
    try:
        source = FileSource(fd, len(data))
        assert source.readline(100) == b"first line\n"
        assert source.readline(3) == b"sec"  # the limit ends the line
        assert source.readline(100) == b"ond\n"
        assert source.peek(2) == bytes([0, 1])  # left unread
        assert source.read(3) == bytes([0, 1, 2])
        assert source.skip(30) == 30  # past the window: a jump, not a read
        assert source.tell() == 18 + 33
        assert source.read(100) == bytes(range(33, 40)) + b"tail"
        assert source.read(1) == b"" and source.readline(10) == b""
        assert source.skip(5) == 0 and source.skip(-3) == 0
        source.seek(11)  # left the window long ago: read again from the file
        assert source.read(7) == b"second\n"
    finally:
        os.close(fd)


def test_a_skip_stops_at_the_file_s_end(tmp_path: Path) -> None:
    fd = _file(tmp_path, b"abcdef")
    try:
        source = FileSource(fd, 6)
        assert source.read(2) == b"ab"
        assert source.skip(1 << 40) == 4
        assert source.tell() == 6
    finally:
        os.close(fd)


@pytest.mark.usefixtures("small_blocks")
def test_decompressed_windows_stay_block_sized(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decompressed stream is never held whole: the window is at most what one read
    asks for plus a block, whatever was skipped or read before."""
    data = bytes(range(256)) * 64 + b"line\n"
    fd = _file(tmp_path, bz2.compress(data))
    widest = 0
    fill = Source.fill

    def watched(self: Source, n: int) -> int:
        nonlocal widest
        available = fill(self, n)
        widest = max(widest, len(self.buf))
        return available

    monkeypatch.setattr(Source, "fill", watched)
    try:
        source = DecompressingSource(fd, os.fstat(fd).st_size, "bz2")
        assert source.read(10) == data[:10]
        assert source.skip(len(data) - 20) == len(data) - 20
        assert source.read(5) == data[-10:-5]
        assert source.readline(100) == b"line\n"
        assert source.read(1) == b""
        assert source.tell() == len(data)
    finally:
        os.close(fd)
    assert widest <= 10 + 4


def _frames(*bodies: bytes) -> bytes:
    return b"".join(b"\x95" + struct.pack("<Q", len(body)) + body for body in bodies)


def test_a_machine_leaves_the_fence_as_it_found_it(tmp_path: Path) -> None:
    """A machine fences the window at its frame's end while it runs; finished or failed,
    it must leave the source to the machine that called it (a nested pickle's caller)."""
    data = b"\x80\x04" + _frames(b"K\x01J\x02\x00") + b"\x00\x00\x86."
    fd = _file(tmp_path, data + b"\x80\x04K")
    try:
        source = FileSource(fd, os.fstat(fd).st_size)
        source.set_fence(1000)
        machine = PickleMachine(source, lambda use: None)
        assert machine.run() == (1, 2)
        assert [p.code for p in machine.problems] == ["bad-frame"]  # J's argument crosses its end
        assert source.fence == 1000 and source.tell() == len(data)
        with pytest.raises(PickleError, match="middle of an opcode"):
            PickleMachine(source, lambda use: None).run()
        assert source.fence == 1000
        assert source.stop == min(len(source.buf), 1000 - source.base)
    finally:
        os.close(fd)


def test_frames_are_checked_at_their_ends_only(tmp_path: Path) -> None:
    """Frames whose opcodes end exactly at the frame's end raise nothing."""
    body = pickle.dumps({"a": [1, 2, 3], "b": "x" * 10}, protocol=4)
    fd = _file(tmp_path, body)
    try:
        machine = PickleMachine(FileSource(fd, len(body)), lambda use: None)
        machine.run()
        assert machine.problems == []
    finally:
        os.close(fd)


@pytest.mark.parametrize("block", [1, 2, 1 << 20])
def test_binget_is_followed_exactly_in_and_out_of_the_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """The machine's loop takes BINGET's common case itself: a stored key pushes the
    memo's value, a key never stored stays the handler's failure, wherever the window
    ends (1 byte: the key is always past it)."""
    monkeypatch.setattr(streams, "BLOCK", block)
    stored = b"\x80\x04K\x07\x94h\x00h\x00\x86."  # 7, MEMOIZE, BINGET 0 twice, TUPLE2
    fd = _file(tmp_path, stored + b"\x80\x04K\x07\x94h\x01.")
    try:
        source = FileSource(fd, os.fstat(fd).st_size)
        assert PickleMachine(source, lambda use: None).run() == (7, 7)
        with pytest.raises(PickleError, match="memo key 1 was never stored") as failed:
            PickleMachine(source, lambda use: None).run()
        assert failed.value.offset == len(stored) + 5
    finally:
        os.close(fd)
