"""Broken manifests through the real command line, the schema, and the canonical dump.

Every broken manifest must end the run with exit code 2 and exactly one line on
stderr that names the manifest file and the problem: no traceback, no internal
error, no verdict on stdout.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import random
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from integrity.cli import main
from integrity.manifest import (
    Artifact,
    FileDigest,
    Manifest,
    build_manifest,
    dump_manifest,
    parse_manifest,
)

NAME = "candidate-manifest.json"
Data = dict[str, Any]


# ---------------------------------------------------------------- helpers


def _write(folder: Path, content: bytes | str | Data | list[Any]) -> Path:
    path = folder / NAME
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def _mutated(valid: Data, change: Callable[[Data], None]) -> Data:
    data = copy.deepcopy(valid)
    change(data)
    return data


def _digest(path: str, content: bytes = b"x") -> Data:
    return {"path": path, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}


def _shown(text: str) -> list[str]:
    """The ways a line may show `text`: as is, or escaped as Python would."""
    return [text, repr(text)[1:-1]]


def _assert_one_clear_line(
    code: int, out: str, err: str, manifest: Path, mentions: list[str]
) -> None:
    assert code == 2, f"exit code {code}, stderr {err!r}"
    assert out == "", f"nothing may be printed on stdout, got {out!r}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    line = lines[0]
    assert line.strip(), "the error line is empty"
    assert err.endswith("\n") and err.count("\n") == 1
    assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in line), (
        f"control characters on stderr: {line!r}"
    )
    assert "internal error" not in line.lower(), f"a bug, not a diagnosis: {line!r}"
    assert manifest.name in line, f"the line does not name the manifest: {line!r}"
    for token in mentions:
        assert any(form in line for form in _shown(token)), f"{token!r} not named in {line!r}"


def _verify(manifest: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["verify", "--manifest", str(manifest)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_INTEGRITY_DEBUG", raising=False)


# ---------------------------------------------------------------- the corpus
# Each case: (id, build(folder, valid manifest data) -> manifest path, what the line must name).

Builder = Callable[[Path, Data], Path]


def _data_case(change: Callable[[Data], None]) -> Builder:
    return lambda folder, valid: _write(folder, _mutated(valid, change))


def _set_file(key: str, value: Any) -> Callable[[Data], None]:
    return lambda d: d["files"][0].__setitem__(key, value)


def _set(key: str, value: Any) -> Callable[[Data], None]:
    return lambda d: d.__setitem__(key, value)


def _bad_path(path: str) -> Callable[[Data], None]:
    """The model recorded under `path` instead of its real name."""

    def change(d: Data) -> None:
        d["artifacts"][0]["path"] = path
        d["files"][0]["path"] = path

    return change


def _with_directory(*paths: str, directory: str = "data") -> Callable[[Data], None]:
    def change(d: Data) -> None:
        d["artifacts"].append({"path": directory, "type": "directory", "role": "artifact"})
        d["files"].extend(_digest(p) for p in paths)

    return change


def _truncated(folder: Path, valid: Data) -> Path:
    text = json.dumps(valid, indent=2)
    return _write(folder, text[: len(text) // 2])


def _duplicate_key(folder: Path, valid: Data) -> Path:
    text = json.dumps(valid, indent=2)
    return _write(folder, text.replace('"version": 1,', '"version": 1,\n  "version": 1,', 1))


def _garbage(folder: Path, valid: Data) -> Path:
    return _write(folder, random.Random(1234).randbytes(4096))


def _utf16(folder: Path, valid: Data) -> Path:
    return _write(folder, json.dumps(valid).encode("utf-16"))


def _utf16_no_bom(folder: Path, valid: Data) -> Path:
    return _write(folder, json.dumps(valid).encode("utf-16-le"))


def _nan(folder: Path, valid: Data) -> Path:
    text = json.dumps(valid, indent=2)
    return _write(folder, text.replace('"size": ', '"size": NaN, "_": ', 1))


def _huge(folder: Path, valid: Data) -> Path:
    # Valid JSON, 50 MB: one long string in an unknown field. The size cap must
    # refuse it without parsing it.
    path = folder / NAME
    with path.open("wb") as out:
        out.write(b'{"version": 1, "padding": "')
        block = b"a" * (1 << 20)
        for _ in range(50):
            out.write(block)
        out.write(b'"}')
    return path


def _huge_integer(folder: Path, valid: Data) -> Path:
    text = json.dumps(valid, indent=2)
    return _write(folder, text.replace('"size": ', '"size": 1' + "0" * 5000 + ', "_": ', 1))


def _lone_surrogate(folder: Path, valid: Data) -> Path:
    text = json.dumps(valid, indent=2)
    return _write(folder, text.replace('"path": "model.bin"', '"path": "\\ud800.bin"'))


def _missing(folder: Path, valid: Data) -> Path:
    return folder / NAME


def _directory(folder: Path, valid: Data) -> Path:
    path = folder / NAME
    path.mkdir()
    return path


def _device(folder: Path, valid: Data) -> Path:
    path = folder / NAME
    path.symlink_to(os.devnull)
    return path


def _escaping_symlink(folder: Path, valid: Data) -> Path:
    # The model really exists and its digest is right; only its folder is a
    # symlink to somewhere outside the manifest's folder.
    outside = folder.parent / "outside"
    outside.mkdir()
    (outside / "model.bin").write_bytes((folder / "model.bin").read_bytes())
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    return _write(folder, _mutated(valid, _bad_path("linked/model.bin")))


def _unknown_key_with_escapes(d: Data) -> None:
    d["\x1b[31mred\x85\u2028"] = 1


def _no_model(d: Data) -> None:
    d["artifacts"][0]["role"] = "artifact"


def _outside_artifacts(d: Data) -> None:
    d["files"].append(_digest("stray.bin"))


def _artifact_without_entry(d: Data) -> None:
    d["artifacts"].append({"path": "notes.txt", "type": "file", "role": "artifact"})


def _duplicate_file(d: Data) -> None:
    d["files"].append(dict(d["files"][0]))


def _no_version(d: Data) -> None:
    del d["version"]


def _nested_under_file(d: Data) -> None:
    d["artifacts"].append({"path": "data", "type": "directory", "role": "artifact"})
    d["files"].extend([_digest("data/x"), _digest("data/x/y")])


NFC = unicodedata.normalize("NFC", "caf\u00e9.csv")
NFD = unicodedata.normalize("NFD", "caf\u00e9.csv")
assert NFC != NFD

CORPUS: list[tuple[str, Builder, list[str]]] = [
    ("truncated-json", _truncated, []),
    ("size-as-string", _data_case(_set_file("size", "12")), ["size"]),
    ("sha256-as-number", _data_case(_set_file("sha256", 12345)), ["sha256"]),
    ("artifacts-as-object", _data_case(_set("artifacts", {"model.bin": "model"})), ["artifacts"]),
    ("files-as-object", _data_case(_set("files", {})), ["files"]),
    ("file-entry-as-number", _data_case(lambda d: d["files"].append(7)), ["files"]),
    ("bool-size", _data_case(_set_file("size", True)), ["size"]),
    ("float-size", _data_case(_set_file("size", 38.0)), ["size"]),
    ("negative-size", _data_case(_set_file("size", -1)), ["size"]),
    ("huge-integer-size", _huge_integer, []),
    (
        "uppercase-sha256",
        _data_case(lambda d: d["files"][0].update(sha256=d["files"][0]["sha256"].upper())),
        ["sha256"],
    ),
    ("short-sha256", _data_case(lambda d: d["files"][0].update(sha256="ab" * 16)), ["sha256"]),
    ("bad-type", _data_case(lambda d: d["artifacts"][0].update(type="symlink")), ["type"]),
    ("bad-role", _data_case(lambda d: d["artifacts"][0].update(role="weights")), ["role"]),
    ("duplicate-file-paths", _data_case(_duplicate_file), ["model.bin"]),
    ("duplicate-json-keys", _duplicate_key, ["version"]),
    (
        "case-variant-files",
        _data_case(_with_directory("data/a.csv", "data/A.csv")),
        ["data/a.csv", "data/A.csv"],
    ),
    (
        "case-variant-folders",
        _data_case(_with_directory("data/Sub/a", "data/sub/b")),
        ["data/Sub", "data/sub"],
    ),
    ("nfc-nfd-variants", _data_case(_with_directory(f"data/{NFC}", f"data/{NFD}")), [NFC, NFD]),
    ("absolute-path", _data_case(_bad_path("/etc/passwd")), ["/etc/passwd"]),
    ("windows-drive-path", _data_case(_bad_path("C:/model.bin")), ["C:/model.bin"]),
    ("dotdot-traversal", _data_case(_bad_path("../model.bin")), ["../model.bin"]),
    ("dotdot-inside", _data_case(_bad_path("sub/../../model.bin")), ["sub/../../model.bin"]),
    ("dot-slash", _data_case(_bad_path("./model.bin")), ["./model.bin"]),
    ("double-slash", _data_case(_bad_path("sub//model.bin")), ["sub//model.bin"]),
    ("trailing-slash", _data_case(_bad_path("model.bin/")), ["model.bin/"]),
    ("empty-path", _data_case(_bad_path("")), ["path"]),
    ("backslash", _data_case(_bad_path("sub\\model.bin")), ["sub\\model.bin"]),
    ("newline-in-path", _data_case(_bad_path("model\n.bin")), ["model\n.bin"]),
    ("escape-in-path", _data_case(_bad_path("model\x1b[2J.bin")), ["model\x1b[2J.bin"]),
    ("c1-control-in-path", _data_case(_bad_path("model\x85.bin")), ["model\x85.bin"]),
    ("line-separator-in-path", _data_case(_bad_path("model\u2028.bin")), ["model\u2028.bin"]),
    ("nul-in-path", _data_case(_bad_path("model\x00.bin")), ["model\x00.bin"]),
    ("lone-surrogate-path", _lone_surrogate, []),
    ("empty-file", lambda folder, valid: _write(folder, b""), []),
    ("whitespace-only", lambda folder, valid: _write(folder, b" \n\t\r\n  "), []),
    ("binary-garbage", _garbage, []),
    ("utf-16", _utf16, []),
    ("utf-16-without-bom", _utf16_no_bom, []),
    ("json-array", lambda folder, valid: _write(folder, [valid]), []),
    ("json-null", lambda folder, valid: _write(folder, "null"), []),
    ("json-string", lambda folder, valid: _write(folder, '"model.bin"'), []),
    ("nan", _nan, ["NaN"]),
    ("infinity", lambda folder, valid: _write(folder, '{"version": -Infinity}'), ["Infinity"]),
    ("deeply-nested-arrays", lambda folder, valid: _write(folder, "[" * 100_000), []),
    ("deeply-nested-objects", lambda folder, valid: _write(folder, '{"a":' * 100_000), []),
    ("fifty-megabytes", _huge, []),
    ("unknown-top-level-field", _data_case(_set("signed_by", "me")), ["signed_by"]),
    ("unknown-field-with-escapes", _data_case(_unknown_key_with_escapes), ["\x1b[31mred"]),
    ("unknown-file-field", _data_case(_set_file("mtime", 0)), ["mtime"]),
    ("missing-version", _data_case(_no_version), ["version"]),
    ("version-2", _data_case(_set("version", 2)), ["version"]),
    ("version-true", _data_case(_set("version", True)), ["version"]),
    ("version-float", _data_case(_set("version", 1.0)), ["version"]),
    ("version-string", _data_case(_set("version", "1")), ["version"]),
    ("missing-files", _data_case(lambda d: d.pop("files")), ["files"]),
    ("no-artifacts", _data_case(_set("artifacts", [])), ["artifacts"]),
    ("no-model-artifact", _data_case(_no_model), ["role"]),
    ("file-outside-every-artifact", _data_case(_outside_artifacts), ["stray.bin"]),
    ("file-artifact-without-entry", _data_case(_artifact_without_entry), ["notes.txt"]),
    ("file-inside-a-file", _data_case(_nested_under_file), ["data/x/y"]),
    ("missing-manifest", _missing, []),
    ("directory-as-manifest", _directory, []),
    ("device-as-manifest", _device, []),
    ("artifact-folder-symlinks-outside", _escaping_symlink, ["linked"]),
]


@pytest.mark.parametrize(("build", "mentions"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_broken_manifest_is_one_clear_line_and_exit_2(
    project: Path,
    valid_manifest: Data,
    build: Builder,
    mentions: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = build(project, valid_manifest)
    code, out, err = _verify(manifest, capsys)
    _assert_one_clear_line(code, out, err, manifest, mentions)


def test_corpus_ids_are_unique() -> None:
    ids = [c[0] for c in CORPUS]
    assert len(ids) == len(set(ids))


def test_valid_manifest_passes(
    project: Path, valid_manifest: Data, capsys: pytest.CaptureFixture[str]
) -> None:
    # The control for the corpus: the same folder and manifest, unbroken, pass.
    manifest = _write(project, valid_manifest)
    code, out, err = _verify(manifest, capsys)
    assert code == 0, (out, err)
    assert out.strip()
    assert "error" not in err.lower()


def test_valid_manifest_with_utf8_bom_passes(
    project: Path, valid_manifest: Data, capsys: pytest.CaptureFixture[str]
) -> None:
    # Editors on Windows add a BOM; it is still UTF-8 JSON.
    manifest = _write(project, b"\xef\xbb\xbf" + json.dumps(valid_manifest).encode())
    code, out, err = _verify(manifest, capsys)
    assert code == 0, (out, err)


def test_changed_artifact_is_a_failure_not_a_usage_error(
    project: Path, valid_manifest: Data, capsys: pytest.CaptureFixture[str]
) -> None:
    # The corpus's exit 2 is about the manifest: a tampered artifact is exit 1.
    manifest = _write(project, valid_manifest)
    (project / "model.bin").write_bytes(b"tampered")
    code, _out, _err = _verify(manifest, capsys)
    assert code == 1


def test_unreadable_manifest(
    project: Path,
    valid_manifest: Data,
    capsys: pytest.CaptureFixture[str],
    refuse_opening: Callable[[Path], list[str]],
) -> None:
    manifest = _write(project, valid_manifest)
    # chmod 0 does not stop root (CI runs as root): make the open itself fail.
    refuse_opening(manifest)
    code, out, err = _verify(manifest, capsys)
    _assert_one_clear_line(code, out, err, manifest, [])


def test_fifo_as_manifest_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / NAME
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "integrity", "verify", "--manifest", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "MODEL_INTEGRITY_DEBUG"},
    )
    _assert_one_clear_line(result.returncode, result.stdout, result.stderr, fifo, [])


# ---------------------------------------------------------------- schema


def _schema(capsys: pytest.CaptureFixture[str]) -> Data:
    code = main(["schema"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err == ""
    schema = json.loads(captured.out)
    assert isinstance(schema, dict)
    return schema


def _schema_accepts(schema: Data, data: Any) -> bool:
    validator_class = jsonschema.validators.validator_for(schema)
    return bool(validator_class(schema).is_valid(data))


def test_schema_is_a_json_schema_of_the_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    schema = _schema(capsys)
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema.get("type") == "object"
    assert {"version", "artifacts", "files"} <= set(schema["properties"])
    assert {"version", "artifacts", "files"} <= set(schema.get("required", []))


def test_schema_accepts_valid_and_rejects_unknown_field(
    valid_manifest: Data, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = _schema(capsys)
    assert _schema_accepts(schema, valid_manifest)
    assert not _schema_accepts(schema, {**valid_manifest, "signed_by": "me"})
    entry = {**valid_manifest["files"][0], "mtime": 0}
    assert not _schema_accepts(schema, {**valid_manifest, "files": [entry]})


SCHEMA_REJECTS = [
    _set_file("size", "12"),
    _set_file("size", True),
    _set_file("size", -1),
    _set_file("sha256", 12345),
    _set_file("sha256", "AB" * 32),
    _set_file("sha256", "ab" * 16),
    _set("artifacts", {}),
    _set("artifacts", []),
    _set("version", 2),
    _set("version", True),
    _set("version", "1"),
    _no_version,
]


@pytest.mark.parametrize("change", SCHEMA_REJECTS)
def test_schema_rejects_what_the_loader_rejects(
    valid_manifest: Data, change: Callable[[Data], None], capsys: pytest.CaptureFixture[str]
) -> None:
    # Editors validating against the published schema flag the same shape errors.
    schema = _schema(capsys)
    assert not _schema_accepts(schema, _mutated(valid_manifest, change))


# ---------------------------------------------------------------- canonical dump


def _sample(n: int = 40, *, changed: int | None = None, same_size: bool = False) -> Manifest:
    files = []
    for i in range(n):
        content = f"file {i}".encode()
        if i == changed:
            content = f"fIle {i}".encode() if same_size else f"file {i} changed".encode()
        files.append(
            FileDigest(
                path=f"data/part-{i:03d}.csv",
                sha256=hashlib.sha256(content).hexdigest(),
                size=len(content),
            )
        )
    files.append(FileDigest(path="model.bin", sha256="0" * 64, size=0))
    artifacts = [
        Artifact(path="model.bin", type="file", role="model"),
        Artifact(path="data", type="directory", role="artifact"),
    ]
    return build_manifest(artifacts, files)


def test_dump_is_deterministic_whatever_the_input_order() -> None:
    m = _sample()
    shuffled = Manifest(
        version=1,
        artifacts=list(reversed(m.artifacts)),
        files=random.Random(7).sample(list(m.files), len(m.files)),
    )
    assert dump_manifest(m) == dump_manifest(m)
    assert dump_manifest(shuffled) == dump_manifest(m)


def test_dump_format() -> None:
    text = dump_manifest(_sample())
    data = json.loads(text)
    paths = [f["path"] for f in data["files"]]
    assert paths == sorted(paths)
    assert [a["path"] for a in data["artifacts"]] == sorted(a["path"] for a in data["artifacts"])
    assert text.endswith("}\n") and not text.endswith("\n\n")
    lines = text.split("\n")[:-1]
    assert all(line == line.rstrip() for line in lines), "trailing spaces"
    assert "\t" not in text
    # 2-space indent: each line is indented by two spaces per level of nesting.
    depth = 0
    for line in lines:
        stripped = line.lstrip(" ")
        if stripped[:1] in ("}", "]"):
            depth -= 1
        assert len(line) - len(stripped) == 2 * depth, line
        if stripped.endswith(("{", "[")):
            depth += 1
    assert depth == 0


def test_dump_round_trips_through_the_loader() -> None:
    text = dump_manifest(_sample())
    assert dump_manifest(parse_manifest(text.encode("utf-8"), NAME)) == text


@pytest.mark.parametrize(("same_size", "expected"), [(False, 2), (True, 1)])
def test_one_changed_file_is_a_small_diff(same_size: bool, expected: int) -> None:
    before = dump_manifest(_sample()).splitlines()
    after = dump_manifest(_sample(changed=17, same_size=same_size)).splitlines()
    diff = list(difflib.unified_diff(before, after, lineterm="", n=0))
    removed = [d for d in diff if d.startswith("-") and not d.startswith("---")]
    added = [d for d in diff if d.startswith("+") and not d.startswith("+++")]
    assert len(removed) == len(added) == expected, diff
    assert all('"sha256"' in d or '"size"' in d for d in removed + added)
