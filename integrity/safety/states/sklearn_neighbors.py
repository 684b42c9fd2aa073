"""scikit-learn's KDTree and BallTree, and the distance metrics they hold.

`BinaryTree.__setstate__` takes its arrays on trust: a query walks node
`2i+1`/`2i+2` while a node is not a leaf, reads `idx_array[idx_start:idx_end]`
of each leaf and then `data[idx_array[k]]`, and sizes buffers by `n_nodes`.
An index outside the data, a node range past `idx_array`, or bounds for fewer
nodes read out of bounds (a crash on the first query). Cython checks the
arrays' types; the validator checks their shapes and the integers in them.

scikit-learn writes these objects with `newObj(cls)` (a bare `cls.__new__`)
and a BUILD state: `newObj` may only make the classes its module writes, and
BUILD on its product is checked as for that class.
"""

from __future__ import annotations

from typing import Any

from integrity.safety.states import UnsafeState, on_build, on_call
from integrity.safety.states.library_arrays import (
    array,
    in_range,
    ints,
    keep,
    made_class,
    no_keywords,
    plain_int,
    plain_number,
)
from integrity.safety.states.stdlib_reconstructor import build_as_made_class
from integrity.safety.symbols import Global, Obj

KD_TREE = Global("sklearn.neighbors._kd_tree", "KDTree")
BALL_TREE = Global("sklearn.neighbors._ball_tree", "BallTree")
_METRICS = "sklearn.metrics._dist_metrics"
METRICS = {Global(_METRICS, "EuclideanDistance64"), Global(_METRICS, "EuclideanDistance")}
# What each module's newObj is written for.
NEW_OBJ = {
    Global(KD_TREE.module, "newObj"): {KD_TREE},
    Global(BALL_TREE.module, "newObj"): {BALL_TREE},
    Global(_METRICS, "newObj"): METRICS,
}


@on_call(*(f"{g.module}:{g.name}" for g in NEW_OBJ))
def new_obj_call(made: Obj) -> Obj:
    no_keywords(made)
    if len(made.args) != 1 or made.args[0] not in NEW_OBJ[made.callable]:
        raise UnsafeState("newObj makes only the classes scikit-learn writes it for")
    return made


on_build(*(f"{g.module}:{g.name}" for g in NEW_OBJ))(build_as_made_class)


@on_build(f"{KD_TREE.module}:KDTree", f"{BALL_TREE.module}:BallTree")
def binary_tree_build(target: Obj, state: Any) -> Obj:
    what = target.callable.name
    # (data, idx_array, node_data, node_bounds, leaf_size, n_levels, n_nodes,
    #  n_trims, n_leaves, n_splits, n_calls, dist_metric[, sample_weight])
    if not isinstance(state, tuple) or len(state) not in (12, 13):
        raise UnsafeState(f"{what} state is not the tuple scikit-learn writes")
    data = array(state[0], f"{what} data", ndim=2)
    n_samples, n_features = data.shape
    index = array(state[1], f"{what} idx_array", ndim=1)
    if index.shape[0] != n_samples:
        raise UnsafeState(f"{what} idx_array is not one index per sample")
    in_range(ints(index, f"{what} idx_array"), 0, n_samples, f"{what} idx_array")
    nodes = array(state[2], f"{what} node_data", ndim=1)
    n_nodes = nodes.shape[0]
    if plain_int(state[6], f"{what} n_nodes") != n_nodes:
        raise UnsafeState(f"{what} n_nodes is not the number of nodes")
    plain_int(state[5], f"{what} n_levels")
    plain_int(state[4], f"{what} leaf_size", 1)
    for counter in state[7:11]:
        plain_int(counter, f"{what} counters")
    starts = ints(nodes, f"{what} node_data", "idx_start")
    ends = ints(nodes, f"{what} node_data", "idx_end")
    leaves = ints(nodes, f"{what} node_data", "is_leaf")
    for i in range(n_nodes):
        if not 0 <= starts[i] <= ends[i] <= n_samples:
            raise UnsafeState(f"{what} node {i} covers points outside idx_array")
        if not leaves[i] and 2 * i + 2 >= n_nodes:
            raise UnsafeState(f"{what} node {i} is not a leaf but has no children")
    bounds = array(state[3], f"{what} node_bounds", ndim=3)
    if bounds.shape != ((2 if target.callable == KD_TREE else 1), n_nodes, n_features):
        raise UnsafeState(f"{what} node_bounds do not match its nodes and features")
    if made_class(state[11]) not in METRICS:
        raise UnsafeState(f"{what} distance metric is not one the allow-list holds")
    if len(state) == 13 and state[12] is not None:
        weights = array(state[12], f"{what} sample_weight", ndim=1)
        if weights.shape[0] != n_samples:
            raise UnsafeState(f"{what} sample_weight is not one weight per sample")
    return keep(target, state)


@on_build(*(f"{g.module}:{g.name}" for g in METRICS))
def metric_build(target: Obj, state: Any) -> Obj:
    # (p, vec, mat): Euclidean reads none of them but p; their shapes are still typed.
    if not isinstance(state, tuple) or len(state) != 3:
        raise UnsafeState("distance metric state is not (p, vec, mat)")
    plain_number(state[0], "distance metric p")
    array(state[1], "distance metric vec", ndim=1)
    array(state[2], "distance metric mat", ndim=2)
    return keep(target, state)
