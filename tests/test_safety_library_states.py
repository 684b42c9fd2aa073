"""States that scikit-learn, pandas, scipy and the standard library trust.

Each library class below is allowed, and each trusts the values a pickle hands it. For each,
a file made only of allowed globals crashes (or corrupts memory in) a stock `pickle.load` or
the first use of what it loads: the crash is shown in a subprocess, the scanner refuses the
file, and the states the libraries themselves write still pass. Plain standard-library data
types round-trip through the scanner as safe in every protocol; their abusive forms are
refused.
"""

from __future__ import annotations

import collections
import copyreg
import datetime
import decimal
import fractions
import json
import os
import pathlib
import pickle
import pickletools
import signal
import struct
import subprocess
import sys
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from integrity.safety.allowlist import AllowList
from integrity.safety.scanner import ScanResult, scan_path

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
RECONSTRUCTOR = getattr(copyreg, "_reconstructor")  # noqa: B009 (not in typeshed)


class Reduces:
    """Pickles as the reduce tuple it is given: how a crafted state is written with the
    real pickler, naming only the real (allowed) globals."""

    def __init__(self, *reduced: Any) -> None:
        self.reduced = reduced

    def __reduce__(self) -> tuple[Any, ...]:
        return self.reduced


def scan_bytes(data: bytes, folder: Path, name: str = "model.pkl") -> ScanResult:
    path = folder / name
    path.write_bytes(data)
    return scan_path(path)


def unsafe_states(result: ScanResult) -> list[str]:
    return [f.message for f in result.findings if f.code == "unsafe-state"]


# ---------------------------------------------------------------- standard library

