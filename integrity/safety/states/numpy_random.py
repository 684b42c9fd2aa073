"""NumPy's random generators: the positions their C code indexes with, checked.

numpy pickles a bit generator as `numpy.random._pickle.__bit_generator_ctor`
(with the class in numpy 2, its name in numpy 1.x) and a BUILD whose state the
generator's `state` setter copies in unchecked: `MT19937`'s `pos` and
`Philox`'s `buffer_pos` become C ints the next draw indexes its key or buffer
with (out of range: an out-of-bounds read, a crash on the first draw).
`Generator` and `RandomState` are rebuilt by `__generator_ctor` and
`__randomstate_ctor`, from a bit generator (numpy 2) or from a name and a
constructor that the helper calls (numpy 1.x), with the bit generator's state
as their own BUILD; `SeedSequence` by its Cython unpickle helper.

Each state must be the dict numpy writes for that generator: exactly its keys,
arrays of its dtype and length, positions within their buffers. The ctor
helpers may only name numpy's own generators (the helper would call any class
or callable it is handed).
"""

from __future__ import annotations

from typing import Any

from integrity.safety.states import UnsafeState, on_build, on_call
from integrity.safety.symbols import ArrayValue, Global, Obj, SDict, SList

_PICKLE = "numpy.random._pickle"
BIT_GENERATOR_CTOR = Global(_PICKLE, "__bit_generator_ctor")
# numpy's table of bit generators (numpy.random._pickle.BitGenerators), by class.
_CLASSES = {
    Global("numpy.random._mt19937", "MT19937"): "MT19937",
    Global("numpy.random._pcg64", "PCG64"): "PCG64",
    Global("numpy.random._pcg64", "PCG64DXSM"): "PCG64DXSM",
    Global("numpy.random._philox", "Philox"): "Philox",
    Global("numpy.random._sfc64", "SFC64"): "SFC64",
}
_NAMES = frozenset(_CLASSES.values())
MT19937_WORDS = 624  # the key MT19937's `pos` indexes; pos == 624 means "regenerate"
PHILOX_BUFFER = 4
_UINT32_MAX = (1 << 32) - 1


def _kind_of_name(value: Any) -> str:
    """The generator a ctor argument names: a name in numpy's table, or its class."""
    if type(value) is str and value in _NAMES:
        return value
    if isinstance(value, Global) and value in _CLASSES:
        return _CLASSES[value]
    raise UnsafeState("the bit generator named is not one of numpy's")


def _kind_of_object(value: Any) -> str:
    """The generator a bit generator symbol is (made by the ctor or by its class)."""
    if isinstance(value, Obj) and not value.keywords:
        if value.callable == BIT_GENERATOR_CTOR:
            return _kind_of_name(value.args[0]) if value.args else "MT19937"
        if value.callable in _CLASSES:
            return _CLASSES[value.callable]
    raise UnsafeState("not a bit generator the scanner could follow")


def _ctor_args(made: Obj) -> str:
    """The bit generator a Generator or RandomState ctor builds on: a bit generator
    object (numpy 2), or a name and numpy's own bit generator ctor (numpy 1.x)."""
    if made.keywords or len(made.args) > 2:
        raise UnsafeState("called with arguments numpy never writes")
    if not made.args:
        return "MT19937"
    if len(made.args) == 2 and made.args[1] != BIT_GENERATOR_CTOR:
        # numpy 1.x's helper calls this callable with the name.
        raise UnsafeState("the constructor it would call is not numpy's bit generator ctor")
    first = made.args[0]
    return _kind_of_name(first) if isinstance(first, str) else _kind_of_object(first)


@on_call(f"{_PICKLE}:__bit_generator_ctor")
def bit_generator_ctor(made: Obj) -> Obj:
    if made.keywords or len(made.args) > 1:
        raise UnsafeState("called with arguments numpy never writes")
    if made.args:
        # It instantiates any class it is given: only numpy's generators.
        _kind_of_name(made.args[0])
    return made


@on_call(f"{_PICKLE}:__generator_ctor", f"{_PICKLE}:__randomstate_ctor")
def generator_ctor(made: Obj) -> Obj:
    _ctor_args(made)
    return made


def _plain(value: Any, keys: set[str], what: str) -> dict[Any, Any]:
    if not isinstance(value, SDict) or value.other or set(value.items) != keys:
        raise UnsafeState(f"{what} is not the dict numpy writes")
    return value.items


