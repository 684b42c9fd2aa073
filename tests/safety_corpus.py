"""A corpus of benign model artifacts for the safety scanner: real fitted models, plain data, and
every way they are commonly written to disk.

`benign_estimators()` fits many real scikit-learn estimators on tiny data (about a second in
all) and adds plain data (numpy arrays of many dtypes, scipy sparse matrices, pandas frames, a
model "bundle" dict). `dump_styles()` lists the writers: pickle protocols 0-5, joblib raw and
compressed, `numpy.save` of an object array, and skops.

Nothing here is a test: `tests/test_*` modules import it (the test extra installs
scikit-learn, numpy, scipy, pandas and joblib) to check that the scanner passes every benign
artifact, and `scripts/gather_allowlist.py` imports it to gather the allow-list in
`integrity/safety/allowlist_data.py`. The ML libraries are imported inside the functions, so
importing this module never needs them.
"""

from __future__ import annotations

import pickle
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

DumpFunction = Callable[[object, Path], None]


def benign_estimators() -> list[tuple[str, object]]:
    """Real fitted scikit-learn estimators and plain data, each with a unique name.

    Needs scikit-learn, numpy, scipy and pandas; works with scikit-learn 1.2 to 1.9, numpy
    1.23 to 2.x and pandas 1.5 to 3.x. Convergence and other fit warnings are silenced: the
    models are fitted on a few dozen rows on purpose. Fitting runs on one thread: on data
    this small, waking BLAS and OpenMP thread pools costs ten times more than the work.
    """
    from threadpoolctl import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
        threadpool_limits,
    )

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        return _fitted_models() + _plain_data()


