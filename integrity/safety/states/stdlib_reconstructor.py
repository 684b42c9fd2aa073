"""Objects made by a factory global: BUILD is checked as for the class they make.

`copyreg._reconstructor(cls, base, state)` (protocols 0 and 1), scikit-learn's
`newObj(cls)` and Cython's `__pyx_unpickle_X(cls, checksum, state)` all return
an instance of `cls` (any allowed class that `base`, or X, can make). BUILD then
hands its state to `cls.__setstate__`, so it is checked by `cls`'s validator,
exactly as if the pickle had made the object with NEWOBJ: otherwise a factory
would be a way around every BUILD validator.
"""

from __future__ import annotations

from typing import Any

from integrity.safety.states import checked_build, on_build
from integrity.safety.symbols import Global, Obj

FACTORIES = ("copyreg:_reconstructor",)


def build_as_made_class(target: Obj, state: Any) -> Any:
    """BUILD on a factory's product, checked by the validator of the class it made.
    (A factory called on something that is not a named class fails when loaded.)"""
    made = target.args[0] if target.args else None
    if not isinstance(made, Global):
        target.state = state
        return target
    stand_in = Obj(made, (), target.state)
    built = checked_build(stand_in, state)
    target.state = stand_in.state
    return target if built is stand_in else built


on_build(*FACTORIES)(build_as_made_class)
