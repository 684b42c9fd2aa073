"""The command line as users and CI scripts see it: exit codes, one-line errors
naming what and where, the files `init` writes, the JSON report's contract,
clean console output, and a startup that loads no ML library."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from integrity.cli import main

MANIFEST = "model-integrity.json"
ANSI = re.compile(r"\x1b\[")
# Control characters other than the newline that ends each line.
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
CHECK_STATUSES = {"pass", "fail", "warn", "skip", "error"}
LEVELS = {"error", "warning", "notice"}


# ------------------------------------------------------------------ helpers


def one_error_line(err: str) -> str:
    """stderr holds exactly one line, and it is not a traceback."""
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    assert "Traceback" not in err
    return lines[0]


def make_tree(root: Path) -> Path:
    (root / "models" / "deep" / "er").mkdir(parents=True)
    (root / "models" / "model.joblib").write_bytes(b"model-v1" * 10)
    (root / "models" / "deep" / "er" / "weights.bin").write_bytes(b"\x00\x01\x02")
    (root / "models" / ".hidden").write_bytes(b"h")
    (root / "requirements.txt").write_bytes(b"scikit-learn==1.5.0\n")
    return root


def init(root: Path, *extra: str, model: str = "models") -> int:
    return main(
        [
            "init",
            "--manifest",
            str(root / MANIFEST),
            "--model",
            str(root / model),
            "--artifact",
            str(root / "requirements.txt"),
            *extra,
        ]
    )


@pytest.fixture
def repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    root = make_tree(tmp_path / "repo")
    assert init(root) == 0
    capsys.readouterr()
    return root


def verify_args(root: Path, *extra: str) -> list[str]:
    return ["verify", "--manifest", str(root / MANIFEST), "--no-progress", *extra]


def verify(root: Path, *extra: str) -> int:
    return main(verify_args(root, *extra))


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def run_module(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "integrity", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("MODEL_INTEGRITY_DEBUG", raising=False)


# ------------------------------------------------------------------ init


def test_init_from_another_cwd_writes_relative_slash_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree(tmp_path / "sub")
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "init",
            "--manifest",
            "sub/model-integrity.json",
            "--model",
            "sub/models",
            "--artifact",
            "sub/requirements.txt",
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = load(root / MANIFEST)
    assert {a["path"] for a in manifest["artifacts"]} == {"models", "requirements.txt"}
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {
        "models/model.joblib",
        "models/deep/er/weights.bin",
        "models/.hidden",
        "requirements.txt",
    }
    for path, entry in files.items():
        data = (root / path).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data)
        assert "\\" not in path and not path.startswith(("/", "sub/"))

    # The manifest is portable: it verifies from its own folder and from anywhere.
    capsys.readouterr()
    monkeypatch.chdir(root)
    assert main(["verify", "--no-progress"]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["verify", "--manifest", "sub/model-integrity.json", "--no-progress"]) == 0


def test_init_refuses_to_overwrite_without_force(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (repo / MANIFEST).read_bytes()
    (repo / "models" / "model.joblib").write_bytes(b"retrained")
    assert init(repo) == 2
    line = one_error_line(capsys.readouterr().err)
    assert MANIFEST in line
    assert "--force" in line
    assert (repo / MANIFEST).read_bytes() == before

    assert init(repo, "--force") == 0
    capsys.readouterr()
    after = load(repo / MANIFEST)
    digests = {f["path"]: f["sha256"] for f in after["files"]}
    assert digests["models/model.joblib"] == hashlib.sha256(b"retrained").hexdigest()
    assert verify(repo) == 0


def test_init_path_outside_manifest_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_tree(tmp_path / "repo")
    outside = tmp_path / "elsewhere.joblib"
    outside.write_bytes(b"x")
    code = main(["init", "--manifest", str(root / MANIFEST), "--model", str(outside)])
    assert code == 2
    assert str(outside) in one_error_line(capsys.readouterr().err)
    assert not (root / MANIFEST).exists()


def test_init_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tree(tmp_path / "repo")
    assert init(root, model="models/nope.joblib") == 2
    assert "nope.joblib" in one_error_line(capsys.readouterr().err)
    assert not (root / MANIFEST).exists()


def test_init_missing_manifest_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tree(tmp_path / "repo")
    code = main(
        ["init", "--manifest", str(root / "no" / MANIFEST), "--model", str(root / "models")]
    )
    assert code == 2
    one_error_line(capsys.readouterr().err)


def test_init_refuses_symlink_inside_recorded_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_tree(tmp_path / "repo")
    (root / "models" / "deep" / "link.joblib").symlink_to("../model.joblib")
    assert init(root) == 2
    assert "models/deep/link.joblib" in one_error_line(capsys.readouterr().err)
    assert not (root / MANIFEST).exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_init_refuses_fifo_inside_recorded_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_tree(tmp_path / "repo")
    os.mkfifo(root / "models" / "pipe")
    assert init(root) == 2  # and returns at all: the FIFO is never opened
    assert "models/pipe" in one_error_line(capsys.readouterr().err)
    assert not (root / MANIFEST).exists()


def test_init_refuses_symlinked_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tree(tmp_path / "repo")
    (root / "link.joblib").symlink_to("models/model.joblib")
    assert init(root, model="link.joblib") == 2
    assert "link.joblib" in one_error_line(capsys.readouterr().err)


def test_init_directory_expansion_records_every_file(repo: Path) -> None:
    on_disk = {
        p.relative_to(repo).as_posix()
        for p in (repo / "models").rglob("*")
        if p.is_file() and not p.is_symlink()
    }
    recorded = {f["path"] for f in load(repo / MANIFEST)["files"]}
    assert on_disk <= recorded
    assert len(on_disk) == 3


@pytest.mark.parametrize(
    "flags",
    [
        ["--model", "models", "--artifact", "./models/", "--artifact", "models"],
        ["--model", "models", "--model", "./models/"],
    ],
    ids=["as-model-and-artifact", "as-model-twice"],
)
def test_init_same_path_twice_recorded_once_as_model(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
) -> None:
    root = make_tree(tmp_path / "repo")
    monkeypatch.chdir(root)
    code = main(["init", *flags])
    assert code == 0, capsys.readouterr().err
    artifacts = load(root / MANIFEST)["artifacts"]
    assert artifacts == [{"path": "models", "type": "directory", "role": "model"}]


def test_init_records_every_model_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree(tmp_path / "repo")
    (root / "second.joblib").write_bytes(b"model-v2")
    monkeypatch.chdir(root)
    code = main(["init", "--model", "models", "--model", "second.joblib"])
    assert code == 0, capsys.readouterr().err
    manifest = load(root / MANIFEST)
    assert manifest["artifacts"] == [
        {"path": "models", "type": "directory", "role": "model"},
        {"path": "second.joblib", "type": "file", "role": "model"},
    ]
    recorded = {f["path"] for f in manifest["files"]}
    assert "second.joblib" in recorded
    assert "models/model.joblib" in recorded
    assert verify(root) == 0


@pytest.mark.parametrize(
    ("flags", "inner", "outer"),
    [
        (
            ["--model", "models", "--artifact", "models/model.joblib"],
            "models/model.joblib",
            "--model",
        ),
        (
            ["--model", "models/model.joblib", "--artifact", "models"],
            "models/model.joblib",
            "--artifact",
        ),
        (["--model", "models", "--model", "models/deep"], "models/deep", "--model"),
        (
            ["--model", "models/deep/er/weights.bin", "--model", "models/deep"],
            "weights.bin",
            "--model",
        ),
    ],
    ids=["file-artifact-in-model-folder", "model-file-in-artifact-folder", "nested-models", "deep"],
)
def test_init_refuses_a_path_inside_another_given_folder(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    inner: str,
    outer: str,
) -> None:
    """Its files would belong to two artifacts (perhaps in two roles): refused
    rather than one of the two silently winning."""
    root = make_tree(tmp_path / "repo")
    monkeypatch.chdir(root)
    assert main(["init", *flags]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert inner in line
    assert f"named with {outer}" in line
    assert not (root / MANIFEST).exists()


def test_init_refuses_to_record_the_manifest_itself(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (repo / MANIFEST).read_bytes()
    assert init(repo, "--force", model=MANIFEST) == 2
    assert MANIFEST in one_error_line(capsys.readouterr().err)
    assert (repo / MANIFEST).read_bytes() == before


# ------------------------------------------------------------------ verify


@pytest.mark.parametrize("option", ["--only", "--skip"])
def test_verify_unknown_check_id(
    repo: Path, capsys: pytest.CaptureFixture[str], option: str
) -> None:
    assert verify(repo, option, "digests,nonsense") == 2
    assert "nonsense" in one_error_line(capsys.readouterr().err)


def test_verify_skipping_every_check_is_not_a_pass(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An integrity tool never passes having checked nothing.
    report_path = tmp_path / "report.json"
    assert verify(repo, "--skip", "digests,safety", "--json", str(report_path)) == 2
    assert "no check" in one_error_line(capsys.readouterr().err)
    assert not report_path.exists()


def test_verify_only_digests_catches_tampering(repo: Path) -> None:
    (repo / "models" / "model.joblib").write_bytes(b"model-v2" * 10)
    assert verify(repo, "--only", "digests") == 1


def _assert_report_contract(report: dict[str, Any]) -> None:
    assert report["schema"] == "model-integrity-report/1"
    assert report["status"] in {"pass", "fail"}
    assert isinstance(report["manifest"], str)
    assert isinstance(report["duration_s"], int | float)
    assert report["checks"], "no checks in the report"
    for check in report["checks"]:
        assert isinstance(check["id"], str)
        assert check["status"] in CHECK_STATUSES
        assert isinstance(check["summary"], str) and "\n" not in check["summary"]
        for finding in check["findings"]:
            assert finding["level"] in LEVELS
            assert isinstance(finding["message"], str) and finding["message"]
    failed = any(c["status"] in {"fail", "error"} for c in report["checks"])
    assert report["status"] == ("fail" if failed else "pass")


def test_verify_json_report_matches_contract(repo: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "pass.json"
    assert verify(repo, "--json", str(report_path)) == 0
    passing = load(report_path)
    _assert_report_contract(passing)
    assert passing["status"] == "pass"
    assert passing["checks"][0]["id"] == "digests"

    (repo / "requirements.txt").write_bytes(b"tampered\n")
    report_path = tmp_path / "fail.json"
    assert verify(repo, "--json", str(report_path)) == 1
    failing = load(report_path)
    _assert_report_contract(failing)
    assert failing["status"] == "fail"
    digests = failing["checks"][0]
    assert digests["status"] == "fail"
    assert [f["path"] for f in digests["findings"]] == ["requirements.txt"]


def test_verify_json_at_the_manifest_is_refused(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (repo / MANIFEST).read_bytes()
    assert verify(repo, "--json", str(repo / MANIFEST)) == 2
    assert MANIFEST in one_error_line(capsys.readouterr().err)
    # Another spelling of the same file, and a symlink to it.
    monkeypatch.chdir(repo)
    assert verify(repo, "--json", f"models/../{MANIFEST}") == 2
    capsys.readouterr()
    (repo.parent / "link.json").symlink_to(repo / MANIFEST)
    assert verify(repo, "--json", str(repo.parent / "link.json")) == 2
    capsys.readouterr()
    assert (repo / MANIFEST).read_bytes() == before


def test_verify_json_never_overwrites_a_recorded_artifact(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = repo / "models" / "model.joblib"
    before = model.read_bytes()
    assert verify(repo, "--json", str(model)) == 2
    assert "model.joblib" in one_error_line(capsys.readouterr().err)
    assert verify(repo, "--json", str(repo / "requirements.txt")) == 2
    capsys.readouterr()
    assert model.read_bytes() == before
    # Nor lands in a recorded folder, where the next run would find it added.
    assert verify(repo, "--json", str(repo / "models" / "report.json")) == 2
    capsys.readouterr()
    assert not (repo / "models" / "report.json").exists()
    assert verify(repo) == 0


def test_verify_json_in_missing_folder(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify(repo, "--json", str(tmp_path / "no" / "report.json")) == 2
    captured = capsys.readouterr()
    assert "no" in one_error_line(captured.err)
    assert captured.out == ""


def test_verify_missing_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--manifest", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in one_error_line(capsys.readouterr().err)


def test_verify_invalid_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / MANIFEST
    bad.write_text('{"version": 1, "artifacts": [], "files": [}')
    assert main(["verify", "--manifest", str(bad)]) == 2
    assert MANIFEST in one_error_line(capsys.readouterr().err)


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_color_when_not_a_terminal(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "requirements.txt").write_bytes(b"tampered\n")
    assert verify(repo) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL")
    assert not ANSI.search(out)


def test_no_color_honours_NO_COLOR_on_a_terminal(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "requirements.txt").write_bytes(b"tampered\n")
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stdout", tty)
    assert verify(repo) == 1
    assert ANSI.search(tty.getvalue()), "a terminal without NO_COLOR gets colour"

    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stdout", tty)
    monkeypatch.setenv("NO_COLOR", "1")
    assert verify(repo) == 1
    assert tty.getvalue()
    assert not ANSI.search(tty.getvalue())


def test_control_characters_in_file_names_are_escaped(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A name that would colour the terminal and forge a passing verdict line.
    name = "evil\x1b[32m\rPASS  integrity proven\nPASS\u2028PASS\x07.bin"
    (repo / "models" / name).write_bytes(b"x")
    assert verify(repo) == 1
    out = capsys.readouterr().out
    assert not RAW_CONTROL.search(out), repr(out)
    assert "\u2028" not in out
    lines = out.splitlines()
    assert lines[0].startswith("FAIL")
    assert not any(line.startswith("PASS") for line in lines)
    # The file is still named, in escaped form.
    assert any("evil\\x1b[32m" in line for line in lines)


def test_console_survives_a_stdout_that_cannot_encode_the_name(repo: Path) -> None:
    (repo / "models" / "modèle-ünïcode.bin").write_bytes(b"x")
    proc = run_module(*verify_args(repo), env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("FAIL")
    assert "mod" in proc.stdout


def test_verdict_is_the_first_line(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify(repo) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("PASS")
    assert MANIFEST in first


# ------------------------------------------------------------------ diff


def _manifest_copy(repo: Path, name: str) -> Path:
    copy = repo / name
    copy.write_bytes((repo / MANIFEST).read_bytes())
    return copy


def test_diff_identical(repo: Path) -> None:
    old = _manifest_copy(repo, "old.json")
    assert main(["diff", str(old), str(repo / MANIFEST)]) == 0


def test_diff_lists_added_removed_changed(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _manifest_copy(repo, "old.json")
    (repo / "models" / "model.joblib").write_bytes(b"model-v2")
    (repo / "models" / ".hidden").unlink()
    (repo / "models" / "new.bin").write_bytes(b"n")
    assert init(repo, "--force") == 0
    capsys.readouterr()

    assert main(["diff", str(old), str(repo / MANIFEST)]) == 1
    lines = capsys.readouterr().out.splitlines()

    def line_for(path: str) -> str:
        matching = [line for line in lines if path in line.split()]
        assert len(matching) == 1, (path, lines)
        return matching[0]

    assert "added" in line_for("models/new.bin")
    assert "removed" in line_for("models/.hidden")
    assert "changed" in line_for("models/model.joblib")
    assert not any("requirements.txt" in line for line in lines)

    # And the other way round.
    assert main(["diff", str(repo / MANIFEST), str(old)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "removed" in line_for("models/new.bin")
    assert "added" in line_for("models/.hidden")


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"version": 1}', '{"version": 1, "artifacts": [], "files": []}'],
)
def test_diff_invalid_manifest(repo: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    bad = repo / "bad.json"
    bad.write_text(text)
    assert main(["diff", str(bad), str(repo / MANIFEST)]) == 2
    assert "bad.json" in one_error_line(capsys.readouterr().err)
    assert main(["diff", str(repo / MANIFEST), str(bad)]) == 2
    assert "bad.json" in one_error_line(capsys.readouterr().err)


def test_diff_missing_manifest(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(repo / "gone.json"), str(repo / MANIFEST)]) == 2
    assert "gone.json" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ schema


def test_schema_is_json_schema_of_the_manifest(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["type"] == "object"
    assert {"version", "artifacts", "files"} <= set(schema["properties"])
    jsonschema.validate(load(repo / MANIFEST), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 1, "files": []}, schema)


# ------------------------------------------------------------------ usage


def test_no_arguments_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    captured = capsys.readouterr()
    assert "verify" in captured.err
    assert captured.out == ""
    assert "Traceback" not in captured.err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("init", "verify", "diff", "schema"):
        assert command in out


def test_command_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--help"])
    assert exc.value.code == 0
    assert "--json" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, named",
    [
        (["frobnicate"], "frobnicate"),
        (["--frobnicate"], "--frobnicate"),
        (["verify", "--frobnicate"], "--frobnicate"),
        (["init", "--model", "m", "--frobnicate", "x"], "--frobnicate"),
        (["init"], "--model"),
        (["diff", "only-one.json"], "NEW_MANIFEST"),
    ],
)
def test_usage_errors_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], named: str
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert named in one_error_line(captured.err)
    assert captured.out == ""


def test_usage_error_in_a_real_process() -> None:
    proc = run_module("verify", "--frobnicate")
    assert proc.returncode == 2
    assert "--frobnicate" in one_error_line(proc.stderr)


def test_real_process_verify(repo: Path) -> None:
    proc = run_module(*verify_args(repo))
    assert proc.returncode == 0, proc.stderr
    (repo / "models" / "model.joblib").write_bytes(b"model-v2" * 10)
    proc = run_module(*verify_args(repo))
    assert proc.returncode == 1
    assert proc.stdout.startswith("FAIL")
    assert "models/model.joblib" in proc.stdout


def test_real_process_init_refusal(repo: Path) -> None:
    before = (repo / MANIFEST).read_bytes()
    proc = run_module("init", "--manifest", str(repo / MANIFEST), "--model", str(repo / "models"))
    assert proc.returncode == 2
    assert MANIFEST in one_error_line(proc.stderr)
    assert (repo / MANIFEST).read_bytes() == before


# ------------------------------------------------------------------ startup


def test_help_imports_no_ml_library(tmp_path: Path) -> None:
    # Stand-ins for the heavy libraries, first on the path, so the check holds
    # whether or not the real ones are installed: importing one records it.
    fakes = tmp_path / "fakes"
    for name in ("numpy", "pandas", "sklearn", "scipy", "joblib"):
        (fakes / name).mkdir(parents=True)
        (fakes / name / "__init__.py").write_text("")
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            from integrity.cli import main
            try:
                main(["--help"])
                code = None
            except SystemExit as exc:
                code = exc.code
            heavy = ("numpy", "pandas", "sklearn", "scipy", "joblib")
            loaded = sorted(m for m in heavy if m in sys.modules)
            sys.stderr.write(json.dumps({"code": code, "loaded": loaded}) + "\\n")
            """
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(fakes), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}
