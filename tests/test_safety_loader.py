"""`integrity.safety.loader.load_model`: the only way this project loads a model.

It refuses every malicious file of `tests/malicious_corpus.py` and nothing runs; its restricted
unpickler refuses what the allow-list refuses even when the scan is bypassed (defence in depth:
run in forked children of a subprocess, since a bypassed load is exactly what could run a
payload); and benign scikit-learn models load and predict exactly as `joblib.load` gives them.
"""

from __future__ import annotations

import copyreg
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib  # the test extra installs the ML libraries: missing ones fail the run
import numpy as np
import pytest
from malicious_corpus import (
    Built,
    Case,
    Outcome,
    ShellOnLoad,
    Target,
    assert_nothing_ran,
    build_corpus,
    by_name,
    extension_call,
    load_corpus,
    malicious_cases,
    os_system,
    whole,
)
from safety_corpus import dump_styles

from integrity.safety import loader
from integrity.safety.allowlist import AllowList
from integrity.safety.loader import UnsafeModelError, load_model
from integrity.safety.scanner import ScanResult, scan_path

CASES = malicious_cases()
BYPASSED = [case for case in CASES if case.bypass != "skip"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Built]]:
    with build_corpus(tmp_path_factory.mktemp("malicious"), CASES) as built:
        yield built


@pytest.fixture(scope="module")
def bypassed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Outcome, bool]]]:
    """Each case loaded by load_model with scan_fd replaced by one that says "safe"."""
    root = tmp_path_factory.mktemp("bypassed")
    with load_corpus(root, BYPASSED, lambda case: "integrity_bypass", wait_seconds=1) as loaded:
        yield loaded


# ------------------------------------------------------------------ malicious files


@by_name(CASES)
def test_load_model_refuses(case: Case, corpus: dict[str, Built]) -> None:
    item = corpus[case.name]
    with pytest.raises(UnsafeModelError) as refused:
        load_model(item.path)
    scan = refused.value.scan
    assert scan is not None and not scan.safe
    assert str(item.path) in str(refused.value)
    named = {finding.global_name for finding in scan.findings}
    assert set(case.globals) <= named
    assert_nothing_ran(item)


@by_name(BYPASSED)
def test_restricted_unpickler_refuses_without_the_scan(
    case: Case, bypassed: dict[str, tuple[Outcome, bool]]
) -> None:
    outcome, ran = bypassed[case.name]
    assert not ran, f"{case.name}: the payload ran with the scan bypassed: {outcome}"
    if case.bypass == "refused":
        assert outcome.get("type") == "UnsafeModelError", outcome
        assert "refused" in outcome["message"] or "not loadable" in outcome["message"]
    elif case.bypass == "fails":
        assert outcome["outcome"] == "raised", outcome
    else:  # "loads": joblib's reading never meets the payload (plain pickle.load would)
        assert outcome["outcome"] == "loaded", outcome


def _no_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    def says_safe(fd: int, display: str, allowlist: AllowList | None = None) -> ScanResult:
        return ScanResult(display, "pickle")

    monkeypatch.setattr(loader, "scan_fd", says_safe)


def test_restricted_unpickler_refuses_a_global_in_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    target = Target(tmp_path / "marker")
    path = tmp_path / "model.pkl"
    path.write_bytes(whole(os_system(target)))
    _no_scan(monkeypatch)
    with pytest.raises(UnsafeModelError, match=r"refused to load global os\.system"):
        load_model(path)
    assert not target.marker.exists()


