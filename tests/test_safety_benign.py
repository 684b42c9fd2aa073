"""The benign corpus: real fitted estimators × every dump style all pass the scan.
(That the loader gives what joblib gives is tests/test_safety_loader.py's.)"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest
from safety_corpus import DumpFunction, dump_styles

from integrity.cli import main
from integrity.safety.scanner import scan_path

STYLES = dump_styles()
STYLE_IDS = [name for name, _ in STYLES]
# What the scanner must recognise each style as (by content, never by name).
EXPECTED_FORMAT = {
    "joblib_zlib_3": "joblib-zlib",
    "joblib_compress_true": "joblib-zlib",
    "joblib_gzip_3": "joblib-gzip",
    "joblib_bz2_3": "joblib-bz2",
    "joblib_xz_3": "joblib-xz",
    "joblib_lzma_3": "joblib-lzma",
    "joblib_lz4_3": "joblib-lz4",
    "numpy_save_object_array": "npy",
    "skops": "skops",
}
# skops cannot write these (pandas objects, complex numbers): not a scanner matter.
SKOPS_CANNOT_DUMP = {"pandas_dataframe", "pandas_series", "model_bundle_dict"}


def _dump_all(
    estimators: list[tuple[str, object]], style: str, dump: DumpFunction, folder: Path
) -> list[tuple[str, Path]]:
    written = []
    for name, obj in estimators:
        path = folder / f"{name}.{style}"
        if style == "skops" and name in SKOPS_CANNOT_DUMP:
            with pytest.raises(TypeError):
                dump(obj, path)
            continue
        dump(obj, path)
        written.append((name, path))
    return written


@pytest.mark.parametrize(("style", "dump"), STYLES, ids=STYLE_IDS)
def test_every_estimator_in_every_dump_style_is_safe(
    benign_models: list[tuple[str, object]], style: str, dump: DumpFunction, tmp_path: Path
) -> None:
    written = _dump_all(benign_models, style, dump, tmp_path)
    assert len(written) >= 100
    unsafe = {}
    for name, path in written:
        result = scan_path(path)
        if not result.safe:
            unsafe[name] = [f"{f.code}: {f.message}" for f in result.findings]
        expected = EXPECTED_FORMAT.get(style)
        if expected:
            assert result.format == expected, name
        else:
            assert result.format in ("pickle", "joblib"), name
        assert result.globals_used or result.format in ("npy", "skops"), name
    assert unsafe == {}


def test_verify_passes_a_benign_model_and_reports_safety(
    benign_models: list[tuple[str, object]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = dict(benign_models)["random_forest_classifier"]
    joblib.dump(model, tmp_path / "model.joblib", compress=3)
    manifest = tmp_path / "model-integrity.json"
    assert (
        main(["init", "--manifest", str(manifest), "--model", str(tmp_path / "model.joblib")]) == 0
    )
    report = tmp_path / "report.json"
    assert (
        main(["verify", "--manifest", str(manifest), "--json", str(report), "--no-progress"]) == 0
    )
    checks = {c["id"]: c for c in json.loads(report.read_text())["checks"]}
    assert checks["safety"]["status"] == "pass"
    assert "joblib-zlib" in checks["safety"]["summary"]