def _fitted_models() -> list[tuple[str, object]]:
    # Each ignore serves every environment: these packages may be missing (the core install has
    # no ML libraries) or present without type information.
    import numpy as np
    import pandas as pd  # type: ignore[import-not-found, import-untyped, unused-ignore]
    from scipy import sparse  # type: ignore[import-not-found, import-untyped, unused-ignore]
    from sklearn import (  # type: ignore[import-not-found, import-untyped, unused-ignore]
        calibration,
        cluster,
        compose,
        decomposition,
        discriminant_analysis,
        ensemble,
        feature_extraction,
        feature_selection,
        impute,
        linear_model,
        mixture,
        model_selection,
        naive_bayes,
        neighbors,
        neural_network,
        pipeline,
        preprocessing,
        svm,
        tree,
    )

    rng = np.random.RandomState(0)
    x = rng.normal(size=(40, 4))
    x_pos = np.abs(x)
    y_bin = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    y_multi = np.digitize(x[:, 0], [-0.5, 0.5])
    y_reg = x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(scale=0.1, size=40)
    y_pos = np.abs(y_reg) + 0.1
    y_str = np.array(["cat", "dog", "emu"])[y_multi]
    y_obj = y_str.astype(object)
    x_nan = x.copy()
    x_nan[::7, 1] = np.nan
    x_sparse = sparse.csr_matrix(np.where(x_pos > 1.0, x_pos, 0.0))
    texts = [
        "the model predicts churn",
        "a tiny corpus of text",
        "churn is predicted by the model",
        "text features for a tiny model",
    ] * 5
    y_text = np.array([0, 1, 0, 1] * 5)
    frame = pd.DataFrame(
        {
            "age": x[:, 0] * 10 + 40,
            "income": x[:, 1] * 1000 + 5000,
            "colour": np.array(["red", "green", "blue", "red"] * 10),
            "city": np.array(["Oslo", "Lima", "Pune", "Kyiv", "Oslo"] * 8),
        }
    )

    def fit(estimator: object, *args: object) -> object:
        estimator.fit(*args)  # type: ignore[attr-defined]
        return estimator

    lr = linear_model.LogisticRegression
    models: list[tuple[str, object]] = [
        # linear models
        ("logistic_regression", fit(lr(), x, y_bin)),
        ("logistic_regression_multiclass", fit(lr(max_iter=200), x, y_multi)),
        ("logistic_regression_string_classes", fit(lr(), x, y_str)),
        ("linear_regression", fit(linear_model.LinearRegression(), x, y_reg)),
        ("ridge", fit(linear_model.Ridge(alpha=0.5), x, y_reg)),
        ("ridge_classifier", fit(linear_model.RidgeClassifier(), x, y_bin)),
        ("lasso", fit(linear_model.Lasso(alpha=0.01), x, y_reg)),
        ("elastic_net", fit(linear_model.ElasticNet(alpha=0.01), x, y_reg)),
        ("sgd_classifier", fit(linear_model.SGDClassifier(random_state=0), x, y_bin)),
        ("sgd_regressor", fit(linear_model.SGDRegressor(random_state=0), x, y_reg)),
        (
            "sgd_classifier_log_loss",
            fit(linear_model.SGDClassifier(loss="log_loss", random_state=0), x, y_multi),
        ),
        (
            "sgd_classifier_modified_huber",
            fit(linear_model.SGDClassifier(loss="modified_huber", random_state=0), x, y_bin),
        ),
        (
            "sgd_regressor_huber",
            fit(linear_model.SGDRegressor(loss="huber", random_state=0), x, y_reg),
        ),
        (
            "logistic_regression_cv",
            fit(linear_model.LogisticRegressionCV(Cs=2, cv=2), x, y_bin),
        ),
        ("ridge_cv", fit(linear_model.RidgeCV(), x, y_reg)),
        ("perceptron", fit(linear_model.Perceptron(random_state=0), x, y_multi)),
        # support vector machines
        ("svc", fit(svm.SVC(), x, y_bin)),
        ("svc_probability", fit(svm.SVC(probability=True, random_state=0), x, y_multi)),
        ("svr", fit(svm.SVR(), x, y_reg)),
        ("linear_svc", fit(svm.LinearSVC(random_state=0), x, y_bin)),
        # neighbours (brute force and both tree structures)
        ("kneighbors_classifier", fit(neighbors.KNeighborsClassifier(n_neighbors=3), x, y_multi)),
        ("kneighbors_regressor", fit(neighbors.KNeighborsRegressor(n_neighbors=3), x, y_reg)),
        (
            "kneighbors_ball_tree",
            fit(neighbors.KNeighborsClassifier(n_neighbors=3, algorithm="ball_tree"), x, y_bin),
        ),
        (
            "kneighbors_kd_tree",
            fit(neighbors.KNeighborsRegressor(n_neighbors=3, algorithm="kd_tree"), x, y_reg),
        ),
        # trees and ensembles
        ("decision_tree_classifier", fit(tree.DecisionTreeClassifier(max_depth=3), x, y_multi)),
        ("decision_tree_regressor", fit(tree.DecisionTreeRegressor(max_depth=3), x, y_reg)),
        ("decision_tree_object_classes", fit(tree.DecisionTreeClassifier(), x, y_obj)),
        (
            "random_forest_classifier",
            fit(ensemble.RandomForestClassifier(n_estimators=3, random_state=0), x, y_bin),
        ),
        (
            "random_forest_regressor",
            fit(ensemble.RandomForestRegressor(n_estimators=3, random_state=0), x, y_reg),
        ),
        (
            "random_forest_random_state_object",
            fit(
                ensemble.RandomForestClassifier(
                    n_estimators=2, random_state=np.random.RandomState(0)
                ),
                x,
                y_str,
            ),
        ),
        (
            "extra_trees_classifier",
            fit(ensemble.ExtraTreesClassifier(n_estimators=3, random_state=0), x, y_multi),
        ),
        (
            "extra_trees_regressor",
            fit(ensemble.ExtraTreesRegressor(n_estimators=3, random_state=0), x, y_reg),
        ),
        (
            "gradient_boosting_classifier",
            fit(ensemble.GradientBoostingClassifier(n_estimators=5, random_state=0), x, y_bin),
        ),
        (
            "gradient_boosting_multiclass",
            fit(ensemble.GradientBoostingClassifier(n_estimators=3, random_state=0), x, y_str),
        ),
        (
            "gradient_boosting_regressor",
            fit(ensemble.GradientBoostingRegressor(n_estimators=5, random_state=0), x, y_reg),
        ),
        (
            "hist_gradient_boosting_classifier",
            fit(ensemble.HistGradientBoostingClassifier(max_iter=5), x, y_bin),
        ),
        (
            "hist_gradient_boosting_multiclass",
            fit(ensemble.HistGradientBoostingClassifier(max_iter=3), x, y_str),
        ),
        (
            "hist_gradient_boosting_regressor",
            fit(ensemble.HistGradientBoostingRegressor(max_iter=5), x_nan, y_reg),
        ),
        *[
            (
                f"hist_gradient_boosting_{loss}",
                fit(ensemble.HistGradientBoostingRegressor(loss=loss, max_iter=3), x, y_pos),
            )
            for loss in ("absolute_error", "poisson")
        ],
        (
            "hist_gradient_boosting_quantile",
            fit(
                ensemble.HistGradientBoostingRegressor(loss="quantile", quantile=0.9, max_iter=3),
                x,
                y_reg,
            ),
        ),
        *[
            (
                f"gradient_boosting_{loss}",
                fit(ensemble.GradientBoostingRegressor(loss=loss, n_estimators=3), x, y_reg),
            )
            for loss in ("absolute_error", "huber", "quantile")
        ],
        (
            "ada_boost_classifier",
            fit(ensemble.AdaBoostClassifier(n_estimators=3, random_state=0), x, y_bin),
        ),
        (
            "ada_boost_regressor",
            fit(ensemble.AdaBoostRegressor(n_estimators=3, random_state=0), x, y_reg),
        ),
        (
            "bagging_classifier",
            fit(ensemble.BaggingClassifier(n_estimators=3, random_state=0), x, y_bin),
        ),
        (
            "voting_classifier_soft",
            fit(
                ensemble.VotingClassifier(
                    [("lr", lr()), ("nb", naive_bayes.GaussianNB())], voting="soft"
                ),
                x,
                y_multi,
            ),
        ),
        (
            "voting_regressor",
            fit(
                ensemble.VotingRegressor(
                    [("lin", linear_model.LinearRegression()), ("ridge", linear_model.Ridge())]
                ),
                x,
                y_reg,
            ),
        ),
        (
            "stacking_classifier",
            fit(
                ensemble.StackingClassifier(
                    [("tree", tree.DecisionTreeClassifier(max_depth=2)), ("svc", svm.LinearSVC())],
                    final_estimator=lr(),
                    cv=2,
                ),
                x,
                y_bin,
            ),
        ),
        (
            "stacking_regressor",
            fit(
                ensemble.StackingRegressor(
                    [
                        ("ridge", linear_model.Ridge()),
                        ("knn", neighbors.KNeighborsRegressor(n_neighbors=3)),
                    ],
                    cv=2,
                ),
                x,
                y_reg,
            ),
        ),
        ("isolation_forest", fit(ensemble.IsolationForest(n_estimators=3, random_state=0), x)),
        (
            "linear_discriminant_analysis",
            fit(discriminant_analysis.LinearDiscriminantAnalysis(), x, y_multi),
        ),
        # naive Bayes
        ("gaussian_nb", fit(naive_bayes.GaussianNB(), x, y_multi)),
        ("multinomial_nb", fit(naive_bayes.MultinomialNB(), x_pos, y_bin)),
        ("bernoulli_nb", fit(naive_bayes.BernoulliNB(), x, y_bin)),
        # clustering and mixtures
        ("kmeans", fit(cluster.KMeans(n_clusters=2, n_init=1, random_state=0), x)),
        (
            "minibatch_kmeans",
            fit(cluster.MiniBatchKMeans(n_clusters=2, n_init=1, batch_size=8, random_state=0), x),
        ),
        ("dbscan", fit(cluster.DBSCAN(eps=1.0), x)),
        ("gaussian_mixture", fit(mixture.GaussianMixture(n_components=2, random_state=0), x)),
        # decomposition
        ("pca", fit(decomposition.PCA(n_components=2), x)),
        (
            "truncated_svd_sparse",
            fit(decomposition.TruncatedSVD(n_components=2, random_state=0), x_sparse),
        ),
        ("nmf", fit(decomposition.NMF(n_components=2, max_iter=50, random_state=0), x_pos)),
        # preprocessing
        ("standard_scaler", fit(preprocessing.StandardScaler(), x)),
        ("minmax_scaler", fit(preprocessing.MinMaxScaler(), x)),
        ("robust_scaler", fit(preprocessing.RobustScaler(), x)),
        ("function_transformer_log1p", fit(preprocessing.FunctionTransformer(np.log1p), x_pos)),
        (
            "function_transformer_log_exp",
            fit(preprocessing.FunctionTransformer(np.log, inverse_func=np.exp), x_pos + 1.0),
        ),
        (
            "one_hot_encoder_sparse",
            fit(preprocessing.OneHotEncoder(handle_unknown="ignore"), frame[["colour", "city"]]),
        ),
        (
            "one_hot_encoder_dense",
            fit(preprocessing.OneHotEncoder(sparse_output=False), y_str.reshape(-1, 1)),
        ),
        ("ordinal_encoder", fit(preprocessing.OrdinalEncoder(), frame[["colour", "city"]])),
        ("label_encoder", fit(preprocessing.LabelEncoder(), y_str)),
        ("polynomial_features", fit(preprocessing.PolynomialFeatures(degree=2), x)),
        (
            "quantile_transformer",
            fit(preprocessing.QuantileTransformer(n_quantiles=10), x),
        ),
        ("power_transformer", fit(preprocessing.PowerTransformer(), x)),
        (
            "kbins_discretizer",
            fit(preprocessing.KBinsDiscretizer(n_bins=3, encode="ordinal"), x),
        ),
        (
            "select_k_best",
            fit(feature_selection.SelectKBest(feature_selection.f_classif, k=2), x, y_bin),
        ),
        (
            "select_k_best_regression",
            fit(feature_selection.SelectKBest(feature_selection.f_regression, k=2), x, y_reg),
        ),
        ("variance_threshold", fit(feature_selection.VarianceThreshold(), x)),
        ("simple_imputer", fit(impute.SimpleImputer(strategy="median"), x_nan)),
        ("knn_imputer", fit(impute.KNNImputer(n_neighbors=2), x_nan)),
        # text
        ("count_vectorizer", fit(feature_extraction.text.CountVectorizer(), texts)),
        (
            "tfidf_vectorizer",
            fit(feature_extraction.text.TfidfVectorizer(ngram_range=(1, 2)), texts),
        ),
        (
            "tfidf_pipeline",
            fit(
                pipeline.make_pipeline(
                    feature_extraction.text.TfidfVectorizer(), naive_bayes.MultinomialNB()
                ),
                texts,
                y_text,
            ),
        ),
        # neural networks
        (
            "mlp_classifier",
            fit(
                neural_network.MLPClassifier(hidden_layer_sizes=(5,), max_iter=30, random_state=0),
                x,
                y_multi,
            ),
        ),
        (
            "mlp_regressor",
            fit(
                neural_network.MLPRegressor(hidden_layer_sizes=(5,), max_iter=30, random_state=0),
                x,
                y_reg,
            ),
        ),
        # composition and model selection
        (
            "column_transformer_pipeline_dataframe",
            fit(
                pipeline.Pipeline(
                    [
                        (
                            "features",
                            compose.ColumnTransformer(
                                [
                                    ("num", preprocessing.StandardScaler(), ["age", "income"]),
                                    (
                                        "cat",
                                        preprocessing.OneHotEncoder(handle_unknown="ignore"),
                                        ["colour", "city"],
                                    ),
                                ]
                            ),
                        ),
                        ("model", lr()),
                    ]
                ),
                frame,
                y_str,
            ),
        ),
        (
            "make_pipeline",
            fit(pipeline.make_pipeline(preprocessing.StandardScaler(), svm.SVC()), x, y_bin),
        ),
        (
            "feature_union",
            fit(
                pipeline.FeatureUnion(
                    [
                        ("pca", decomposition.PCA(n_components=1)),
                        ("scale", preprocessing.MinMaxScaler()),
                    ]
                ),
                x,
            ),
        ),
        (
            "calibrated_classifier",
            fit(calibration.CalibratedClassifierCV(svm.LinearSVC(), cv=2), x, y_bin),
        ),
        (
            "calibrated_classifier_isotonic",
            fit(calibration.CalibratedClassifierCV(lr(), method="isotonic", cv=2), x, y_bin),
        ),
        (
            "grid_search_refit",
            fit(model_selection.GridSearchCV(lr(), {"C": [0.1, 1.0]}, cv=2), x, y_bin),
        ),
        (
            "transformed_target_regressor",
            fit(
                compose.TransformedTargetRegressor(
                    linear_model.Ridge(), transformer=preprocessing.StandardScaler()
                ),
                x,
                y_reg,
            ),
        ),
        (
            "transformed_target_regressor_log1p",
            fit(
                compose.TransformedTargetRegressor(
                    linear_model.LinearRegression(), func=np.log1p, inverse_func=np.expm1
                ),
                x,
                np.abs(y_reg),
            ),
        ),
        (
            "sgd_random_state_object",
            fit(linear_model.SGDClassifier(random_state=np.random.RandomState(0)), x, y_bin),
        ),
    ]
    return models


