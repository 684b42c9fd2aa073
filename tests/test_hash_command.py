"""`model-integrity hash`: byte-for-byte sha256sum output, `--check`, and never hanging.

The reference is the real GNU `sha256sum` on this machine; tests that need it
are skipped where it is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrity import sha256sum
from integrity.cli import main

REPO = Path(__file__).resolve().parents[1]
SHA256SUM = shutil.which("sha256sum")
needs_sha256sum = pytest.mark.skipif(SHA256SUM is None, reason="GNU sha256sum not installed")
TIMEOUT = 60

# File names as bytes: everything sha256sum escapes, and the look-alikes it does not.
ODD_NAMES: list[bytes] = [
    b"plain",
    b"sp ace",
    b" leading space",
    b"trailing space ",
    b"*star",
    b"a\\b",
    b"\\starts-with-backslash",
    b"ends-with-backslash\\",
    b"new\nline",
    b"\nstarts-with-newline",
    b"cr\rx",
    b"ends-with-cr\r",
    b"back\\slash\nand\rcr",
    b"tab\tx",
    b"\xff\xfe not utf-8",
    "ünïcödé ✓".encode(),
    b"-dash",
    b"#hash",
    b"(paren)",
    b"SHA256 (x) = y",
    b"a: OK",
    b"\\n literally",
]


def _write_odd_files(folder: Path) -> list[bytes]:
    for index, name in enumerate(ODD_NAMES):
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(b"content %d\n" % index * (index + 1))
    (folder / "empty").write_bytes(b"")
    # Several read blocks (1 MiB each), not a multiple of the block size.
    (folder / "big.bin").write_bytes(os.urandom(1 << 16) * 40 + b"tail")
    return [*ODD_NAMES, b"empty", b"big.bin"]


def python_env() -> dict[str, str]:
    """The environment for a child Python that imports this checkout's `integrity`."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run_python(
    *args: str | bytes, cwd: Path, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=python_env(),
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def run_tool(
    args: list[bytes] | list[str], cwd: Path, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return run_python("-m", "integrity", "hash", *args, cwd=cwd, stdin=stdin)


def run_sha256sum(
    args: list[bytes] | list[str], cwd: Path, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    assert SHA256SUM is not None
    return subprocess.run(
        [SHA256SUM, *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[bytes]:
    return result.stderr.splitlines()


def digest_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- hash PATH... --------------------------------------------------------------------


@needs_sha256sum
def test_output_is_byte_for_byte_sha256sum(tmp_path: Path) -> None:
    names = _write_odd_files(tmp_path)
    expected = run_sha256sum([b"--", *names], tmp_path)
    assert expected.returncode == 0, expected.stderr
    # The escaping really is exercised: some lines start with a backslash.
    assert sum(line.startswith(b"\\") for line in expected.stdout.split(b"\n")) >= 8

    ours = run_tool([b"--", *names], tmp_path)
    assert ours.stderr == b""
    assert ours.returncode == 0
    assert ours.stdout == expected.stdout


@needs_sha256sum
def test_in_process_output_matches_sha256sum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    names = _write_odd_files(tmp_path)
    expected = run_sha256sum([b"--", *names], tmp_path).stdout
    monkeypatch.chdir(tmp_path)

    code = main(["hash", "--", *(os.fsdecode(name) for name in names)])

    captured = capsysbinary.readouterr()
    assert (code, captured.err) == (0, b"")
    assert captured.out == expected


@needs_sha256sum
def test_many_files_are_printed_in_argument_order(tmp_path: Path) -> None:
    names = [f"f{i:03d}" for i in range(60)]
    for i, name in enumerate(reversed(names)):
        # Sizes differ a lot, so parallel workers finish out of order.
        (tmp_path / name).write_bytes(os.urandom(1 + (i % 7) * 300_000))
    expected = run_sha256sum(names, tmp_path)
    ours = run_tool(names, tmp_path)
    assert (ours.returncode, ours.stderr) == (0, b"")
    assert ours.stdout == expected.stdout
    assert [line.split(b"  ")[1] for line in ours.stdout.splitlines()] == [
        name.encode() for name in names
    ]


@needs_sha256sum
def test_names_are_printed_as_given(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "plain").write_bytes(b"x")
    (tmp_path / "link").symlink_to("plain")  # a symlink named on the command line is followed
    args = ["./plain", str(tmp_path / "plain"), "sub/../plain", "link", "./sub/../link"]
    expected = run_sha256sum(args, tmp_path)
    ours = run_tool(args, tmp_path)
    assert (ours.returncode, ours.stderr) == (0, b"")
    assert ours.stdout == expected.stdout


@needs_sha256sum
def test_stdin_dash_matches_sha256sum(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"file")
    data = os.urandom(3 << 20)
    args = ["-", "plain", "-"]  # the second '-' finds standard input at its end
    expected = run_sha256sum(args, tmp_path, stdin=data)
    ours = run_tool(args, tmp_path, stdin=data)
    assert (ours.returncode, ours.stderr) == (0, b"")
    assert ours.stdout == expected.stdout
    first = ours.stdout.splitlines()[0]
    assert first == hashlib.sha256(data).hexdigest().encode() + b"  -"


def _make_tree(root: Path) -> None:
    (root / "b").mkdir(parents=True)
    (root / "b-c").mkdir()
    (root / "b" / "deep" / "er").mkdir(parents=True)
    (root / "b" / "x").write_bytes(b"1")
    (root / "b-c" / "y").write_bytes(b"2")
    (root / "b" / "deep" / "er" / "z").write_bytes(b"3")
    (root / "a file").write_bytes(b"4")
    (root / "empty-dir").mkdir()
    with open(os.path.join(os.fsencode(root), b"odd\nname\\"), "wb") as f:
        f.write(b"5")


@needs_sha256sum
@pytest.mark.parametrize("arg", ["model", "model/", "./model"])
def test_folder_is_expanded_in_sorted_order(tmp_path: Path, arg: str) -> None:
    _make_tree(tmp_path / "model")
    prefix = arg if arg.endswith("/") else arg + "/"
    # The whole path in byte order: b-c/y sorts before b/x ('-' < '/'), like `LC_ALL=C sort`.
    rels = [b"a file", b"b-c/y", b"b/deep/er/z", b"b/x", b"odd\nname\\"]
    files = [prefix.encode() + rel for rel in rels]
    expected = run_sha256sum([b"--", *files], tmp_path)
    assert expected.returncode == 0

    ours = run_tool([arg], tmp_path)
    assert (ours.returncode, ours.stderr) == (0, b"")
    assert ours.stdout == expected.stdout


def test_folder_symlinks_and_special_files_are_reported_not_followed(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "real").write_bytes(b"real")
    (tmp_path / "outside").write_bytes(b"secret")
    (tmp_path / "outside-dir").mkdir()
    (tmp_path / "outside-dir" / "inner").write_bytes(b"inner")
    (folder / "link-file").symlink_to(tmp_path / "outside")
    (folder / "link-dir").symlink_to(tmp_path / "outside-dir")
    os.mkfifo(folder / "pipe")

    ours = run_tool(["model"], tmp_path)

    assert ours.returncode == 2
    assert ours.stdout == f"{digest_of(folder / 'real')}  model/real\n".encode()
    assert stderr_lines(ours) == [
        b"model-integrity: error: model/link-dir: is a symlink; "
        b"symlinks inside a folder are not followed",
        b"model-integrity: error: model/link-file: is a symlink; "
        b"symlinks inside a folder are not followed",
        b"model-integrity: error: model/pipe: is a FIFO (named pipe), not a regular file; not read",
    ]


def test_fifo_argument_does_not_hang_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe")
    ours = run_tool(["pipe", "plain"], tmp_path)  # run_tool has a timeout
    assert ours.returncode == 2
    assert ours.stdout == f"{digest_of(tmp_path / 'plain')}  plain\n".encode()
    assert stderr_lines(ours) == [
        b"model-integrity: error: pipe: is a FIFO (named pipe), not a regular file; not read"
    ]


def test_fifo_swapped_in_after_the_stat_does_not_hang(tmp_path: Path) -> None:
    """The race: stat saw a regular file, a FIFO is opened; O_NONBLOCK + fstat catch it."""
    (tmp_path / "plain").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe")
    script = (
        "import os, sys\n"
        "real_stat, regular = os.stat, os.stat('plain')\n"
        "def lying_stat(path, *args, **kwargs):\n"
        "    if path == 'pipe' and not args and not kwargs:\n"
        "        return regular\n"
        "    return real_stat(path, *args, **kwargs)\n"
        "os.stat = lying_stat\n"
        "from integrity.cli import main\n"
        "sys.exit(main(['hash', 'pipe', 'plain']))\n"
    )
    result = run_python("-c", script, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == f"{digest_of(tmp_path / 'plain')}  plain\n".encode()
    assert stderr_lines(result) == [
        b"model-integrity: error: pipe: changed while being opened; not read"
    ]


def test_device_argument_is_not_read(tmp_path: Path) -> None:
    # /dev/zero would never end if it were read.
    ours = run_tool(["/dev/zero"], tmp_path)
    assert ours.returncode == 2
    assert ours.stdout == b""
    assert stderr_lines(ours) == [
        b"model-integrity: error: /dev/zero: is a character device, not a regular file; not read"
    ]


def test_missing_path_is_reported_and_the_others_still_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    (tmp_path / "one").write_bytes(b"1")
    (tmp_path / "two").write_bytes(b"2")
    monkeypatch.chdir(tmp_path)

    code = main(["hash", "one", "nope", "two", "gone/deeper"])

    captured = capsysbinary.readouterr()
    assert code == 2
    assert captured.out == (
        f"{digest_of(tmp_path / 'one')}  one\n{digest_of(tmp_path / 'two')}  two\n".encode()
    )
    assert captured.err.splitlines() == [
        b"model-integrity: error: nope: No such file or directory",
        b"model-integrity: error: gone/deeper: No such file or directory",
    ]


def test_error_line_for_odd_name_stays_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["hash", "no\nsuch\rfile"])
    captured = capsysbinary.readouterr()
    assert code == 2
    assert captured.err == b"model-integrity: error: no\\nsuch\\rfile: No such file or directory\n"


def test_unopenable_file_is_reported_in_hash_and_check(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    refuse_opening: Callable[[Path], list[str]],
) -> None:
    (tmp_path / "locked").write_bytes(b"x")
    (tmp_path / "fine").write_bytes(b"y")
    listing = f"{digest_of(tmp_path / 'locked')}  locked\n{digest_of(tmp_path / 'fine')}  fine\n"
    (tmp_path / "SUMS").write_text(listing)
    monkeypatch.chdir(tmp_path)
    refuse_opening(tmp_path / "locked")  # root can read everything

    code = main(["hash", "locked", "fine"])
    captured = capsysbinary.readouterr()
    assert code == 2
    assert captured.out == f"{digest_of(tmp_path / 'fine')}  fine\n".encode()
    assert captured.err == b"model-integrity: error: locked: Permission denied\n"

    code = main(["hash", "--check", "SUMS"])
    captured = capsysbinary.readouterr()
    assert code == 1
    assert captured.out == b"locked: FAILED open or read\nfine: OK\n"
    assert captured.err.splitlines() == [
        b"model-integrity: error: locked: Permission denied",
        b"model-integrity: WARNING: 1 listed file could not be read",
    ]


def test_progress_counts_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    from integrity.commands import hash as hash_command
    from integrity.progress import Progress

    seen: list[tuple[int, int]] = []

    class Recording(Progress):
        def __exit__(self, *exc: object) -> None:
            seen.append((self.total, self.done))
            super().__exit__(None, None, None)

    monkeypatch.setattr(hash_command, "Progress", Recording)
    sizes = [0, 1, 5_000_000, 123_457]
    for i, size in enumerate(sizes):
        (tmp_path / f"f{i}").write_bytes(b"z" * size)
    monkeypatch.chdir(tmp_path)

    assert main(["hash", "f0", "f1", "f2", "f3"]) == 0
    assert len(capsysbinary.readouterr().out.splitlines()) == 4
    assert seen == [(sum(sizes), sum(sizes))]


def test_no_path_is_a_usage_error(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code = main(["hash"])
    captured = capsysbinary.readouterr()
    assert code == 2
    assert captured.out == b""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(b"model-integrity: error: hash: give at least one PATH")


def test_paths_and_check_together_is_a_usage_error(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code = main(["hash", "--check", str(tmp_path / "list"), str(tmp_path / "x")])
    captured = capsysbinary.readouterr()
    assert code == 2
    assert len(captured.err.splitlines()) == 1
    assert b"not both" in captured.err


def test_closed_output_pipe_ends_quietly(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"f{i:02d}").write_bytes(os.urandom(200_000))
    process = subprocess.Popen(
        [sys.executable, "-m", "integrity", "hash", *(f"f{i:02d}" for i in range(40))],
        cwd=tmp_path,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    err = process.stderr.read()
    code = process.wait(timeout=TIMEOUT)
    assert first.endswith(b"  f00\n")
    assert b"Traceback" not in err
    assert code in (0, 1)  # 1: output cut short by the reader, never a crash


@pytest.mark.parametrize("what", ["big-file", "silent-stdin"])
def test_ctrl_c_stops_at_once(tmp_path: Path, what: str) -> None:
    if what == "big-file":
        with open(tmp_path / "huge", "wb") as f:
            f.truncate(64 << 30)  # sparse: minutes of hashing, no disk used
        args = ["huge"]
    else:
        args = ["-"]  # standard input is a pipe nobody writes to
    process = subprocess.Popen(
        [sys.executable, "-m", "integrity", "hash", *args],
        cwd=tmp_path,
        env=python_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A background job may inherit SIGINT ignored; Ctrl-C must reach Python.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(1.5)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = process.communicate(timeout=TIMEOUT)
        waited = time.monotonic() - sent
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130
    assert out == b""
    assert err.splitlines()[-1] == b"model-integrity: error: interrupted"
    assert waited < 10


def test_hash_path_does_not_import_heavy_libraries(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"x")
    code = (
        "import sys; from integrity.cli import main; "
        f"main(['hash', {str(target)!r}]); "
        "assert 'numpy' not in sys.modules and 'pydantic' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pydantic'))"
    )
    result = run_python("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{digest_of(target)}  {target}\n".encode()
    for heavy in ("pandas", "sklearn"):
        assert heavy not in result.stderr.decode()


# --- hash --check FILE -----------------------------------------------------------------


def _escape_free(name: bytes) -> bool:
    """Names for which coreutils 9.1's `-c` report is exactly ours (see format_check_status)."""
    return b"\\" not in name and b"\r" not in name


@needs_sha256sum
@pytest.mark.parametrize("tag", [False, True], ids=["plain", "tag"])
def test_check_accepts_sha256sum_output(tmp_path: Path, tag: bool) -> None:
    names = _write_odd_files(tmp_path)
    listing = run_sha256sum([*([b"--tag"] if tag else []), b"--", *names], tmp_path)
    assert listing.returncode == 0
    (tmp_path / "SUMS").write_bytes(listing.stdout)
    reference = run_sha256sum(["-c", "SUMS"], tmp_path)
    assert reference.returncode == 0

    ours = run_tool(["--check", "SUMS"], tmp_path)

    assert (ours.returncode, ours.stderr) == (0, b"")
    lines = ours.stdout.splitlines(keepends=True)
    assert len(lines) == len(names)
    # One report line per name, in list order; the same as sha256sum -c where
    # coreutils 9.1 escapes the same way (names with no backslash and no CR)...
    reference_lines = iter(reference.stdout.split(b": OK\n"))
    for name, line in zip(names, lines, strict=True):
        ref = next(reference_lines) + b": OK\n"
        if _escape_free(name):
            assert line == ref
        else:
            assert line.endswith(b": OK\n")
            assert line.startswith(b"\\")
    # ...and escaped exactly like the hash lines everywhere else.
    assert b"\\a\\\\b: OK\n" in lines
    assert b"\\cr\\rx: OK\n" in lines
    assert b"\\back\\\\slash\\nand\\rcr: OK\n" in lines
    assert b"\\new\\nline: OK\n" in lines


def test_check_reads_the_list_from_stdin(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    listing = f"{digest_of(tmp_path / 'a')}  a\n".encode()
    ours = run_tool(["--check", "-"], tmp_path, stdin=listing)
    assert (ours.returncode, ours.stdout, ours.stderr) == (0, b"a: OK\n", b"")


def test_check_accepts_variants_sha256sum_accepts(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b c").write_bytes(b"b")
    with open(os.path.join(os.fsencode(tmp_path), b"n\nl"), "wb") as f:
        f.write(b"n")
    da, db = digest_of(tmp_path / "a"), digest_of(tmp_path / "b c")
    dn = hashlib.sha256(b"n").hexdigest()
    listing = (
        b"# a comment line\r\n"
        + f"{da.upper()} *a\r\n".encode()  # upper case, binary marker, CRLF
        + b"\n"  # blank line
        + f"  \t{db}  b c\n".encode()  # leading blanks
        + f"{db}\t b c\n".encode()  # tab as the separator
        + f"SHA256 (b c) = {db.upper()}\n".encode()
        + f"SHA256(a)= \t{da}\n".encode()
        + f"\\SHA256 (n\\nl) = {dn}\n".encode()
        + f"\\{dn}  n\\nl".encode()  # no final newline
    )
    (tmp_path / "SUMS").write_bytes(listing)
    if SHA256SUM is not None:  # the reference agrees every line is fine
        assert run_sha256sum(["--strict", "-c", "SUMS"], tmp_path).returncode == 0

    ours = run_tool(["--check", "SUMS"], tmp_path)

    assert (ours.returncode, ours.stderr) == (0, b"")
    assert ours.stdout == (b"a: OK\nb c: OK\nb c: OK\nb c: OK\na: OK\n\\n\\nl: OK\n\\n\\nl: OK\n")


@needs_sha256sum
def test_check_reports_a_tampered_file(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(name.encode())
    (tmp_path / "SUMS").write_bytes(run_sha256sum(["a", "b", "c"], tmp_path).stdout)
    (tmp_path / "b").write_bytes(b"tampered")
    reference = run_sha256sum(["-c", "SUMS"], tmp_path)

    ours = run_tool(["--check", "SUMS"], tmp_path)

    assert ours.returncode == 1
    assert ours.stdout == b"a: OK\nb: FAILED\nc: OK\n"
    assert ours.stdout == reference.stdout
    assert stderr_lines(ours) == [b"model-integrity: WARNING: 1 computed checksum did NOT match"]


@needs_sha256sum
def test_check_reports_missing_files(tmp_path: Path) -> None:
    for name in ("a", "gone", "b", "also gone"):
        (tmp_path / name).write_bytes(name.encode())
    listing = run_sha256sum(["a", "gone", "b", "also gone"], tmp_path).stdout
    (tmp_path / "SUMS").write_bytes(listing)
    (tmp_path / "gone").unlink()
    (tmp_path / "also gone").unlink()
    (tmp_path / "b").write_bytes(b"changed")
    reference = run_sha256sum(["-c", "SUMS"], tmp_path)

    ours = run_tool(["--check", "SUMS"], tmp_path)

    assert ours.returncode == 1
    assert ours.stdout == (
        b"a: OK\ngone: FAILED open or read\nb: FAILED\nalso gone: FAILED open or read\n"
    )
    assert ours.stdout == reference.stdout
    assert stderr_lines(ours) == [
        b"model-integrity: error: gone: No such file or directory",
        b"model-integrity: error: also gone: No such file or directory",
        b"model-integrity: WARNING: 2 listed files could not be read",
        b"model-integrity: WARNING: 1 computed checksum did NOT match",
    ]


def test_check_never_opens_a_listed_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "a").write_bytes(b"a")
    empty = hashlib.sha256(b"").hexdigest()
    (tmp_path / "SUMS").write_bytes(
        f"{empty}  pipe\n{empty}  folder\n{digest_of(tmp_path / 'a')}  a\n".encode()
    )
    (tmp_path / "folder").mkdir()

    ours = run_tool(["--check", "SUMS"], tmp_path)  # would block forever on open()

    assert ours.returncode == 1
    assert ours.stdout == (b"pipe: FAILED open or read\nfolder: FAILED open or read\na: OK\n")
    assert stderr_lines(ours) == [
        b"model-integrity: error: pipe: is a FIFO (named pipe), not a regular file; not read",
        b"model-integrity: error: folder: Is a directory",
        b"model-integrity: WARNING: 2 listed files could not be read",
    ]


def test_check_allows_absolute_and_parent_names(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "up").write_bytes(b"up")
    digest = digest_of(tmp_path / "up")
    (tmp_path / "work" / "SUMS").write_bytes(
        f"{digest}  ../up\n{digest}  {tmp_path / 'up'}\n".encode()
    )
    ours = run_tool(["--check", "SUMS"], tmp_path / "work")
    assert ours.returncode == 0
    assert ours.stdout == f"../up: OK\n{tmp_path / 'up'}: OK\n".encode()


def test_check_listed_dash_is_standard_input(tmp_path: Path) -> None:
    data = b"streamed"
    (tmp_path / "SUMS").write_bytes(f"{hashlib.sha256(data).hexdigest()}  -\n".encode())
    ours = run_tool(["--check", "SUMS"], tmp_path, stdin=data)
    assert (ours.returncode, ours.stdout) == (0, b"-: OK\n")
    wrong = run_tool(["--check", "SUMS"], tmp_path, stdin=b"other")
    assert (wrong.returncode, wrong.stdout) == (1, b"-: FAILED\n")


HEX = hashlib.sha256(b"a").hexdigest()
GOOD_LINE = f"{HEX}  a\n".encode()

# (second line of the list, what the message says); sha256sum --strict rejects each too.
MALFORMED: list[tuple[bytes, str]] = [
    (b"zz\n", "expected 'DIGEST  NAME'"),
    (HEX[:-1].encode() + b"  a\n", "64 hex digits"),
    (HEX.encode() + b"0  a\n", "64 hex digits"),
    (b"g" + HEX[1:].encode() + b"  a\n", "64 hex digits"),
    (HEX.encode() + b" a\n", "two spaces"),  # the BSD reversed form, after a GNU line
    (HEX.encode() + b" (a)\n", "two spaces"),
    (HEX.encode() + b"  \n", "two spaces"),  # no name
    (b"\\" + HEX.encode() + b"  a\\qb\n", "invalid escape"),
    (b"\\" + HEX.encode() + b"  a\\\n", "lone backslash"),
    (b"SHA256 (a = " + HEX.encode() + b"\n", "no ')'"),
    (b"SHA256 (a) " + HEX.encode() + b"\n", "'= DIGEST'"),
    (b"SHA256  (a) = " + HEX.encode() + b"\n", "SHA256 (NAME) = DIGEST"),
    (b"SHA1 (a) = " + HEX.encode() + b"\n", "a SHA1 checksum, not SHA256"),
    (b"MD5(a)= " + HEX.encode() + b"\n", "a MD5 checksum, not SHA256"),
    (b"SHA256 (a) = " + HEX.encode() + b" \n", "64 hex digits"),
    (b"   \n", "expected 'DIGEST  NAME'"),
]


@pytest.mark.parametrize(("line", "reason"), MALFORMED)
def test_check_rejects_an_improperly_formatted_line(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "my sums").write_bytes(GOOD_LINE + line + GOOD_LINE)
    if SHA256SUM is not None:  # the reference calls it improperly formatted too
        reference = run_sha256sum(["--strict", "-w", "-c", "my sums"], tmp_path)
        assert reference.returncode == 1
        assert b"2: improperly formatted SHA256 checksum line" in reference.stderr

    ours = run_tool(["--check", "my sums"], tmp_path)

    assert ours.returncode == 2
    assert ours.stdout == b""  # nothing is hashed from a list that cannot be trusted
    lines = stderr_lines(ours)
    assert len(lines) == 1
    assert lines[0].startswith(
        b"model-integrity: error: my sums: line 2: improperly formatted SHA256 checksum line: "
    )
    assert reason.encode() in lines[0]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\x00\x01\x02\xff\xfe" * 50, id="binary-garbage"),
        pytest.param(HEX.encode() + b"  a\x00b\n", id="nul-in-name"),
        pytest.param(b"SHA256 () = " + HEX.encode() + b"\n", id="empty-name"),
    ],
)
def test_check_rejects_garbage_on_its_first_line(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "list").write_bytes(content)
    ours = run_tool(["--check", "list"], tmp_path)
    assert ours.returncode == 2
    assert ours.stdout == b""
    lines = stderr_lines(ours)
    assert len(lines) == 1
    assert lines[0].startswith(b"model-integrity: error: list: line 1: improperly formatted")


@pytest.mark.parametrize(
    "content", [b"", b"# only a comment\n\n\r\n"], ids=["empty", "comments-and-blanks"]
)
def test_check_rejects_a_list_without_checksums(
    tmp_path: Path, content: bytes, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    (tmp_path / "list").write_bytes(content)
    code = main(["hash", "--check", str(tmp_path / "list")])
    captured = capsysbinary.readouterr()
    assert code == 2
    assert captured.out == b""
    assert (
        captured.err
        == (
            f"model-integrity: error: {tmp_path / 'list'}: no checksum lines found "
            "(expected sha256sum output: 'DIGEST  NAME' or 'SHA256 (NAME) = DIGEST')\n"
        ).encode()
    )


def test_check_missing_list_is_exit_2(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code = main(["hash", "--check", str(tmp_path / "nope")])
    captured = capsysbinary.readouterr()
    assert code == 2
    assert captured.err == (
        f"model-integrity: error: {tmp_path / 'nope'}: No such file or directory\n".encode()
    )


def test_check_list_that_is_a_fifo_or_folder_is_exit_2(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    ours = run_tool(["--check", "pipe"], tmp_path)
    assert ours.returncode == 2
    assert stderr_lines(ours) == [
        b"model-integrity: error: pipe: is a FIFO (named pipe), not a regular file; not read "
        b"(use '-' to read the list from standard input)"
    ]
    folder = run_tool(["--check", "."], tmp_path)
    assert folder.returncode == 2
    assert stderr_lines(folder) == [b"model-integrity: error: .: Is a directory"]


def test_check_list_from_stdin_cannot_name_stdin(tmp_path: Path) -> None:
    listing = GOOD_LINE + f"{HEX}  -\n".encode()
    (tmp_path / "a").write_bytes(b"a")
    ours = run_tool(["--check", "-"], tmp_path, stdin=listing)
    assert ours.returncode == 2
    assert ours.stdout == b""
    lines = stderr_lines(ours)
    assert len(lines) == 1
    assert lines[0].startswith(b"model-integrity: error: standard input: line 2: ")


# --- the pure line functions -----------------------------------------------------------


def test_format_functions_escape_like_sha256sum() -> None:
    assert sha256sum.format_line(HEX, b"a b") == HEX.encode() + b"  a b\n"
    assert sha256sum.format_line(HEX, b"a", binary=True) == HEX.encode() + b" *a\n"
    assert sha256sum.format_line(HEX, b"x\\y\nz\r") == b"\\" + HEX.encode() + b"  x\\\\y\\nz\\r\n"
    assert sha256sum.format_tag_line(HEX, b"n\nl") == b"\\SHA256 (n\\nl) = " + HEX.encode() + b"\n"
    assert sha256sum.format_check_status(b"a\\b", "FAILED") == b"\\a\\\\b: FAILED\n"
    assert sha256sum.format_check_status(b"ok", "OK") == b"ok: OK\n"


def test_parse_line_results() -> None:
    assert sha256sum.parse_line(b"# comment") is None
    assert sha256sum.parse_line(b"\r\n") is None
    entry = sha256sum.parse_line(b"\\" + HEX.upper().encode() + b" *a\\\\b\\r\r\n")
    assert entry == sha256sum.ChecksumEntry(HEX, b"a\\b\r", binary=True, tagged=False)
    tagged = sha256sum.parse_line(b"SHA256 (a (1).bin) = " + HEX.encode())
    assert tagged == sha256sum.ChecksumEntry(HEX, b"a (1).bin", binary=False, tagged=True)
    # Without the leading backslash a backslash in the name is literal.
    literal = sha256sum.parse_line(HEX.encode() + b"  a\\nb")
    assert literal is not None and literal.name == b"a\\nb"
    with pytest.raises(sha256sum.ChecksumLineError):
        sha256sum.parse_line(HEX.encode())


_NAMES = st.binary(min_size=1, max_size=80).filter(lambda name: b"\0" not in name)


@settings(database=None)
@given(name=_NAMES, binary=st.booleans())
def test_formatted_lines_parse_back(name: bytes, binary: bool) -> None:
    digest = hashlib.sha256(name).hexdigest()
    plain = sha256sum.parse_line(sha256sum.format_line(digest, name, binary=binary))
    assert plain == sha256sum.ChecksumEntry(digest, name, binary=binary, tagged=False)
    tagged = sha256sum.parse_line(sha256sum.format_tag_line(digest, name))
    assert tagged == sha256sum.ChecksumEntry(digest, name, binary=False, tagged=True)


_FILE_NAMES = (
    st.binary(min_size=1, max_size=60)
    .map(lambda name: name.replace(b"/", b"_").replace(b"\0", b"_"))
    .filter(lambda name: name not in (b".", b"..", b"-"))  # '-' is standard input
)


@needs_sha256sum
@settings(max_examples=40, deadline=None, database=None)
@given(name=_FILE_NAMES, content=st.binary(max_size=64))
def test_format_line_matches_sha256sum_for_any_name(name: bytes, content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(content)
        reference = run_sha256sum([b"--", name], Path(folder))
    assert reference.returncode == 0
    digest = hashlib.sha256(content).hexdigest()
    assert sha256sum.format_line(digest, name) == reference.stdout