def _int(value: Any, low: int, high: int | None, what: str) -> int:
    if type(value) not in (int, bool) or value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise UnsafeState(f"{what} is not an integer in {bounds}")
    return int(value)


def _uint_array(value: Any, itemsize: int, length: int, what: str) -> None:
    dtype = value.dtype if isinstance(value, ArrayValue) and value.built else None
    if (
        dtype is None
        or (dtype.kind, dtype.itemsize) != ("u", itemsize)
        or dtype.fields is not None
        or dtype.subarray is not None
        or value.shape != (length,)
    ):
        raise UnsafeState(f"{what} is not numpy's array of {length} uint{8 * itemsize}")


def check_bit_generator_state(kind: str, state: Any) -> None:
    """A bit generator's `state` dict, as its numpy setter reads it."""
    if kind == "MT19937":
        if isinstance(state, tuple):
            # The legacy tuple form: ('MT19937', key, pos[, has_gauss, gauss]).
            if len(state) not in (3, 5) or state[0] != "MT19937":
                raise UnsafeState("MT19937 legacy state is not numpy's")
            _mt19937(state[1], state[2])
            return
        items = _plain(state, {"bit_generator", "state"}, "MT19937 state")
        inner = _plain(items["state"], {"key", "pos"}, "MT19937 state")
        _mt19937(inner["key"], inner["pos"])
    elif kind in ("PCG64", "PCG64DXSM"):
        items = _plain(state, {"bit_generator", "state", "has_uint32", "uinteger"}, kind)
        inner = _plain(items["state"], {"state", "inc"}, f"{kind} state")
        _int(inner["state"], 0, (1 << 128) - 1, f"{kind} state")
        _int(inner["inc"], 0, (1 << 128) - 1, f"{kind} increment")
        _buffered(items, kind)
    elif kind == "Philox":
        keys = {"bit_generator", "state", "buffer", "buffer_pos", "has_uint32", "uinteger"}
        items = _plain(state, keys, "Philox state")
        inner = _plain(items["state"], {"counter", "key"}, "Philox state")
        _uint_array(inner["counter"], 8, 4, "Philox counter")
        _uint_array(inner["key"], 8, 2, "Philox key")
        _uint_array(items["buffer"], 8, PHILOX_BUFFER, "Philox buffer")
        # Philox draws buffer[buffer_pos] while buffer_pos < 4: a negative one reads
        # before the buffer.
        _int(items["buffer_pos"], 0, PHILOX_BUFFER, "Philox buffer_pos")
        _buffered(items, kind)
    elif kind == "SFC64":
        items = _plain(state, {"bit_generator", "state", "has_uint32", "uinteger"}, kind)
        inner = _plain(items["state"], {"state"}, "SFC64 state")
        _uint_array(inner["state"], 8, 4, "SFC64 state")
        _buffered(items, kind)
    else:  # pragma: no cover - kinds come from _NAMES
        raise UnsafeState(f"no state check for {kind}")
    if isinstance(state, SDict) and state.items["bit_generator"] != kind:
        raise UnsafeState(f"state of a {state.items['bit_generator']!r} given to a {kind}")


def _mt19937(key: Any, pos: Any) -> None:
    _uint_array(key, 4, MT19937_WORDS, "MT19937 key")
    # The next draw reads key[pos++] (pos 624 regenerates the key first): anything
    # outside [0, 624] is an out-of-bounds read.
    _int(pos, 0, MT19937_WORDS, "MT19937 pos")


def _buffered(items: dict[Any, Any], kind: str) -> None:
    _int(items["has_uint32"], 0, 1, f"{kind} has_uint32")
    _int(items["uinteger"], 0, _UINT32_MAX, f"{kind} uinteger")


@on_build(f"{_PICKLE}:__bit_generator_ctor", *(f"{g.module}:{g.name}" for g in _CLASSES))
def bit_generator_build(target: Obj, state: Any) -> Obj:
    kind = _kind_of_object(target)
    # numpy 2 writes (state, seed sequence); numpy 1.x the state dict alone.
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], SDict):
        if state[1] is not None and not _is_seed_sequence(state[1]):
            raise UnsafeState("bit generator seed sequence is not numpy's SeedSequence")
        state = state[0]
    check_bit_generator_state(kind, state)
    target.state = state
    return target


