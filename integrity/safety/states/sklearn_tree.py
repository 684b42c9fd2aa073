"""scikit-learn's decision trees: the node arrays its Cython code walks without checks.

`sklearn.tree._tree.Tree.__setstate__` copies the node array it is given and
trusts it: `predict` follows `left_child`/`right_child` and reads
`X[i, feature]` with bounds checks off, `decision_path` writes
`1 + max_depth` entries per sample, `compute_feature_importances` walks
`node_count` nodes. A child index outside the nodes, a feature past the
columns, a `max_depth` below the real depth or a negative `node_count` reads or
writes out of bounds. The same holds for HistGradientBoosting's
`TreePredictor` nodes.

A tree is checked, not refused (tree ensembles are among the most common
models): every split node's children come after it and within the nodes (so
every walk ends), leaves are marked as scikit-learn marks them, features are
below the tree's `n_features`, `max_depth` is at least the deepest node's
depth, `node_count` is the number of nodes, and the value array has the shape
scikit-learn derives. The estimators holding trees are checked to feed them
the number of columns their features assume: a tree estimator validates X
against its `n_features_in_`, which must be its tree's `n_features`; an
ensemble that calls its trees without that validation (random forests, extra
trees, isolation forests, gradient boosting, histogram gradient boosting) must
hold trees made for its own `n_features_in_`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from integrity.safety.states import UnsafeState, on_build, on_call
from integrity.safety.states.library_arrays import (
    array,
    ints,
    keep,
    made_class,
    no_keywords,
    plain_int,
    state_dict,
)
from integrity.safety.symbols import ArrayValue, Global, Obj, SDict, SList

TREE = Global("sklearn.tree._tree", "Tree")
TREE_LEAF = -1  # scikit-learn's child index of a leaf
TREE_UNDEFINED = -2  # scikit-learn's feature of a leaf

_TREES = "sklearn.tree._classes"
TREE_ESTIMATORS = {
    Global(_TREES, name)
    for name in (
        "DecisionTreeClassifier",
        "DecisionTreeRegressor",
        "ExtraTreeClassifier",
        "ExtraTreeRegressor",
    )
}
_FOREST = "sklearn.ensemble._forest"
FORESTS = [
    f"{_FOREST}:{name}"
    for name in (
        "RandomForestClassifier",
        "RandomForestRegressor",
        "ExtraTreesClassifier",
        "ExtraTreesRegressor",
    )
]
_HGB = "sklearn.ensemble._hist_gradient_boosting"
TREE_PREDICTOR = Global(f"{_HGB}.predictor", "TreePredictor")
BIN_MAPPER = Global(f"{_HGB}.binning", "_BinMapper")


@on_call("sklearn.tree._tree:Tree")
def tree_call(made: Obj) -> Obj:
    no_keywords(made)
    # Tree(n_features, n_classes, n_outputs): __cinit__ copies n_outputs class counts.
    if len(made.args) != 3:
        raise UnsafeState("Tree is made with (n_features, n_classes, n_outputs)")
    n_features, n_classes, n_outputs = made.args
    plain_int(n_features, "Tree n_features")
    plain_int(n_outputs, "Tree n_outputs", 1)
    classes = array(n_classes, "Tree n_classes", ndim=1)
    counts = ints(classes, "Tree n_classes")
    if len(counts) != n_outputs:
        raise UnsafeState("Tree n_classes does not hold one class count per output")
    if min(counts) < 1:
        raise UnsafeState("Tree n_classes holds a count below 1")
    return made


def _tree_args(target: Obj) -> tuple[int, Sequence[int], int]:
    if made_class(target) != TREE or target.callable != TREE or len(target.args) != 3:
        raise UnsafeState("Tree made without its constructor arguments")
    n_features, n_classes, n_outputs = target.args
    return n_features, ints(n_classes, "Tree n_classes"), n_outputs


@on_build("sklearn.tree._tree:Tree")
def tree_build(target: Obj, state: Any) -> Obj:
    n_features, n_classes, n_outputs = _tree_args(target)
    state = state_dict(state, "Tree", {"max_depth", "node_count", "nodes", "values"})
    nodes = array(state.get("nodes"), "Tree nodes", ndim=1)
    count = len(nodes.shape) and nodes.shape[0]
    if plain_int(state.get("node_count"), "Tree node_count") != count:
        raise UnsafeState("Tree node_count is not the number of nodes")
    depth = _walk_nodes(
        ints(nodes, "Tree nodes", "left_child"),
        ints(nodes, "Tree nodes", "right_child"),
        ints(nodes, "Tree nodes", "feature"),
        n_features,
        "Tree",
    )
    if plain_int(state.get("max_depth"), "Tree max_depth") < depth:
        raise UnsafeState(
            f"Tree max_depth is below the depth of its nodes ({depth}): decision_path "
            "writes past the buffer it sizes by max_depth"
        )
    values = array(state.get("values"), "Tree values")
    if values.shape != (count, n_outputs, max(n_classes)):
        raise UnsafeState("Tree values do not have the shape (nodes, outputs, classes)")
    return keep(target, state)


def _walk_nodes(
    left: Sequence[int], right: Sequence[int], feature: Sequence[int], n_features: int, what: str
) -> int:
    """Check a node array as scikit-learn writes it (children after their parent, within
    the nodes; leaves with both children -1) and return the deepest node's depth."""
    count = len(left)
    depth = [0] * count
    # One pass, no calls per node: forests hold millions of nodes.
    for i, lo, hi, f in zip(range(count), left, right, feature, strict=True):
        if lo == TREE_LEAF and hi == TREE_LEAF:
            continue
        if lo <= i or hi <= i or lo >= count or hi >= count:
            raise UnsafeState(
                f"{what} node {i} has a child outside the nodes after it: out-of-bounds "
                "read (or an endless walk) when it predicts"
            )
        if f < 0 or f >= n_features:
            raise UnsafeState(
                f"{what} node {i} splits on feature {f}, not below n_features={n_features}: "
                "out-of-bounds read when it predicts"
            )
        below = depth[i] + 1
        if depth[lo] < below:
            depth[lo] = below
        if depth[hi] < below:
            depth[hi] = below
    return max(depth, default=0)


