"""Standard-library data types pipelines carry: the arguments their constructors take.

These types run nothing foreign when built, but some take arguments the
standard library itself never writes into a pickle and that cost time or memory
out of proportion to the file: `Fraction("1e999999999")` computes 10**999999999,
`deque(range(10**12))` and `Counter(range(10**12))` iterate a lazy range, a
`Decimal` with a huge exponent is a bomb for the first `int()` or `Fraction`
made of it. Each validator accepts the arguments `__reduce__` writes (with
sizes bounded) and refuses the rest.
"""

from __future__ import annotations

import re
from typing import Any

from integrity.safety.states import UnsafeState, on_build, on_call
from integrity.safety.states.library_arrays import keep, no_keywords
from integrity.safety.symbols import Obj, SDict, SList

# Bounds on numbers given as text or as ints: far beyond any value a model carries,
# far below what costs noticeable time (10**10_000 is a 33,000-bit int).
MAX_EXPONENT = 10_000
MAX_DIGITS = 10_000
MAX_INT_BITS = 1 << 16
_MAX_SSIZE = (1 << 63) - 1

# What str(Decimal) writes (finite values, infinities and NaNs with a payload).
_DECIMAL_TEXT = re.compile(
    r"[+-]?(?:(?P<digits>\d+(?:\.\d*)?|\.\d+)(?:[eE](?P<exp>[+-]?\d+))?"
    r"|Inf(?:inity)?|s?NaN(?P<payload>\d*))",
    re.IGNORECASE,
)
# What str(Fraction) writes ("3/4", "-2"), as Python before 3.12 pickled it, and
# the decimal forms Fraction accepts.
_FRACTION_TEXT = re.compile(
    r"[+-]?(?:(?P<num>\d+)/(?P<den>\d+)"
    r"|(?P<digits>\d+(?:\.\d*)?|\.\d+)(?:[eE](?P<exp>[+-]?\d+))?)"
)


def _number_text(value: Any, pattern: re.Pattern[str], what: str) -> None:
    if type(value) is not str:
        raise UnsafeState(f"{what} is built from a {type(value).__name__}, not text")
    match = pattern.fullmatch(value)
    if match is None:
        raise UnsafeState(f"{what} text is not a number Python writes")
    digits = len(value) - len(match.group("exp") or "")
    if digits > MAX_DIGITS:
        raise UnsafeState(f"{what} has more than {MAX_DIGITS} digits")
    exponent = match.group("exp")
    if exponent is not None and (len(exponent) > 7 or abs(int(exponent)) > MAX_EXPONENT):
        raise UnsafeState(
            f"{what} has an exponent beyond ±{MAX_EXPONENT}: a bomb for the first "
            "computation that makes it exact"
        )


def _small_int(value: Any, what: str) -> None:
    if type(value) is not int:
        raise UnsafeState(f"{what} is a {type(value).__name__}, not an int")
    if value.bit_length() > MAX_INT_BITS:
        raise UnsafeState(f"{what} has more than {MAX_INT_BITS} bits")


@on_call("decimal:Decimal")
def decimal_call(made: Obj) -> Obj:
    no_keywords(made)
    # Decimal.__reduce__ writes (str(self),).
    if len(made.args) != 1:
        raise UnsafeState("Decimal is built from one text argument")
    _number_text(made.args[0], _DECIMAL_TEXT, "Decimal")
    return made


@on_call("fractions:Fraction")
def fraction_call(made: Obj) -> Obj:
    no_keywords(made)
    # Python 3 writes (numerator, denominator); Python 2 wrote (str(self),).
    args = made.args
    if len(args) == 1 and type(args[0]) is str:
        _number_text(args[0], _FRACTION_TEXT, "Fraction")
    elif len(args) in (1, 2):
        for arg in args:
            _small_int(arg, "a Fraction's numerator or denominator")
    else:
        raise UnsafeState("Fraction is built from a text or one or two ints")
    return made


@on_call("collections:Counter")
def counter_call(made: Obj) -> Obj:
    no_keywords(made)
    # Counter.__reduce__ writes (dict(self),); any other iterable is counted item by item.
    if made.args and (len(made.args) != 1 or not isinstance(made.args[0], SDict)):
        raise UnsafeState("Counter is built from a dict (its counts), nothing else")
    return made


@on_call("collections:deque")
def deque_call(made: Obj) -> Obj:
    no_keywords(made)
    # deque.__reduce__ writes () or ((), maxlen) and appends the items; an
    # iterable argument other than a list or tuple (a huge range) would be walked.
    args = made.args
    if len(args) > 2 or (args and not isinstance(args[0], SList | tuple)):
        raise UnsafeState("deque is built from a list or tuple and a maximum length")
    if len(args) == 2:
        maxlen = args[1]
        if maxlen is not None and not (type(maxlen) is int and 0 <= maxlen <= _MAX_SSIZE):
            raise UnsafeState("deque maximum length is not None or a size")
    return made


@on_call("types:SimpleNamespace")
def namespace_call(made: Obj) -> Obj:
    no_keywords(made)
    # Written as SimpleNamespace() plus its attributes as state; from Python 3.13
    # a positional argument is a mapping or iterable it walks.
    if made.args:
        raise UnsafeState("SimpleNamespace is built without arguments (its state follows)")
    return made


@on_call("pathlib:PurePosixPath", "pathlib:PureWindowsPath")
def pure_path_call(made: Obj) -> Obj:
    no_keywords(made)
    # PurePath.__reduce__ writes the path's parts; anything but text is asked for
    # its __fspath__.
    if not all(type(part) is str for part in made.args):
        raise UnsafeState("a pure path is built from text parts only")
    return made


@on_call("builtins:int", "builtins:float", "builtins:bool")
def number_type_call(made: Obj) -> Obj:
    no_keywords(made)
    # The types themselves are what pipelines carry (a dtype parameter); called,
    # they must convert plain values, not ask an object for its number.
    if len(made.args) > 2 or not all(
        type(arg) in (str, bytes, int, float, bool) for arg in made.args
    ):
        raise UnsafeState("a number type called on something but plain values")
    for arg in made.args:
        if type(arg) is int:
            _small_int(arg, "a number type's argument")
    return made


@on_build("uuid:UUID")
def uuid_build(target: Obj, state: Any) -> Obj:
    # UUID.__getstate__ writes {"int": n} and, when known, {"is_safe": SafeUUID value}.
    if not isinstance(state, SDict) or state.other or not set(state.items) <= {"int", "is_safe"}:
        raise UnsafeState("UUID state is not the dict UUID writes")
    number = state.get("int")
    if type(number) is not int or not 0 <= number < 1 << 128:
        raise UnsafeState("UUID state's int is not a 128-bit number")
    if state.items.get("is_safe", 0) not in (0, -1, None):
        raise UnsafeState("UUID state's is_safe is not a SafeUUID value")
    return keep(target, state)
