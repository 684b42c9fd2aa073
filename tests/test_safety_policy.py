"""The manifest's safety.allow: users allow their own classes, with a reason each,
every report shows them, and known-dangerous globals can never be allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from integrity.cli import main


def _model_needing(tmp_path: Path, module: str, name: str) -> Path:
    """A protocol-2 pickle that names (module, name) and calls it with no arguments."""
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n)R.")
    return path


def _init_manifest(tmp_path: Path, model: Path) -> Path:
    manifest = tmp_path / "model-integrity.json"
    assert main(["init", "--manifest", str(manifest), "--model", str(model)]) == 0
    return manifest


def _manifest_with_allow(tmp_path: Path, model: Path, allow: list[dict[str, str]]) -> Path:
    manifest = _init_manifest(tmp_path, model)
    data = json.loads(manifest.read_text())
    data["safety"] = {"allow": allow}
    manifest.write_text(json.dumps(data))
    return manifest


def test_unlisted_custom_class_fails_safety(tmp_path: Path) -> None:
    model = _model_needing(tmp_path, "myteam.features", "RatioFeatures")
    manifest = _init_manifest(tmp_path, model)
    report = tmp_path / "report.json"
    assert main(["verify", "--manifest", str(manifest), "--json", str(report)]) == 1
    safety = {c["id"]: c for c in json.loads(report.read_text())["checks"]}["safety"]
    assert safety["status"] == "fail"
    assert any("myteam.features.RatioFeatures" in f["message"] for f in safety["findings"])


def test_allowed_custom_class_passes_and_the_reason_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model_needing(tmp_path, "myteam.features", "RatioFeatures")
    reason = "our feature transformer; plain attributes only"
    manifest = _manifest_with_allow(
        tmp_path, model, [{"module": "myteam.features", "name": "RatioFeatures", "reason": reason}]
    )
    report = tmp_path / "report.json"
    assert main(["verify", "--manifest", str(manifest), "--json", str(report)]) == 0
    safety = {c["id"]: c for c in json.loads(report.read_text())["checks"]}["safety"]
    notices = [f for f in safety["findings"] if f["level"] == "notice"]
    assert len(notices) == 1
    assert "myteam.features.RatioFeatures" in notices[0]["message"]
    assert reason in notices[0]["message"]
    assert reason in capsys.readouterr().out


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("myteam", "__reduce__"),
        ("myteam", "a.b"),
    ],
)
def test_dangerous_or_dotted_globals_cannot_be_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], module: str, name: str
) -> None:
    model = _model_needing(tmp_path, module, name)
    manifest = _manifest_with_allow(
        tmp_path, model, [{"module": module, "name": name, "reason": "trust me"}]
    )
    assert main(["verify", "--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model-integrity.json" in err[0] and "safety.allow" in err[0]


def test_allow_entry_without_reason_is_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model_needing(tmp_path, "myteam.features", "RatioFeatures")
    manifest = _manifest_with_allow(
        tmp_path, model, [{"module": "myteam.features", "name": "RatioFeatures", "reason": ""}]
    )
    assert main(["verify", "--manifest", str(manifest)]) == 2
    assert "reason" in capsys.readouterr().err


def test_manifest_with_allow_entries_dumps_canonically(tmp_path: Path) -> None:
    from integrity.manifest import dump_manifest, load_manifest

    model = _model_needing(tmp_path, "b.mod", "B")
    manifest = _manifest_with_allow(
        tmp_path,
        model,
        [
            {"module": "b.mod", "name": "B", "reason": "x"},
            {"module": "a.mod", "name": "A", "reason": "y"},
        ],
    )
    text = dump_manifest(load_manifest(manifest))
    assert text.index('"a.mod"') < text.index('"b.mod"')
    (tmp_path / "again.json").write_text(text)
    assert dump_manifest(load_manifest(tmp_path / "again.json")) == text