def _plain_data() -> list[tuple[str, object]]:
    import numpy as np
    import pandas as pd  # type: ignore[import-not-found, import-untyped, unused-ignore]
    from scipy import sparse  # type: ignore[import-not-found, import-untyped, unused-ignore]

    data: list[tuple[str, object]] = []
    for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "c8", "c16"):
        data.append((f"array_{code}", np.arange(6, dtype=code).reshape(2, 3)))
    data += [
        ("array_big_endian_f8", np.arange(4, dtype=">f8")),
        ("array_fortran_order", np.asfortranarray(np.arange(6.0).reshape(2, 3))),
        ("array_bool", np.array([True, False, True])),
        ("array_unicode", np.array(["alpha", "beta", "γάμμα"])),
        ("array_bytes", np.array([b"alpha", b"beta"])),
        ("array_datetime64", np.array(["2024-01-01", "2024-06-30"], dtype="datetime64[D]")),
        ("array_timedelta64", np.array([1, 2], dtype="timedelta64[s]")),
        (
            "array_structured",
            np.array([(1, 2.5, "x")], dtype=[("id", "i4"), ("score", "f8"), ("tag", "U3")]),
        ),
        ("array_object", np.array(["a", 1, None, 2.5], dtype=object)),
        ("array_zero_dim", np.array(3.5)),
        ("numpy_scalars", [np.float64(1.5), np.int64(2), np.bool_(True), np.str_("s")]),
        ("numpy_random_state", np.random.RandomState(0)),
        ("numpy_generator", np.random.default_rng(0)),
        ("scipy_csr", sparse.csr_matrix(np.eye(3))),
        ("scipy_csc", sparse.csc_matrix(np.eye(3))),
        ("scipy_coo", sparse.coo_matrix(np.eye(3))),
        (
            "pandas_dataframe",
            pd.DataFrame(
                {
                    "x": [1.0, 2.0, 3.0],
                    "n": [1, 2, 3],
                    "s": ["a", "b", "c"],
                    "flag": [True, False, True],
                    "when": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
                    "cat": pd.Categorical(["lo", "hi", "lo"]),
                },
                index=pd.Index([10, 20, 30], name="row"),
            ),
        ),
        ("pandas_series", pd.Series([1.5, 2.5], index=["a", "b"], name="score")),
        ("pandas_series_range_index", pd.Series([1, 2, 3])),
        (
            "model_bundle_dict",
            {
                "name": "churn",
                "version": (1, 2, 0),
                "tags": {"prod", "v1"},
                "frozen": frozenset({1, 2}),
                "raw": b"\x00\x01",
                "buffer": bytearray(b"xy"),
                "complex": 1 + 2j,
                "window": slice(1, 5, 2),
                "ids": range(3),
                "ordered": OrderedDict([("a", 1)]),
                "groups": defaultdict(list, {"a": [1]}),
                "trained_on": date(2024, 1, 1),
                "trained_at": datetime(2024, 1, 1, 12, tzinfo=UTC),
                "duration": timedelta(seconds=5),
                "nothing": None,
                "ratio": float("nan"),
            },
        ),
    ]
    return data