# ---------------------------------------------------------------- estimators holding trees


def _features_in(state: SDict, what: str) -> int:
    return plain_int(state.get("n_features_in_"), f"{what} n_features_in_")


def _estimator_state(value: Any) -> SDict | None:
    return value.state if isinstance(value, Obj) and isinstance(value.state, SDict) else None


@on_build(*(f"{cls.module}:{cls.name}" for cls in TREE_ESTIMATORS))
def tree_estimator_build(target: Obj, state: Any) -> Obj:
    # predict validates X against n_features_in_ (none without it), then walks tree_.
    if isinstance(state, SDict) and "tree_" in state.items:
        tree = state.get("tree_")
        if made_class(tree) != TREE or not isinstance(tree, Obj) or not tree.args:
            raise UnsafeState("a tree estimator's tree_ is not a Tree")
        if _features_in(state, "tree estimator") != tree.args[0]:
            raise UnsafeState(
                "a tree estimator's n_features_in_ is not its tree's n_features: X is "
                "validated for one and read for the other"
            )
    return keep(target, state)


def _sub_estimators(value: Any, what: str) -> list[Any]:
    if isinstance(value, SList):
        return value.items
    if isinstance(value, ArrayValue) and value.objects is not None:
        objects = value.objects
        return list(objects.items if isinstance(objects, SList) else objects)
    raise UnsafeState(f"{what} estimators_ is not a list or object array the scanner follows")


def _tree_features(estimator: Any, what: str) -> int:
    """The column count a fitted tree estimator's tree assumes."""
    state = _estimator_state(estimator)
    if made_class(estimator) not in TREE_ESTIMATORS or state is None:
        raise UnsafeState(f"{what} holds an estimator that is not a fitted decision tree")
    return _features_in(state, f"{what} tree")


@on_build(*FORESTS, "sklearn.ensemble._gb:GradientBoostingClassifier")
@on_build("sklearn.ensemble._gb:GradientBoostingRegressor")
def ensemble_build(target: Obj, state: Any) -> Obj:
    # Their predict validates X once, then calls every tree without validation.
    if isinstance(state, SDict) and "estimators_" in state.items:
        n_features = _features_in(state, "ensemble")
        for estimator in _sub_estimators(state.get("estimators_"), "ensemble"):
            if _tree_features(estimator, "an ensemble") != n_features:
                raise UnsafeState(
                    "an ensemble holds a tree made for a different number of features: "
                    "it calls the tree without validating X"
                )
    return keep(target, state)


@on_build("sklearn.ensemble._iforest:IsolationForest")
def isolation_forest_build(target: Obj, state: Any) -> Obj:
    # Each tree reads X[:, estimators_features_[i]] without validating it.
    if isinstance(state, SDict) and "estimators_" in state.items:
        n_features = _features_in(state, "IsolationForest")
        trees = _sub_estimators(state.get("estimators_"), "IsolationForest")
        subsets = state.get("estimators_features_")
        if not isinstance(subsets, SList) or len(subsets.items) != len(trees):
            raise UnsafeState("IsolationForest estimators_features_ is not one array per tree")
        for tree, subset in zip(trees, subsets.items, strict=True):
            columns = array(subset, "IsolationForest estimators_features_", ndim=1).shape[0]
            if not _tree_features(tree, "IsolationForest") <= columns <= n_features:
                raise UnsafeState(
                    "an IsolationForest tree is made for more features than it is given"
                )
    return keep(target, state)


