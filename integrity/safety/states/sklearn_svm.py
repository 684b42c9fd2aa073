"""scikit-learn's SVC and SVR: the arrays libsvm's C code is handed at every predict.

Each predict rebuilds a libsvm model from the estimator's arrays (`set_model`):
`len(support_)` support vectors are read from `support_vectors_`, one
coefficient row per class but one from `_dual_coef_`, the per-class counts
`_n_support` decide which vectors each class owns, one intercept (and
probability pair) per class pair. scikit-learn checks one of these
(`_n_support` against `support_vectors_`, CVE-2020-28975), and only when
`support_vectors_` is not empty: a zero-width `support_vectors_` with a huge
`_n_support` still reads out of bounds. The validator checks every shape
against the others, as libsvm will use them.
"""

from __future__ import annotations

from typing import Any

from integrity.safety.states import UnsafeState, on_build
from integrity.safety.states.library_arrays import array, in_range, ints, keep, plain_int
from integrity.safety.symbols import ArrayValue, SDict

_FITTED = ("support_", "support_vectors_", "_n_support", "_dual_coef_", "_intercept_")


def _shape(value: Any, what: str) -> tuple[int, ...]:
    """An ndarray's shape, or a sparse matrix's (SVMs fitted on sparse X keep a CSR)."""
    if isinstance(value, ArrayValue):
        return array(value, what).shape
    state = getattr(value, "state", None)
    shape = state.get("_shape") if isinstance(state, SDict) else None
    if not isinstance(shape, tuple) or not all(type(n) is int for n in shape):
        raise UnsafeState(f"{what} is not an array or sparse matrix the scanner follows")
    return shape


@on_build("sklearn.svm._classes:SVC", "sklearn.svm._classes:SVR")
def svm_build(target: Any, state: Any) -> Any:
    if not isinstance(state, SDict) or not any(key in state.items for key in _FITTED):
        return keep(target, state)  # not fitted: predict refuses before libsvm
    regression = target.callable.name == "SVR"
    support = array(state.get("support_"), "SVM support_", ndim=1)
    count = support.shape[0]
    n_features = plain_int(state.get("n_features_in_"), "SVM n_features_in_")
    vectors = _shape(state.get("support_vectors_"), "SVM support_vectors_")
    if state.get("kernel") == "precomputed":
        # The kernel row of a sample is X itself: libsvm reads X[i, support_[k]].
        in_range(ints(support, "SVM support_"), 0, n_features, "SVM support_")
    elif vectors != (count, n_features):
        raise UnsafeState("SVM support_vectors_ are not one row of n_features_in_ per support")
    per_class = ints(array(state.get("_n_support"), "SVM _n_support", ndim=1), "SVM _n_support")
    classes = len(per_class)
    if regression:
        if list(per_class) != [count, count]:
            raise UnsafeState("SVR _n_support is not what scikit-learn writes")
    else:
        labels = array(state.get("classes_"), "SVC classes_", ndim=1)
        if classes != labels.shape[0] or classes < 2 or min(per_class) < 0:
            raise UnsafeState("SVC _n_support is not one count per class")
        if sum(per_class) != count:
            raise UnsafeState(
                "SVC _n_support does not add up to its support vectors: libsvm reads past them"
            )
    pairs = classes * (classes - 1) // 2
    if _shape(state.get("_dual_coef_"), "SVM _dual_coef_") != (classes - 1, count):
        raise UnsafeState("SVM _dual_coef_ is not one row per class but one, one column per vector")
    if array(state.get("_intercept_"), "SVM _intercept_").shape != (pairs,):
        raise UnsafeState("SVM _intercept_ is not one per pair of classes")
    for name in ("_probA", "_probB"):
        if array(state.get(name), f"SVM {name}").shape not in ((0,), (pairs,)):
            raise UnsafeState(f"SVM {name} is not one per pair of classes")
    return keep(target, state)