def dump_styles() -> list[tuple[str, DumpFunction]]:
    """Every common way to write a model: `(style name, write(obj, path))`.

    pickle protocols 0-5; joblib raw (its default protocol, 2 and 4), with zlib, gzip, bz2, xz
    and lzma compression and `compress=True`; `numpy.save` of a one-element object array
    (`allow_pickle=True`). Needs numpy and joblib. Two styles depend on optional packages,
    each guarded by a plain import check here: joblib's lz4 compression appears only when
    `lz4` imports, and `skops.io.dump` only when `skops` imports (a skops file is a zip of
    JSON and `.npy` members, not a pickle).
    """
    import joblib  # type: ignore[import-not-found, import-untyped, unused-ignore]
    import numpy as np

    def pickle_dump(protocol: int) -> DumpFunction:
        def dump(obj: object, path: Path) -> None:
            with path.open("wb") as handle:
                pickle.dump(obj, handle, protocol=protocol)

        return dump

    def joblib_dump(compress: object = 0, protocol: int | None = None) -> DumpFunction:
        def dump(obj: object, path: Path) -> None:
            joblib.dump(obj, path, compress=compress, protocol=protocol)

        return dump

    def numpy_save(obj: object, path: Path) -> None:
        holder = np.empty(1, dtype=object)
        holder[0] = obj
        with path.open("wb") as handle:  # a handle: numpy.save would append ".npy" to a path
            np.save(handle, holder, allow_pickle=True)

    styles: list[tuple[str, DumpFunction]] = [
        (f"pickle_protocol_{protocol}", pickle_dump(protocol)) for protocol in range(6)
    ]
    styles += [
        ("joblib", joblib_dump()),
        ("joblib_zlib_3", joblib_dump(3)),
        ("joblib_gzip_3", joblib_dump(("gzip", 3))),
        ("joblib_bz2_3", joblib_dump(("bz2", 3))),
        ("joblib_xz_3", joblib_dump(("xz", 3))),
        ("joblib_lzma_3", joblib_dump(("lzma", 3))),
        ("joblib_compress_true", joblib_dump(True)),
        ("joblib_protocol_2", joblib_dump(protocol=2)),
        ("joblib_protocol_4", joblib_dump(protocol=4)),
        ("numpy_save_object_array", numpy_save),
    ]

    try:
        import lz4.frame  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        pass
    else:
        styles.append(("joblib_lz4_3", joblib_dump(("lz4", 3))))

    try:
        import skops.io  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        pass
    else:

        def skops_dump(obj: object, path: Path) -> None:
            skops.io.dump(obj, path)

        styles.append(("skops", skops_dump))
    return styles
