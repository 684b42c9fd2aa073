"""What allowed globals do with the values a pickle hands them, checked before they are allowed.

Allowing a global is a claim that calling it runs nothing foreign. Many allowed
classes are C or Cython code that trusts its arguments and its state (numpy's
dtype, scikit-learn's trees, pandas' blocks, NumPy's bit generators): a crafted
value makes them read or write out of bounds. Each such class has a validator
here, run by the symbolic machine on the symbols it built:

- a call validator sees the call the pickle makes (REDUCE, NEWOBJ, INST, OBJ)
  and returns the symbol to push (the `Obj` itself, or a refined symbol);
- a build validator sees BUILD's target and state and returns the symbol that
  replaces the target on the stack.

Either raises `UnsafeState` when the value is not one the library itself
writes or cannot be checked statically; the scanner then refuses the file.
Validators are registered by the exact global they guard; the modules beside
this one hold them, one per library.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from integrity.safety.symbols import Global, Obj

CallValidator = Callable[[Obj], Any]
BuildValidator = Callable[[Obj, Any], Any]

_CALLS: dict[Global, CallValidator] = {}
_BUILDS: dict[Global, BuildValidator] = {}


class UnsafeState(Exception):
    """A value an allowed global would trust, but which is not one its library writes."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _globals(names: tuple[str, ...]) -> list[Global]:
    found = []
    for qualified in names:
        module, _, name = qualified.rpartition(":")
        if not module:
            raise ValueError(f"name {qualified!r} is not 'module:name'")
        found.append(Global(module, name))
    return found


def on_call(*names: str) -> Callable[[CallValidator], CallValidator]:
    """Register a call validator for each 'module:name'."""

    def register(fn: CallValidator) -> CallValidator:
        for target in _globals(names):
            _CALLS[target] = fn
        return fn

    return register


def on_build(*names: str) -> Callable[[BuildValidator], BuildValidator]:
    """Register a BUILD validator for each 'module:name' (the class of BUILD's target)."""

    def register(fn: BuildValidator) -> BuildValidator:
        for target in _globals(names):
            _BUILDS[target] = fn
        return fn

    return register


def checked_call(made: Obj) -> Any:
    """The symbol a call pushes, once its validator (if any) accepted it."""
    validator = _CALLS.get(made.callable)
    return made if validator is None else validator(made)


def checked_build(target: Obj, state: Any) -> Any:
    """The symbol BUILD leaves on the stack, once the validator (if any) accepted the
    state. Without a validator the state is kept on the object as it is."""
    validator = _BUILDS.get(target.callable)
    if validator is None:
        target.state = state
        return target
    return validator(target, state)


def _load_validators() -> None:
    # Imported for their registrations.
    from integrity.safety.states import (  # noqa: F401
        numpy_array,
        numpy_dtype,
        numpy_random,
        pandas_arrays,
        pandas_internals,
        scipy_sparse,
        sklearn_losses,
        sklearn_neighbors,
        sklearn_svm,
        sklearn_text,
        sklearn_tree,
        stdlib_reconstructor,
        stdlib_values,
    )


_load_validators()