# ---------------------------------------------------------------- histogram gradient boosting


@on_build(f"{TREE_PREDICTOR.module}:{TREE_PREDICTOR.name}")
def tree_predictor_build(target: Obj, state: Any) -> Obj:
    # predict walks nodes[left] / nodes[right] and reads X[row, feature_idx] unchecked.
    state = state_dict(
        state, "TreePredictor", {"nodes", "binned_left_cat_bitsets", "raw_left_cat_bitsets"}
    )
    nodes = array(state.get("nodes"), "TreePredictor nodes", ndim=1)
    is_leaf = ints(nodes, "TreePredictor nodes", "is_leaf")
    left = ints(nodes, "TreePredictor nodes", "left")
    right = ints(nodes, "TreePredictor nodes", "right")
    # Leaves' children are 0 in scikit-learn's records: only split nodes are walked.
    leaf = [TREE_LEAF] * len(left)
    _walk_nodes(
        [leaf[i] if is_leaf[i] else v for i, v in enumerate(left)],
        [leaf[i] if is_leaf[i] else v for i, v in enumerate(right)],
        [0] * len(left),  # features are checked against the estimator's columns
        1,
        "TreePredictor",
    )
    for name in ("binned_left_cat_bitsets", "raw_left_cat_bitsets"):
        bitsets = array(state.get(name), f"TreePredictor {name}", ndim=2)
        if bitsets.shape[1] != 8:
            raise UnsafeState(f"TreePredictor {name} rows are not 8 words")
        categorical = ints(nodes, "TreePredictor nodes", "is_categorical")
        bitset_index = ints(nodes, "TreePredictor nodes", "bitset_idx")
        for i, flag in enumerate(categorical):
            if flag and not is_leaf[i] and not 0 <= bitset_index[i] < bitsets.shape[0]:
                raise UnsafeState("TreePredictor node reads a category bitset it does not hold")
    return keep(target, state)


def _predictor_features(predictor: Any) -> tuple[int, set[int]]:
    """(highest split feature + 1, the features of categorical splits) of a TreePredictor."""
    state = _estimator_state(predictor)
    if made_class(predictor) != TREE_PREDICTOR or state is None:
        raise UnsafeState("HistGradientBoosting holds a predictor that is not a TreePredictor")
    nodes = array(state.get("nodes"), "TreePredictor nodes", ndim=1)
    is_leaf = ints(nodes, "TreePredictor nodes", "is_leaf")
    feature = ints(nodes, "TreePredictor nodes", "feature_idx")
    categorical = ints(nodes, "TreePredictor nodes", "is_categorical")
    splits = [i for i, flag in enumerate(is_leaf) if not flag]
    if any(feature[i] < 0 for i in splits):
        raise UnsafeState("TreePredictor splits on a negative feature")
    columns = max((feature[i] + 1 for i in splits), default=0)
    return columns, {feature[i] for i in splits if categorical[i]}


def _categorical_features(binner: Any) -> set[int]:
    """The features the binner marks categorical: predict looks their known categories
    up through a map sized by the binner's features."""
    state = _estimator_state(binner)
    if made_class(binner) != BIN_MAPPER or state is None:
        raise UnsafeState("HistGradientBoosting _bin_mapper is not a fitted _BinMapper")
    flags = array(state.get("is_categorical_"), "_BinMapper is_categorical_", ndim=1)
    return {f for f, flag in enumerate(ints(flags, "_BinMapper is_categorical_")) if flag}


@on_build(f"{_HGB}.gradient_boosting:HistGradientBoostingClassifier")
@on_build(f"{_HGB}.gradient_boosting:HistGradientBoostingRegressor")
def hist_gradient_boosting_build(target: Obj, state: Any) -> Obj:
    if isinstance(state, SDict) and "_predictors" in state.items:
        n_features = _features_in(state, "HistGradientBoosting")
        stages = state.get("_predictors")
        if not isinstance(stages, SList):
            raise UnsafeState("HistGradientBoosting _predictors is not a list")
        categorical: set[int] = set()
        for stage in stages.items:
            if not isinstance(stage, SList):
                raise UnsafeState("HistGradientBoosting _predictors is not a list of lists")
            for predictor in stage.items:
                columns, splits = _predictor_features(predictor)
                if columns > n_features:
                    raise UnsafeState(
                        "a HistGradientBoosting tree splits on a feature past n_features_in_: "
                        "out-of-bounds read when it predicts"
                    )
                categorical |= splits
        if categorical and not categorical <= _categorical_features(state.get("_bin_mapper")):
            raise UnsafeState(
                "a HistGradientBoosting tree splits a feature as categorical that its binner "
                "does not know as categorical: out-of-bounds read of the category bitsets"
            )
    return keep(target, state)
