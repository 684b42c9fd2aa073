"""scikit-learn's text vectorizers: the column index each word is given.

`CountVectorizer.transform` writes each word's `vocabulary_` value as a
column index into a sparse matrix of `len(vocabulary_)` columns, unchecked:
a value outside the columns makes scipy's C++ code write out of bounds on the
first use of the matrix it returns (`toarray()` crashes). The vocabulary scikit-learn
writes maps its words to the columns 0..n-1, each once.
"""

from __future__ import annotations

from typing import Any

from integrity.safety.states import UnsafeState, on_build
from integrity.safety.states.library_arrays import integer, keep
from integrity.safety.symbols import Obj, SDict

_TEXT = "sklearn.feature_extraction.text"


@on_build(f"{_TEXT}:CountVectorizer", f"{_TEXT}:TfidfVectorizer")
def vectorizer_build(target: Obj, state: Any) -> Obj:
    vocabulary = state.get("vocabulary_") if isinstance(state, SDict) else None
    if vocabulary is not None:
        if not isinstance(vocabulary, SDict) or vocabulary.other:
            raise UnsafeState("a vectorizer's vocabulary_ is not a dict of words")
        # Python ints, or numpy ints once min_df, max_df or max_features pruned it.
        columns = [integer(value) for value in vocabulary.items.values()]
        known = [column for column in columns if column is not None]
        if len(known) != len(columns) or sorted(known) != list(range(len(known))):
            raise UnsafeState(
                "a vectorizer's vocabulary_ does not give its words the columns 0..n-1, each "
                "once: the matrix transform makes is written out of bounds"
            )
    return keep(target, state)