PLAIN_VALUES: dict[str, object] = {
    "counter": collections.Counter("abracadabra"),
    "counter_of_ngrams": collections.Counter({("a", "b"): 2, ("b", "c"): 1}),
    "deque": collections.deque([1, 2.5, "x"]),
    "deque_maxlen": collections.deque([1, 2], maxlen=3),
    "decimal": decimal.Decimal("-1234.5678E-3"),
    "decimal_special": [decimal.Decimal("NaN"), decimal.Decimal("-Infinity")],
    "fraction": fractions.Fraction(-22, 7),
    "time": datetime.time(23, 59, 58, 999, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    "pure_paths": [pathlib.PurePosixPath("/data/x.csv"), pathlib.PureWindowsPath(r"C:\d\x")],
    "namespace": types.SimpleNamespace(alpha=0.5, names=["a"]),
    "constants": (..., NotImplemented),
    "number_types": [int, float, bool, str],
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", sorted(PLAIN_VALUES))
def test_standard_library_data_type_is_safe_as_python_pickles_it(
    name: str, protocol: int, tmp_path: Path
) -> None:
    value = PLAIN_VALUES[name]
    result = scan_bytes(pickle.dumps({"param": value}, protocol), tmp_path)
    assert result.safe, [f.message for f in result.findings]


ABUSED: dict[str, tuple[Any, ...]] = {
    # 10**999999999 computed at load: a CPU and memory bomb.
    "fraction_huge_exponent": (fractions.Fraction, ("1e999999999",)),
    "fraction_huge_int": (fractions.Fraction, (1 << 100_000, 3)),
    "fraction_of_an_object": (fractions.Fraction, (decimal.Decimal("1.5"),)),
    "decimal_huge_exponent": (decimal.Decimal, ("1e999999999",)),
    "decimal_not_text": (decimal.Decimal, ((0, (1,), 5),)),
    "decimal_with_context": (decimal.Decimal, ("1", None)),
    # A lazy range walked item by item.
    "deque_of_a_range": (collections.deque, (range(10**15),)),
    "deque_negative_maxlen": (collections.deque, ((), -1)),
    "counter_of_a_range": (collections.Counter, (range(10**15),)),
    "namespace_from_an_iterable": (types.SimpleNamespace, (range(10**15),)),
    "pure_path_of_an_object": (pathlib.PurePosixPath, (fractions.Fraction(1, 2),)),
    "int_of_an_object": (int, (fractions.Fraction(1, 2),)),
    "int_of_a_huge_int": (int, (1 << 100_000,)),
    # Protocols 0 and 1 make it with copyreg._reconstructor: checked all the same.
    "uuid_state_not_an_int": (RECONSTRUCTOR, (uuid.UUID, object, None), {"int": "1"}),
    "uuid_state_too_large": (RECONSTRUCTOR, (uuid.UUID, object, None), {"int": 1 << 128}),
}


@pytest.mark.parametrize("name", sorted(ABUSED))
def test_abusive_standard_library_arguments_are_refused(name: str, tmp_path: Path) -> None:
    data = pickle.dumps(Reduces(*ABUSED[name]), 4)
    result = scan_bytes(data, tmp_path)
    assert not result.safe
    assert unsafe_states(result), [f.message for f in result.findings]


@pytest.mark.parametrize(
    "name",
    ["zoneinfo_by_key", "concrete_path"],
)
def test_callables_and_file_reaching_types_stay_refused(name: str, tmp_path: Path) -> None:
    import zoneinfo

    value: object = {
        # ZoneInfo pickles as ZoneInfo._unpickle(key): it reads a time-zone file by name.
        "zoneinfo_by_key": zoneinfo.ZoneInfo("UTC"),
        "concrete_path": pathlib.Path("/etc/passwd"),
    }[name]
    result = scan_bytes(pickle.dumps(value, 4), tmp_path)
    assert not result.safe
    assert not unsafe_states(result)


# ---------------------------------------------------------------- library states that crash

# Each crafted file is loaded by the stock pickle.load and used, in a forked child of one
# subprocess that imported the libraries once; the libraries are never fed the file here.
CRASH_RUNNER = """
import json, os, pickle, sys
import numpy as np, pandas, scipy.sparse, sklearn.ensemble, sklearn.neighbors, sklearn.tree
import sklearn.feature_extraction.text, sklearn.svm
X = np.random.RandomState(0).normal(size=(200, 3))
statuses = {}
for name, path, use in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        os.close(2)  # the allocator's abort message is not this test's output
        m = pickle.load(open(path, "rb"))
        eval(use)
        os._exit(0)
    statuses[name] = os.waitpid(pid, 0)[1]
print(json.dumps(statuses))
"""


def _fitted_tree() -> Any:
    from sklearn.tree import DecisionTreeClassifier

    x = np.random.RandomState(0).normal(size=(40, 3))
    return DecisionTreeClassifier(max_depth=3, random_state=0).fit(x, x[:, 0] > 0)


def _crafted_tree(
    nodes: Callable[[Any], None] = lambda n: None,
    state: Callable[[dict[str, Any]], None] = lambda s: None,
) -> bytes:
    model = _fitted_tree()
    cls, args, tree_state = model.tree_.__reduce__()
    tree_state = dict(tree_state)
    tree_state["nodes"] = tree_state["nodes"].copy()
    nodes(tree_state["nodes"])
    state(tree_state)
    model.tree_ = Reduces(cls, args, tree_state)
    return pickle.dumps(model, 4)


WIDE = 1 << 40  # a tree made for this many features reads far past any real X


def _wide_tree(tree: Any) -> Reduces:
    """A tree made for WIDE features that splits its root on the last one: consistent in
    itself, so only the estimator holding it can tell it reads past X."""
    cls, (_, n_classes, n_outputs), state = tree.__reduce__()
    state = dict(state)
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["feature"][0] = WIDE - 1
    return Reduces(cls, (WIDE, n_classes, n_outputs), state)


def _tree_estimator_wider_than_its_check() -> bytes:
    model = _fitted_tree()
    model.tree_ = _wide_tree(model.tree_)  # n_features_in_ stays 3: X is validated for 3
    return pickle.dumps(model, 4)


def _ensemble_wider_than_its_check(kind: str, writer: str = "pickle") -> bytes:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

    x = np.random.RandomState(0).normal(size=(40, 3))
    if kind == "forest":
        model: Any = RandomForestRegressor(n_estimators=2, max_depth=2, random_state=0)
        trees = model.fit(x, x[:, 0]).estimators_
    else:
        model = GradientBoostingRegressor(n_estimators=2, max_depth=2, random_state=0)
        trees = model.fit(x, x[:, 0]).estimators_[:, 0]
    for tree in trees:
        tree.tree_ = _wide_tree(tree.tree_)
        tree.n_features_in_ = WIDE  # the tree estimator agrees with its tree
    if writer == "joblib":
        import io

        import joblib

        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        return buffer.getvalue()
    return pickle.dumps(model, 4)


def _set(field: str, value: int) -> Callable[[Any], None]:
    def change(nodes: Any) -> None:
        nodes[field][0] = value

    return change


def _binary_tree(kind: str, change: Callable[[list[Any]], None]) -> bytes:
    from sklearn.neighbors import BallTree, KDTree

    x = np.random.RandomState(0).normal(size=(200, 3))
    tree = {"kd": KDTree, "ball": BallTree}[kind](x, leaf_size=5)
    factory, args, state = tree.__reduce__()
    state = [s.copy() if isinstance(s, np.ndarray) else s for s in state]
    change(state)
    return pickle.dumps(Reduces(factory, args, tuple(state)), 4)


def _idx_out_of_range(state: list[Any]) -> None:
    state[1][:] = 1 << 40


def _node_past_idx_array(state: list[Any]) -> None:
    state[2]["idx_end"][-1] = 1 << 40


def _sparse(change: Callable[[Any], None]) -> bytes:
    from scipy import sparse

    matrix = sparse.random(50, 40, density=0.2, format="csr", random_state=0)
    change(matrix)
    return pickle.dumps(matrix, 4)


def _column_out_of_range(matrix: Any) -> None:
    matrix.indices[3] = 1 << 30


def _pointer_past_data(matrix: Any) -> None:
    matrix.indptr[-1] = 1 << 30


def _frame_with_block_outside() -> bytes:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]
    from pandas._libs.internals import (  # type: ignore[import-untyped, unused-ignore]
        _unpickle_block,
    )
    from pandas.core.internals.managers import (  # type: ignore[import-untyped, unused-ignore]
        BlockManager,
    )

    frame = pd.DataFrame({"a": np.arange(3), "b": np.arange(3.0)})
    blocks = [
        Reduces(_unpickle_block, (block.values, np.array([0 if i == 0 else 1 << 40]), 2))
        for i, block in enumerate(frame._mgr.blocks)
    ]
    object.__setattr__(frame, "_mgr", Reduces(BlockManager, (tuple(blocks), frame._mgr.axes)))
    return pickle.dumps(frame, 4)


def _hist_predictor_child_outside() -> bytes:
    from sklearn.ensemble import HistGradientBoostingRegressor

    x = np.random.RandomState(0).normal(size=(60, 3))
    model = HistGradientBoostingRegressor(max_iter=2).fit(x, x[:, 0])
    nodes = model._predictors[0][0].nodes
    nodes["left"][0] = (1 << 32) - 1
    return pickle.dumps(model, 4)


def _vocabulary_outside_the_matrix() -> bytes:
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer().fit(["alpha beta gamma", "beta delta"])
    vectorizer.vocabulary_ = {**vectorizer.vocabulary_, "alpha": 1 << 30}
    return pickle.dumps(vectorizer, 4)


def _svc_counts_past_empty_vectors() -> bytes:
    from sklearn.svm import SVC

    x = np.random.RandomState(0).normal(size=(40, 3))
    model = SVC(kernel="linear").fit(x, x[:, 0] > 0)
    # Zero-width vectors skip scikit-learn's own check of _n_support (CVE-2020-28975).
    model.support_vectors_ = np.zeros((1 << 26, 0))
    model._n_support = np.array([1 << 25, 1 << 25], dtype=np.int32)
    return pickle.dumps(model, 4)


@dataclass(frozen=True)
class Crash:
    build: Callable[[], bytes]
    use: str  # what a user does with the loaded model `m`


CRASHES: dict[str, Crash] = {
    "tree_child_outside_nodes": Crash(
        lambda: _crafted_tree(nodes=_set("left_child", 1 << 40)), "m.predict(X)"
    ),
    "tree_feature_past_columns": Crash(
        lambda: _crafted_tree(nodes=_set("feature", 1 << 40)), "m.predict(X)"
    ),
    "tree_negative_node_count": Crash(
        lambda: _crafted_tree(state=lambda s: s.__setitem__("node_count", -1)),
        "m.feature_importances_",
    ),
    "tree_max_depth_below_depth": Crash(
        lambda: _crafted_tree(state=lambda s: s.__setitem__("max_depth", 0)),
        "m.decision_path(np.tile(X, (50, 1)))",
    ),
    "tree_estimator_wider_than_its_check": Crash(
        _tree_estimator_wider_than_its_check, "m.predict(X)"
    ),
    "hist_gradient_boosting_child_outside_nodes": Crash(
        _hist_predictor_child_outside, "m.predict(X)"
    ),
    "kd_tree_index_outside_data": Crash(
        lambda: _binary_tree("kd", _idx_out_of_range), "m.query(X, k=3)"
    ),
    "kd_tree_node_past_idx_array": Crash(
        lambda: _binary_tree("kd", _node_past_idx_array), "m.query(X, k=3)"
    ),
    "ball_tree_node_past_idx_array": Crash(
        lambda: _binary_tree("ball", _node_past_idx_array), "m.query(X, k=3)"
    ),
    "csr_column_outside_shape": Crash(lambda: _sparse(_column_out_of_range), "m @ np.ones(40)"),
    "csr_pointer_past_data": Crash(lambda: _sparse(_pointer_past_data), "m.toarray()"),
    "dataframe_block_outside_frame": Crash(_frame_with_block_outside, "m['a']"),
    "count_vectorizer_column_outside_matrix": Crash(
        _vocabulary_outside_the_matrix, "m.transform(['alpha beta', 'alpha']).toarray()"
    ),
    "svc_support_counts_past_empty_vectors": Crash(
        _svc_counts_past_empty_vectors, "m.predict(X[:2])"
    ),
}


@pytest.fixture(scope="module")
def crash_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("crashes")
    files = {}
    for name, crash in CRASHES.items():
        files[name] = folder / f"{name}.pkl"
        files[name].write_bytes(crash.build())
    return files


@pytest.fixture(scope="module")
def crash_signals(crash_files: dict[str, Path]) -> dict[str, int]:
    """The signal that ended each file's child (0: it exited)."""
    cases = [(name, str(path), CRASHES[name].use) for name, path in crash_files.items()]
    done = subprocess.run(
        [sys.executable, "-c", CRASH_RUNNER, json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    statuses: dict[str, int] = json.loads(done.stdout)
    return {name: os.WTERMSIG(s) if os.WIFSIGNALED(s) else 0 for name, s in statuses.items()}


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_crafted_state_crashes_the_stock_loader(name: str, crash_signals: dict[str, int]) -> None:
    # Killed by SIGSEGV, or by SIGABRT from the allocator's heap checks.
    assert crash_signals[name] in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_crafted_state_is_refused_by_its_validator(name: str, crash_files: dict[str, Path]) -> None:
    result = scan_path(crash_files[name])
    assert not result.safe
    assert unsafe_states(result), [f.message for f in result.findings]
    assert all(f.code == "unsafe-state" for f in result.findings)


def _categorical_code_outside() -> bytes:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    values = pd.Categorical(["u", "v", "u"])
    factory, args, (dtype, _) = values.__reduce_ex__(4)
    return pickle.dumps(Reduces(factory, args, (dtype, np.array([0, 5, 0], np.int8))), 4)


def _backed_array_of(kind: str) -> bytes:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]

    values = {
        "datetime": pd.array(pd.to_datetime(["2020-01-01"])),
        "string": pd.array(["a"], dtype="string[python]"),
    }[kind]
    factory, args, state = values.__reduce_ex__(4)
    return pickle.dumps(Reduces(factory, args, (state[0], np.array([7], np.int64))), 4)


def _new_obj_of_another_class() -> bytes:
    import pandas as pd  # type: ignore[import-untyped, unused-ignore]
    from sklearn.neighbors import KDTree

    factory, _, _ = KDTree(np.ones((4, 2))).__reduce__()
    return pickle.dumps(Reduces(factory, (pd.DataFrame,), {}), 4)


def _tree_with_classes_for_another_output_count() -> bytes:
    model = _fitted_tree()
    cls, (n_features, n_classes, _), state = model.tree_.__reduce__()
    model.tree_ = Reduces(cls, (n_features, n_classes, 2), state)
    return pickle.dumps(model, 4)


# States the validators refuse although scikit-learn 1.9.1 and pandas 3.1.1 happen to
# catch them later (an IndexError, a re-check of the columns): the libraries do not
# promise those checks, and the states are not ones they write.
REFUSED_WITHOUT_A_CRASH: dict[str, Callable[[], bytes]] = {
    "forest_of_trees_wider_than_its_check": lambda: _ensemble_wider_than_its_check("forest"),
    "gradient_boosting_of_trees_wider_than_its_check": lambda: _ensemble_wider_than_its_check(
        "boosting"
    ),
    "categorical_code_outside_categories": _categorical_code_outside,
    "datetime_array_of_plain_ints": lambda: _backed_array_of("datetime"),
    "string_array_of_plain_ints": lambda: _backed_array_of("string"),
    "kd_tree_new_obj_making_a_dataframe": _new_obj_of_another_class,
    "tree_classes_for_another_output_count": _tree_with_classes_for_another_output_count,
}


@pytest.mark.parametrize("name", sorted(REFUSED_WITHOUT_A_CRASH))
def test_state_no_library_writes_is_refused(name: str, tmp_path: Path) -> None:
    result = scan_bytes(REFUSED_WITHOUT_A_CRASH[name](), tmp_path)
    assert not result.safe
    assert unsafe_states(result), [f.message for f in result.findings]


# ---------------------------------------------------------------- changed after the check


def _memo_of_next(data: bytes, after: str, opcode: str) -> int:
    """The memo index the pickler gave the first `opcode`'s result after the text `after`."""
    ops = list(pickletools.genops(data))
    start = next(i for i, (_, arg, _) in enumerate(ops) if arg == after)
    made = next(i for i in range(start, len(ops)) if ops[i][0].name == opcode)
    put = ops[made + 1]
    assert put[0].name == "BINPUT" and isinstance(put[1], int), put
    return put[1]


def _then(data: bytes, opcodes: bytes) -> bytes:
    """A protocol-2 pickle with opcodes run on its memo before STOP."""
    assert data.endswith(b".") and data.startswith(b"\x80\x02")
    return data[:-1] + opcodes + b"."


def _csr_changed_after_its_check() -> bytes:
    from scipy import sparse

    data = pickle.dumps(sparse.random(50, 40, density=0.2, format="csr", random_state=0), 2)
    # GET the indices array, indices[3] = 2**30, POP: ndarray.__setitem__ after BUILD.
    indices = _memo_of_next(data, "indices", "REDUCE") + 2  # after _codecs.encode's bytes
    return _then(data, b"h" + bytes([indices]) + b"K\x03J" + struct.pack("<i", 1 << 30) + b"s0")


CRASHES["csr_indices_changed_after_the_check"] = Crash(
    _csr_changed_after_its_check, "m @ np.ones(40)"
)


def test_a_list_a_checked_object_holds_cannot_change(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestRegressor

    x = np.random.RandomState(0).normal(size=(40, 3))
    forest = RandomForestRegressor(n_estimators=2, max_depth=2, random_state=0).fit(x, x[:, 0])
    data = pickle.dumps(forest, 2)
    trees = _memo_of_next(data, "estimators_", "EMPTY_LIST")
    # Once the forest's state is checked, APPEND to its estimators_ list (the forest holds
    # that very list) would add a tree no check saw.
    result = scan_bytes(_then(data, b"h" + bytes([trees]) + b"K\x05a0"), tmp_path)
    assert [f.code for f in result.findings] == ["indirect-call"]
    assert "since its state was checked" in result.findings[0].message
    assert scan_bytes(data, tmp_path, "control.pkl").safe


def test_a_checked_object_cannot_be_built_twice(tmp_path: Path) -> None:
    data = pickle.dumps(_fitted_tree(), 2)
    model = _memo_of_next(data, "sklearn.tree._classes DecisionTreeClassifier", "NEWOBJ")
    # A second BUILD merges into the estimator's attributes after the first was checked.
    result = scan_bytes(_then(data, b"h" + bytes([model]) + b"}b0"), tmp_path)
    assert unsafe_states(result) and "built twice" in unsafe_states(result)[0]
    assert scan_bytes(data, tmp_path, "control.pkl").safe


# ---------------------------------------------------------------- what the libraries write


DOCUMENTS = ["the cat sat", "the dog sat down", "a cat and a dog", "the end"]


def _library_objects() -> dict[str, object]:
    """One real object per validated class, each as its library writes it."""
    import pandas as pd
    from scipy import sparse
    from sklearn import ensemble, linear_model, neighbors, svm, tree
    from sklearn.feature_extraction import text

    rng = np.random.RandomState(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    y2 = np.c_[x[:, 0], x[:, 1]]
    return {
        "tree_multi_output": tree.DecisionTreeRegressor(max_depth=4).fit(x, y2),
        "extra_tree": tree.ExtraTreeClassifier(random_state=0).fit(x, y),
        "random_forest": ensemble.RandomForestClassifier(n_estimators=3).fit(x, y),
        "extra_trees": ensemble.ExtraTreesRegressor(n_estimators=3).fit(x, y2),
        "gradient_boosting_3_classes": ensemble.GradientBoostingClassifier(n_estimators=3).fit(
            x, y
        ),
        "isolation_forest": ensemble.IsolationForest(
            n_estimators=3, max_features=2, random_state=0
        ).fit(x),
        "hist_gradient_boosting_quantile": ensemble.HistGradientBoostingRegressor(
            max_iter=3, loss="quantile", quantile=0.3
        ).fit(x, x[:, 0]),
        "kd_tree": neighbors.KDTree(x, leaf_size=4),
        "ball_tree": neighbors.BallTree(x, leaf_size=4),
        "k_neighbors_kd": neighbors.KNeighborsClassifier(algorithm="kd_tree").fit(x, y),
        "sgd_modified_huber": linear_model.SGDClassifier(loss="modified_huber").fit(x, y),
        "svc_probability": svm.SVC(probability=True).fit(x, y),
        "svc_precomputed": svm.SVC(kernel="precomputed").fit(x @ x.T, y),
        "svc_sparse": svm.SVC().fit(sparse.csr_matrix(x), y),
        "svr": svm.SVR().fit(x, x[:, 0]),
        "vectorizers_pruned": [
            text.CountVectorizer(max_features=3).fit(DOCUMENTS),
            text.TfidfVectorizer(min_df=2).fit(DOCUMENTS),
        ],
        "sparse": [
            sparse.random(30, 20, density=0.1, format=f, random_state=0)
            for f in ("csr", "csc", "coo")
        ]
        + [sparse.csr_matrix(np.eye(3), dtype=np.int8)],
        "frame": pd.DataFrame(
            {
                "i": np.arange(3),
                "f": [0.5, 1.5, 2.5],
                "s": ["a", "b", "c"],
                "c": pd.Categorical(["u", "v", "u"]),
                "t": pd.to_datetime(["2020-01-01", "2021-01-01", "2022-01-01"]),
                "j": np.arange(3),
            }
        ),
        "series_of_categories": pd.Series(pd.Categorical(["x", None, "y"])),
    }


@pytest.fixture(scope="module")
def library_objects() -> dict[str, object]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _library_objects()


STYLES = [f"pickle_{p}" for p in PROTOCOLS] + ["joblib", "joblib_zlib"]


@pytest.mark.parametrize("style", STYLES)
def test_states_the_libraries_write_pass_their_validators(
    library_objects: dict[str, object], style: str, tmp_path: Path
) -> None:
    import joblib

    refused = {}
    for name, value in library_objects.items():
        path = tmp_path / f"{name}.{style}"
        if style.startswith("pickle_"):
            path.write_bytes(pickle.dumps(value, int(style.removeprefix("pickle_"))))
        else:
            joblib.dump(value, path, compress=3 if style == "joblib_zlib" else 0)
        result = scan_path(path)
        if not result.safe:
            refused[name] = [f.message for f in result.findings]
    assert refused == {}


def _categorical_boosting() -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.RandomState(0)
    x = np.c_[rng.randint(0, 4, size=80), rng.normal(size=(80, 2))]
    y = (x[:, 0] % 2 == 0).astype(int)
    return HistGradientBoostingClassifier(max_iter=3, categorical_features=[0]).fit(x, y)


# Its preprocessor holds functools.partial(check_array, ...), never on the allow-list: the
# user's allow-list gives them here, so that the categorical splits are what is checked.
CATEGORICAL_PREPROCESSOR = AllowList(
    {
        ("functools", "partial"): "test: HistGradientBoosting's categorical preprocessor",
        ("sklearn.utils.validation", "check_array"): "test: the same",
    }
)


def test_categorical_splits_of_histogram_boosting_pass_against_their_binner(
    tmp_path: Path,
) -> None:
    model = _categorical_boosting()
    assert any(p.nodes["is_categorical"].any() for s in model._predictors for p in s)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model, 4))
    assert scan_path(path, CATEGORICAL_PREPROCESSOR).safe
    # The binner forgets the feature is categorical: predict would look its splits'
    # categories up in a bitset table with no row for it.
    model._bin_mapper.is_categorical_[:] = 0
    path.write_bytes(pickle.dumps(model, 4))
    result = scan_path(path, CATEGORICAL_PREPROCESSOR)
    assert any("categorical" in message for message in unsafe_states(result))


@pytest.mark.parametrize(
    "dtype",
    [
        [("a", "<i8"), ("b", "<i8"), ("t", "<f8"), ("m", "u1")],  # tree nodes' layout
        [("a", "u1"), ("b", "<i4"), ("c", "<i2")],  # packed: offsets not multiples
        [("a", ">i8"), ("b", ">u4")],  # not native: decoded, not viewed
        [("a", "?"), ("b", "<u2"), ("c", "<i4")],
    ],
    ids=["aligned", "packed", "big_endian", "bool_and_small"],
)
def test_field_integers_read_by_the_validators_are_numpys(
    dtype: list[tuple[str, str]], tmp_path: Path
) -> None:
    from test_safety_numpy_states import symbolic

    from integrity.safety.states.library_arrays import ints

    values = np.zeros(7, dtype=dtype)
    integers = [name for name, kind in dtype if np.dtype(kind).kind != "f"]
    for k, name in enumerate(integers):
        values[name] = (np.arange(7) * (k + 3)) % (2 if values.dtype[name].kind == "b" else 100)
    for protocol in (2, 5):
        array = symbolic(pickle.dumps(values, protocol), tmp_path)
        for name in integers:
            assert list(ints(array, "test", name)) == values[name].astype(int).tolist()


def test_keyword_arguments_are_refused(tmp_path: Path) -> None:
    # NEWOBJ_EX: Fraction.__new__(Fraction, 1, denominator=3). Python never writes
    # keywords for these types; a keyword passes around what the validator checks.
    data = b"\x80\x04\x8c\tfractions\x8c\x08Fraction\x93K\x01\x85}\x8c\x0bdenominatorK\x03s\x92."
    assert [op.name for op, _, _ in pickletools.genops(data)][-2:] == ["NEWOBJ_EX", "STOP"]
    assert any("keyword" in message for message in unsafe_states(scan_bytes(data, tmp_path)))


def test_joblib_object_array_is_checked_as_what_its_nested_pickle_makes(tmp_path: Path) -> None:
    # joblib writes GradientBoosting's estimators_ as an object array: a nested pickle the
    # wrapper stands for. Its trees are the ones the ensemble is checked against.
    result = scan_bytes(_ensemble_wider_than_its_check("boosting", "joblib"), tmp_path)
    assert [m for m in unsafe_states(result) if "different number of features" in m]