def test_restricted_unpickler_covers_object_arrays_in_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An object array's nested pickle goes through the same refusal (joblib reads it with
    a second unpickler)."""
    marker = tmp_path / "marker"
    holder = np.empty(1, dtype=object)
    holder[0] = ShellOnLoad(Target(marker).shell)
    path = tmp_path / "model.joblib"
    joblib.dump({"labels": holder}, path)
    _no_scan(monkeypatch)
    with pytest.raises(UnsafeModelError, match=r"refused to load global posix\.system"):
        load_model(path)
    assert not marker.exists()


def test_extension_registry_is_refused_even_where_it_is_registered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """EXT1 names a global through copyreg's registry: registered in this very process, the
    scan still refuses it (it cannot know the loader's registry), and the restricted
    unpickler refuses the global the registry resolves to."""
    code = 0xEA
    target = Target(tmp_path / "marker")
    path = tmp_path / "model.pkl"
    path.write_bytes(extension_call("EXT1", code, target))
    copyreg.add_extension("os", "system", code)
    try:
        result = scan_path(path)
        assert [f.code for f in result.findings] == ["extension-registry"]
        with pytest.raises(UnsafeModelError, match="extension"):
            load_model(path)
        _no_scan(monkeypatch)
        with pytest.raises(UnsafeModelError, match=r"refused to load global os\.system"):
            load_model(path)
    finally:
        copyreg.remove_extension("os", "system", code)
    assert not target.marker.exists()


# ------------------------------------------------------------------ benign models


class ThresholdModel:
    """A model class of the project's own: loadable once the manifest allows it."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def predict(self, x: Any) -> Any:
        return (x[:, 0] > self.threshold).astype(int)


@pytest.fixture(scope="module")
def estimators() -> list[tuple[str, Any, Any]]:
    """(name, fitted model, rows to predict)."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.RandomState(0)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    labels = np.array(["cat", "dog", "emu"])[np.digitize(x[:, 2], [-0.5, 0.5])]
    rows = rng.normal(size=(25, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            ("logistic_regression", LogisticRegression().fit(x, y), rows),
            (
                "random_forest",
                RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y),
                rows,
            ),
            ("scaled_svc", make_pipeline(StandardScaler(), SVC()).fit(x, y), rows),
            ("gradient_boosting", GradientBoostingRegressor(n_estimators=10).fit(x, x[:, 3]), rows),
            ("kmeans", KMeans(n_clusters=3, n_init=2, random_state=0).fit(x), rows),
            ("tree_on_string_labels", DecisionTreeClassifier(random_state=0).fit(x, labels), rows),
        ]


DUMPS = dict(dump_styles())  # tests/safety_corpus.py's writers, by style name


@pytest.mark.parametrize(
    "style",
    [
        "pickle_protocol_2",
        "pickle_protocol_4",
        "pickle_protocol_5",
        "joblib",
        "joblib_zlib_3",
        "joblib_lz4_3",
        "joblib_xz_3",
    ],
)
def test_benign_models_load_and_predict_like_joblib(
    style: str, estimators: list[tuple[str, Any, Any]], tmp_path: Path
) -> None:
    for name, model, rows in estimators:
        path = tmp_path / f"{name}.bin"
        DUMPS[style](model, path)
        ours = load_model(path)
        reference = joblib.load(path)
        assert type(ours) is type(reference), name
        np.testing.assert_array_equal(ours.predict(rows), reference.predict(rows), err_msg=name)


def test_benign_skops_model_loads_from_the_scanned_file(
    estimators: list[tuple[str, Any, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skops.io

    _, model, rows = estimators[0]
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    monkeypatch.chdir(
        tmp_path.parent
    )  # the path is read through the open file, not looked up again
    ours = load_model(Path(tmp_path.name) / "model.skops")
    np.testing.assert_array_equal(ours.predict(rows), model.predict(rows))


def test_manifest_allowlist_lets_a_custom_class_load(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(ThresholdModel(0.25), protocol=4))
    qualified = f"{ThresholdModel.__module__}.ThresholdModel"
    with pytest.raises(UnsafeModelError, match=qualified.replace(".", r"\.")):
        load_model(path)
    allow = AllowList({(ThresholdModel.__module__, "ThresholdModel"): "our own threshold model"})
    model = load_model(path, allow)
    assert isinstance(model, ThresholdModel)
    rows = np.array([[0.0], [0.5]])
    np.testing.assert_array_equal(model.predict(rows), [0, 1])


@pytest.mark.parametrize(
    "content",
    [b"sepal_length,species\n5.1,setosa\n", b"\x89PNG\r\n\x1a\n", b""],
    ids=["csv", "png", "empty"],
)
def test_load_model_refuses_what_no_loader_unpickles(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(content)
    assert scan_path(path).safe  # not executable: the scan passes it
    with pytest.raises(UnsafeModelError, match="not a model file"):
        load_model(path)