def _is_bit_generator(value: Any) -> bool:
    return isinstance(value, Obj) and (
        value.callable == BIT_GENERATOR_CTOR or value.callable in _CLASSES
    )


def _kind_under(target: Obj, cls: str) -> str:
    """The bit generator under a Generator or RandomState: made by numpy's ctor helper,
    or by the class itself (Generator(bit generator), RandomState(seed or bit
    generator); a seed makes an MT19937)."""
    if target.callable.name != cls:
        return _ctor_args(target)
    if target.keywords or len(target.args) > 1:
        raise UnsafeState(f"{cls} made with arguments numpy never writes")
    first = target.args[0] if target.args else None
    if _is_bit_generator(first):
        return _kind_of_object(first)
    if cls == "RandomState":
        return "MT19937"
    raise UnsafeState("Generator made without a bit generator")


@on_build(f"{_PICKLE}:__generator_ctor", "numpy.random._generator:Generator")
def generator_build(target: Obj, state: Any) -> Obj:
    check_bit_generator_state(_kind_under(target, "Generator"), state)
    target.state = state
    return target


@on_build(f"{_PICKLE}:__randomstate_ctor", "numpy.random.mtrand:RandomState")
def randomstate_build(target: Obj, state: Any) -> Obj:
    kind = _kind_under(target, "RandomState")
    if isinstance(state, tuple):
        check_bit_generator_state(kind, state)  # set_state's legacy tuple
    else:
        items = _plain(state, {"bit_generator", "state", "has_gauss", "gauss"}, "RandomState")
        _int(items["has_gauss"], 0, 1, "RandomState has_gauss")
        if type(items["gauss"]) is not float:
            raise UnsafeState("RandomState gauss is not a float")
        inner = SDict({"bit_generator": items["bit_generator"], "state": items["state"]})
        if kind != "MT19937":
            raise UnsafeState("RandomState state given to a bit generator other than MT19937")
        check_bit_generator_state(kind, inner)
    target.state = state
    return target


SEED_SEQUENCE = Global("numpy.random.bit_generator", "SeedSequence")
_SCALARS = (Global("numpy.core.multiarray", "scalar"), Global("numpy._core.multiarray", "scalar"))
_SEED_SEQUENCE_UNPICKLE = Global("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence")


def _is_seed_sequence(value: Any) -> bool:
    return isinstance(value, Obj) and value.callable in (SEED_SEQUENCE, _SEED_SEQUENCE_UNPICKLE)


@on_call("numpy.random.bit_generator:__pyx_unpickle_SeedSequence")
def seed_sequence_unpickle(made: Obj) -> Obj:
    # Cython's helper: (class, checksum, state or None); it checks the checksum.
    if made.keywords or len(made.args) != 3 or made.args[0] != SEED_SEQUENCE:
        raise UnsafeState("SeedSequence unpickled with arguments Cython never writes")
    if made.args[2] is not None:
        _seed_sequence_state(made.args[2])
    return made


@on_build("numpy.random.bit_generator:__pyx_unpickle_SeedSequence")
def seed_sequence_build(target: Obj, state: Any) -> Obj:
    _seed_sequence_state(state)
    target.state = state
    return target


def _seed_sequence_state(state: Any) -> None:
    """(entropy, n_children_spawned, pool, pool_size, spawn_key), as Cython sets them."""
    if not isinstance(state, tuple) or len(state) != 5:
        raise UnsafeState("SeedSequence state is not the tuple Cython writes")
    entropy, spawned, pool, pool_size, spawn_key = state
    if not (
        entropy is None
        or type(entropy) is int
        or isinstance(entropy, SList | ArrayValue)
        or (isinstance(entropy, Obj) and entropy.callable in _SCALARS)  # a numpy integer
        or (isinstance(entropy, tuple) and all(type(n) is int for n in entropy))
    ):
        raise UnsafeState("SeedSequence entropy is not numbers")
    _int(spawned, 0, _UINT32_MAX, "SeedSequence n_children_spawned")
    size = _int(pool_size, 4, 1 << 20, "SeedSequence pool_size")
    _uint_array(pool, 4, size, "SeedSequence pool")
    if not isinstance(spawn_key, tuple) or not all(type(n) is int for n in spawn_key):
        raise UnsafeState("SeedSequence spawn_key is not a tuple of integers")
