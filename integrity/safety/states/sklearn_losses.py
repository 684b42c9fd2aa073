"""scikit-learn's Cython loss objects: numbers in, nothing else.

The losses of boosting models (`sklearn._loss._loss.Cy*`) and of SGD
(`sklearn.linear_model._sgd_fast`) are Cython classes whose state is a few
C doubles; Cython converts (and type-checks) what it is given, so no crafted
value was found to corrupt memory. They are still held to what scikit-learn
writes: a class called with at most one plain number, Cython's unpickle helper
for its own class with a checksum and a tuple of plain numbers, a BUILD state
of plain numbers. Anything else is not a state scikit-learn writes.
"""

from __future__ import annotations

from typing import Any

from integrity.safety.allowlist_data import CY_LOSSES
from integrity.safety.states import UnsafeState, on_build, on_call
from integrity.safety.states.library_arrays import keep, no_keywords, plain_int, plain_number
from integrity.safety.states.stdlib_reconstructor import build_as_made_class
from integrity.safety.symbols import Global, Obj

_LOSS = "sklearn._loss._loss"
SGD_LOSSES = ["Hinge", "Log", "ModifiedHuber"]


def _numbers(values: Any, what: str) -> None:
    if not isinstance(values, tuple):
        raise UnsafeState(f"{what} is not a tuple")
    for value in values:
        plain_number(value, what)


@on_call(*(f"{_LOSS}:{name}" for name in CY_LOSSES))
@on_call(*(f"sklearn.linear_model._sgd_fast:{name}" for name in SGD_LOSSES))
def loss_call(made: Obj) -> Obj:
    no_keywords(made)
    if len(made.args) > 1:
        raise UnsafeState("a loss is made with at most one number (its parameter)")
    _numbers(made.args, "a loss's parameter")
    return made


@on_call(*(f"{_LOSS}:__pyx_unpickle_{name}" for name in CY_LOSSES))
def cython_unpickle_call(made: Obj) -> Obj:
    no_keywords(made)
    # __pyx_unpickle_X(cls, checksum, state): makes X.__new__(cls), sets the state.
    own = Global(_LOSS, made.callable.name.removeprefix("__pyx_unpickle_"))
    if len(made.args) != 3 or made.args[0] != own:
        raise UnsafeState("Cython's unpickle helper of a loss makes only its own class")
    plain_int(made.args[1], "Cython unpickle checksum")
    if made.args[2] is not None:
        _numbers(made.args[2], "a loss's state")
    return made


on_build(*(f"{_LOSS}:__pyx_unpickle_{name}" for name in CY_LOSSES))(build_as_made_class)


@on_build(*(f"{_LOSS}:{name}" for name in CY_LOSSES))
@on_build(*(f"sklearn.linear_model._sgd_fast:{name}" for name in SGD_LOSSES))
def loss_build(target: Obj, state: Any) -> Obj:
    _numbers(state, "a loss's state")
    return keep(target, state)
