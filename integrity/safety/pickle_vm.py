"""A symbolic pickle machine: reads a pickle the way the unpickler would, runs nothing.

It follows every opcode of protocols 0-5 with the same stack, memo and frame
rules as `pickle._Unpickler` (the pure-Python unpickler that joblib's loader
extends), but values are symbols: a global is a name that is checked against
the allow-list, never imported; a call is recorded, never made. What it needs
to follow joblib's raw array data (the NumpyArrayWrapper's shape and dtype) it
reads from those symbols.

It fails closed: anything it cannot follow exactly as the unpickler would (an
unknown opcode, a truncated stream, trailing data, extension-registry or
persistent-id opcodes, a frame that disagrees with the data, a call on
something that is not an allowed global) is a finding, and the file is unsafe.

Each error says what the real unpicklers do at that point (`nature`): whether
they fail there too, so nothing after it can run (FAILS), or may read on
(REFUSED). The difference matters where the scanner decides a file is not a
pickle at all, and where it follows joblib array data as plain pickle.load
would read it: only a point where every unpickler fails ends the reading there.

The two stock unpicklers do not fail at the same points: the C one (behind
pickle.load and numpy.load) parses text numbers with C functions that stop at
a NUL byte, ignores frames, and does nothing for APPENDS or ADDITEMS with an
empty MARK; the pure-Python one (pickle._Unpickler, which joblib's extends)
takes a BUILD with any falsy state as a no-op. The machine follows both while
both read on; where only one of them fails it says so (a finding, unless the
other one fails later before anything ran) and follows the other from there.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from integrity.safety import states
from integrity.safety.streams import NO_FENCE, Source, StreamError
from integrity.safety.symbols import (
    ArrayValue,
    ContentBudget,
    Global,
    Obj,
    Opaque,
    SDict,
    SList,
    SSet,
)

MAX_LINE = 1 << 20  # protocol 0 text arguments; longer lines are refused
MAX_KEPT = 1 << 16  # byte/str arguments longer than this are skipped, kept as opaque
# ...except bytes and text (an array's raw data, as protocols 0-2 write it too), kept
# within the machine's content budget.
HIGHEST_PROTOCOL = 5


def python3_name(proto: int, module: str, name: str) -> tuple[str, str]:
    """The name the unpickler's find_class imports: Python 2 names are mapped
    below protocol 3 (with the default fix_imports=True)."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        if module in _compat_pickle.IMPORT_MAPPING:
            return _compat_pickle.IMPORT_MAPPING[module], name
    return module, name


def importable(module: str) -> bool:
    """Whether a module could have this name: dotted identifiers, no longer than a path.
    (Any other name fails to import: nothing of it runs.)"""
    return len(module) <= MAX_MODULE and all(part.isidentifier() for part in module.split("."))


# What the real unpicklers do where the machine stops (PickleError.nature).
FAILS = "fails"  # every unpickler fails here too: nothing from here on can run
REFUSED = "refused"  # an unpickler may go on (and run code): the scanner refuses
CALLS_OBJECT = "calls-object"  # calls an object an allowed callable returned

# The two stock unpicklers, where only one of them fails (PickleMachine.one_fails).
PYTHON = "Python"  # pickle._Unpickler, and joblib's NumpyUnpickler built on it
C = "C"  # _pickle.Unpickler: pickle.load, numpy.load
# numpy's largest number of dimensions (NPY_MAXDIMS, 64 in numpy 2): a longer shape
# fails in joblib's reshape after the data is read.
MAX_DIMS = 64
# A state of more entries than this is not one joblib writes for its wrapper.
MAX_MERGED = 64
# Plain keys longer than this are not hashed (equal long keys compare byte by byte).
MAX_KEY = 1024
# No module has a longer name: each dotted part is a file name, the whole a path.
MAX_MODULE = 4096


class PickleError(Exception):
    """The stream is not a pickle the unpickler would load as the scanner reads it."""

    def __init__(self, code: str, message: str, offset: int, nature: str = REFUSED) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.offset = offset
        self.nature = nature


@dataclass(frozen=True)
class GlobalUse:
    """A global the pickle resolves, with the offset of the opcode that names it."""

    module: str
    name: str
    offset: int


GlobalCheck = Callable[[GlobalUse], None]


class MemoLike(Protocol):
    def __getitem__(self, key: int, /) -> Any: ...
    def __setitem__(self, key: int, value: Any, /) -> None: ...
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...


class PickleMachine:
    """Walks one pickle stream from the source's current position to its STOP."""

    def __init__(
        self,
        source: Source,
        check_global: GlobalCheck,
        on_array: Callable[[PickleMachine, Obj, int], Any] | None = None,
        *,
        depth: int = 0,
    ) -> None:
        self.source = source
        self.check_global = check_global
        self.on_array = on_array
        self.depth = depth
        self.proto = 0
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: MemoLike = {}
        self._frame_end: int | None = None  # stream offset where the current frame ends
        self._running = False  # the source's fence is this machine's
        # Which stock unpicklers are still reading. Once the Python one has failed
        # (a frame problem, a number only C parses...), reading goes on with the C
        # one's semantics: frames ignored, no joblib array data.
        self.python = True
        self.c = True
        # Findings that do not stop the reading (one unpickler fails, the other
        # reads on), also handed to on_problem as they are met.
        self.problems: list[PickleError] = []
        self.on_problem: Callable[[PickleError], None] | None = None
        self.op_offset = 0  # offset of the opcode being followed
        self.limit: int | None = None  # no opcode may start beyond this offset (set before run)
        # Offset where joblib's reading first leaves plain pickle.load's: the first
        # array data (raw bytes or a nested pickle) after a NumpyArrayWrapper.
        self.first_array: int | None = None
        # Symbols that are or hold a NumpyArrayWrapper class, by id (the values keep
        # them alive): set as globals are named and containers made or filled, so
        # asking costs nothing.
        self.holds_wrapper: dict[int, Any] = {}
        # At a persistent id, read on as a loader with a persistent_load would.
        self.persistent_reads_on = True
        # [start, end) of each block of raw array data skipped as joblib skips it.
        self.array_spans: list[tuple[int, int]] = []
        # Array content kept for the state validators (shared by nested machines).
        self.budget = ContentBudget()
        # The loader's persistent_load, for formats whose loader passes one (PyTorch
        # checkpoints): (machine, pid, offset) -> the symbol it pushes; it raises
        # PickleError to refuse. None: no stock loader passes one, refused.
        self.persistent_load: Callable[[PickleMachine, Any, int], Any] | None = None

    # ------------------------------------------------------------ reading
    # The machine reads the source's window directly (`source.buf`, `source.pos`).
    # While it runs, the source's fence is where this machine must check something
    # (the current frame's end, the limit): below `source.stop` a read is in the
    # window and checks nothing; a read that reaches `stop` takes the slow path,
    # which checks the frame exactly as before and refills the window.

    @property
    def frame_end(self) -> int | None:
        return self._frame_end

    @frame_end.setter
    def frame_end(self, value: int | None) -> None:
        self._frame_end = value
        if self._running:
            self.source.set_fence(self._fence())

    def _fence(self) -> int:
        fence = NO_FENCE if self._frame_end is None else self._frame_end
        if self.limit is not None:
            fence = min(fence, self.limit + 1)  # an opcode may start at the limit
        return fence

    def _fail(
        self, code: str, message: str, offset: int | None = None, nature: str = REFUSED
    ) -> PickleError:
        return PickleError(code, message, self.source.tell() if offset is None else offset, nature)

    def _truncated(self) -> PickleError:
        return self._fail("truncated", "the pickle ends in the middle of an opcode", nature=FAILS)

    def problem(self, code: str, message: str, offset: int) -> None:
        """A finding that does not stop the reading (each kind once)."""
        if any(seen.code == code for seen in self.problems):
            return
        problem = PickleError(code, message, offset)
        self.problems.append(problem)
        if self.on_problem is not None:
            self.on_problem(problem)

    def one_fails(self, loader: str, code: str, message: str, offset: int) -> None:
        """Only `loader` (PYTHON or C) fails here: the machine follows the other one from
        here on; if that one has failed before, nothing reads on (FAILS)."""
        other_alive = self.c if loader == PYTHON else self.python
        if not other_alive:
            raise self._fail(code, message, offset, FAILS)
        if loader == PYTHON and self.python:
            self.python = False
            self.on_array = None  # joblib has failed: no array data is skipped from here
        elif loader == C and self.c:
            self.c = False
        else:
            return
        other = C if loader == PYTHON else PYTHON
        self.problem(
            code,
            f"{message}: the {loader} unpickler fails here, the {other} one reads on",
            offset,
        )

    @property
    def linear(self) -> bool:
        """Frames no longer matter: only the C unpickler, which ignores them, reads on."""
        return not self.python

    def _frame_problem(self, message: str) -> None:
        self.one_fails(PYTHON, "bad-frame", message, self.op_offset)

    def _here(self) -> int:
        source = self.source
        here = source.base + source.pos
        if self._frame_end is not None and here >= self._frame_end:
            self.frame_end = None  # the frame is exhausted: reads go to the file
        return here

    def _check_frame(self, n: int) -> None:
        """A read of n bytes must lie within the current frame, or start after it."""
        here = self._here()
        if self._frame_end is not None and not self.linear and here + n > self._frame_end:
            self._frame_problem("an opcode runs past the end of its frame")

    def read(self, n: int) -> bytes:
        source = self.source
        pos = source.pos
        end = pos + n
        if pos <= end <= source.stop:
            source.pos = end
            return source.buf[pos:end]
        self._check_frame(n)
        data = source.read(n)
        if len(data) < n:
            raise self._truncated()
        return data

    def read_byte(self) -> int:
        """One byte of the stream, as an int."""
        source = self.source
        pos = source.pos
        if pos < source.stop:
            source.pos = pos + 1
            return source.buf[pos]
        return self.read(1)[0]

    def skip(self, n: int) -> None:
        source = self.source
        end = source.pos + n
        if n >= 0 and end <= source.stop:
            source.pos = end
            return
        self._check_frame(n)
        if source.skip(n) < n:
            raise self._truncated()

    def readline(self) -> bytes:
        source = self.source
        buf, pos = source.buf, source.pos
        end = buf.find(b"\n", pos, source.stop)
        if 0 <= end < pos + MAX_LINE:
            source.pos = end + 1
            return buf[pos:end]
        return self._readline_checked()

    def _readline_checked(self) -> bytes:
        here = self._here()
        frame_end = None if self.linear else self.frame_end
        limit = MAX_LINE if frame_end is None else min(MAX_LINE, frame_end - here)
        line = self.source.readline(limit)
        if (
            frame_end is not None
            and not line.endswith(b"\n")
            and here + len(line) >= frame_end
            and len(line) < MAX_LINE
        ):
            self._frame_problem("a text argument runs past the end of its frame")
            line += self.source.readline(MAX_LINE - len(line))
        if not line.endswith(b"\n"):
            if len(line) >= MAX_LINE:
                raise self._fail("malformed", "a text argument is longer than 1 MiB")
            raise self._truncated()
        return line[:-1]

    def _keeps(self, n: int) -> bool:
        """Whether n bytes of content are kept (within the content budget)."""
        return self.budget.take(n)

    def _read_bytes_arg(self, n: int, kind: str) -> Any:
        if n <= MAX_KEPT or (kind in ("bytes", "string") and self._keeps(n)):
            return self.read(n)
        self.skip(n)
        return Opaque(kind, n)

    # ------------------------------------------------------------ stack

    def pop(self) -> Any:
        try:
            return self.stack.pop()
        except IndexError:
            raise self._fail(
                "malformed", "the pickle pops from an empty stack", nature=FAILS
            ) from None

    def top(self) -> Any:
        if not self.stack:
            raise self._fail("malformed", "the pickle reads an empty stack", nature=FAILS)
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise self._fail("malformed", "the pickle closes a MARK it never opened", nature=FAILS)
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def push(self, value: Any) -> None:
        self.stack.append(value)

    # ------------------------------------------------------------ globals

    def resolve_global(self, module: str, name: str, offset: int) -> Global:
        """The (module, name) the unpickler's find_class would import, checked."""
        module, name = python3_name(self.proto, module, name)
        self.check_global(GlobalUse(module, name, offset))
        found = Global(module, name)
        if found == JOBLIB_WRAPPER:
            self.holds_wrapper[id(found)] = found  # see _holds_wrapper
        return found

    def callable_of(self, value: Any, what: str, offset: int) -> Global:
        if isinstance(value, Global):
            return value
        raise self._fail(
            "indirect-call",
            f"{what} calls something that is not a named global ({_describe(value)}); "
            "only allow-listed globals may be called",
            offset,
            # A plain value (a string, a list...) is not callable: the call fails.
            CALLS_OBJECT if isinstance(value, Obj | Opaque) else FAILS,
        )

    # ------------------------------------------------------------ run

    def _persistent_object(self, opcode: int, offset: int, depth: int, exc: PickleError) -> None:
        """Every stock loader fails at a persistent id (none has a persistent_load); one
        that has reads on with whatever it returns: a finding, unless every loader
        fails later before anything ran (a PNG's "\x89PNG" is NEWFALSE, PERSID)."""
        self.problem(exc.code, exc.message, exc.offset)
        _persistent_read_on(self, opcode, offset, depth)

    def run(self) -> Any:
        """Walk to STOP; returns the symbolic top-level object."""
        source = self.source
        outer_fence = source.fence  # a machine that runs this one (nested pickles)
        self._running = True
        source.set_fence(self._fence())
        try:
            return self._walk(source)
        finally:
            self._running = False
            source.set_fence(outer_fence)

    def _walk(self, source: Source) -> Any:
        dispatch = _TABLE or _table()
        memo = self.memo
        while True:
            pos = source.pos
            if pos < source.stop:  # in the window, before any frame end or limit
                buf = source.buf
                code = buf[pos]
                # BINGET (0x68), a third of the opcodes of a model of many objects:
                # its common case here, without a call; anything else is the handler's.
                if code == 0x68 and pos + 1 < source.stop and buf[pos + 1] in memo:
                    source.pos = pos + 2
                    self.stack.append(memo[buf[pos + 1]])
                    continue
                source.pos = pos + 1
                offset = source.base + pos
            else:
                offset, code = self._next_opcode()
            self.op_offset = offset
            handler = dispatch[code]
            if handler is None:
                raise self._fail("unknown-opcode", f"unknown opcode 0x{code:02x}", offset, FAILS)
            try:
                if handler(self, offset):
                    return self.pop()
            except PickleError as exc:
                if exc.code != "persistent-id" or not self.persistent_reads_on:
                    raise
                # PERSID and BINPERSID raise before they read or pop anything: the
                # depth now is the depth before them (not taken at every opcode).
                self._persistent_object(code, offset, len(self.stack), exc)

    def _next_opcode(self) -> tuple[int, int]:
        """(offset, opcode) at a frame's end, the limit or the window's end."""
        offset = self._here()
        if self.limit is not None and offset > self.limit:
            raise self._fail("too-long", "the pickle is longer than the scanner follows", offset)
        code = self.source.read(1)
        if not code:
            raise self._fail(
                "truncated",
                "the pickle ends without STOP: the unpickler would still run its prefix",
                offset,
                FAILS,
            )
        return offset, code[0]


def _persistent_read_on(vm: PickleMachine, opcode: int, offset: int, depth: int) -> None:
    """Consume a persistent id's argument if the handler left it (PERSID's line,
    BINPERSID's stack item) and push what a persistent_load returns."""
    if opcode == b"P"[0] and vm.source.tell() == offset + 1:
        vm.readline()
    elif opcode == b"Q"[0] and len(vm.stack) == depth:
        vm.pop()
    vm.push(Opaque("persistent object"))


def _inert(value: Any) -> bool:
    """A plain value: the unpickler fails calling it or changing it, nothing runs."""
    return not isinstance(value, Global | Obj | Opaque)


def _describe(value: Any) -> str:
    if isinstance(value, Obj):
        return f"the result of {value.callable.qualified}"
    if isinstance(value, Opaque):
        return value.kind
    if isinstance(value, SList | SDict | SSet):
        return type(value).__name__[1:].lower()
    return type(value).__name__


# ---------------------------------------------------------------- opcodes
# Each handler returns True at STOP. `offset` is the opcode's own offset.

Handler = Callable[[PickleMachine, int], bool | None]
_DISPATCH: dict[int, Handler] = {}
_TABLE: list[Handler | None] = []  # _DISPATCH by opcode, made at the first run


def _table() -> list[Handler | None]:
    _TABLE[:] = [_DISPATCH.get(code) for code in range(256)]
    return _TABLE


def _op(code: bytes) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _DISPATCH[code[0]] = fn
        return fn

    return register


@_op(b"\x80")
def _proto(vm: PickleMachine, offset: int) -> None:
    proto = vm.read(1)[0]
    if proto > HIGHEST_PROTOCOL:
        raise vm._fail("malformed", f"unsupported pickle protocol {proto}", offset, FAILS)
    vm.proto = proto


@_op(b"\x95")
def _frame(vm: PickleMachine, offset: int) -> None:
    (size,) = struct.unpack("<Q", vm.read(8))
    here = vm._here()
    if size > (1 << 62):
        raise vm._fail("bad-frame", "frame length is impossibly large", offset, FAILS)
    if vm.frame_end is not None and not vm.linear:
        vm._frame_problem("a new frame begins before the current one ends")
    # Reads past the data inside the frame are reported as truncation.
    vm.frame_end = here + size


@_op(b".")
def _stop(vm: PickleMachine, offset: int) -> bool:
    if vm.frame_end is not None and offset + 1 < vm.frame_end:
        # The unpickler has read the whole frame: whether the next reader (joblib
        # after an object array, or a second load) resumes after STOP or at the
        # frame's end depends on the unpickler. Pickles never do this.
        raise vm._fail(
            "bad-frame",
            f"the pickle stops {vm.frame_end - offset - 1} bytes before the end of its "
            "frame: where reading resumes after it depends on the unpickler",
            offset,
        )
    return True


@_op(b"(")
def _mark(vm: PickleMachine, offset: int) -> None:
    vm.metastack.append(vm.stack)
    vm.stack = []


@_op(b"0")
def _pop(vm: PickleMachine, offset: int) -> None:
    if vm.stack:
        vm.stack.pop()
    else:
        vm.pop_mark()


@_op(b"1")
def _pop_mark(vm: PickleMachine, offset: int) -> None:
    vm.pop_mark()


@_op(b"2")
def _dup(vm: PickleMachine, offset: int) -> None:
    vm.push(vm.top())


# ---- constants


@_op(b"N")
def _none(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(None)


@_op(b"\x88")
def _true(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(True)


@_op(b"\x89")
def _false(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(False)


def _parsed(vm: PickleMachine, what: str, c_value: Any, py_value: Any, offset: int) -> Any:
    """The value a text argument parses to, given what each unpickler makes of it
    (None: that one fails). Where only one parses it, the machine follows that one."""
    if c_value is None and py_value is None:
        raise vm._fail("malformed", f"{what} argument is not a number", offset, FAILS)
    if py_value is None:
        vm.one_fails(PYTHON, "loaders-disagree", f"{what} argument only C parses", offset)
        return c_value
    if c_value is None:
        vm.one_fails(C, "loaders-disagree", f"{what} argument only Python parses", offset)
    return py_value


def _int_or_none(data: bytes, base: int) -> int | None:
    try:
        return int(data, base)
    except ValueError:  # also over sys.get_int_max_str_digits(), in both unpicklers
        return None


def _c_string(data: bytes) -> bytes:
    """The line as C functions read it: up to its first NUL byte."""
    return data.split(b"\0", 1)[0]


# What C's strtol(s, &end, 0) reads from the start of s ("010" is octal 8 there).
_STRTOL = re.compile(rb"[ \t\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


def _c_int(data: bytes) -> int | None:
    """The C unpickler's INT: strtol(s, &end, 0), taken if it stops at the newline or a
    NUL byte (nothing read at all counts, if s starts with NUL: 0); otherwise, or on
    overflow, PyLong_FromString(s, NULL, 0), which also stops at a NUL byte."""
    text = _c_string(data)
    match = _STRTOL.match(text)
    if match is None:
        if data[:1] == b"\0":
            return 0
    elif match.end() == len(text) and len(match.group(2)) <= 24:  # longer: out of range
        sign, digits = match.group(1), match.group(2)
        base = 16 if digits[:2].lower() == b"0x" else 8 if digits[:1] == b"0" else 10
        value = int(digits[2:] if base == 16 else digits, base)
        value = -value if sign == b"-" else value
        if _LONG_MIN <= value <= _LONG_MAX:
            return value
    return _int_or_none(text, 0)


@_op(b"I")
def _int(vm: PickleMachine, offset: int) -> None:
    data = vm.readline()
    if data == b"00":
        vm.push(False)
    elif data == b"01":
        vm.push(True)
    elif not data:
        raise vm._fail("malformed", "INT argument is empty", offset, FAILS)
    else:
        vm.push(_parsed(vm, "INT", _c_int(data), _int_or_none(data, 0), offset))


@_op(b"L")
def _long(vm: PickleMachine, offset: int) -> None:
    data = vm.readline()
    if data.endswith(b"L"):
        data = data[:-1]
    c_value = _int_or_none(_c_string(data), 0) if data else None
    vm.push(_parsed(vm, "LONG", c_value, _int_or_none(data, 0), offset))


@_op(b"J")
def _binint(vm: PickleMachine, offset: int) -> None:
    vm.push(struct.unpack("<i", vm.read(4))[0])


@_op(b"K")
def _binint1(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(vm.read_byte())


@_op(b"M")
def _binint2(vm: PickleMachine, offset: int) -> None:
    vm.push(struct.unpack("<H", vm.read(2))[0])


def _long_bytes(vm: PickleMachine, n: int, offset: int) -> None:
    if n < 0:
        raise vm._fail("malformed", "negative length of a long integer", offset, FAILS)
    data = vm._read_bytes_arg(n, "large integer")
    vm.push(int.from_bytes(data, "little", signed=True) if isinstance(data, bytes) else data)


@_op(b"\x8a")
def _long1(vm: PickleMachine, offset: int) -> None:
    _long_bytes(vm, vm.read(1)[0], offset)


@_op(b"\x8b")
def _long4(vm: PickleMachine, offset: int) -> None:
    _long_bytes(vm, struct.unpack("<i", vm.read(4))[0], offset)


# What the C unpickler's PyOS_string_to_double reads from the start of the line: no
# whitespace, no underscores (Python's float() takes both).
_C_FLOAT = re.compile(
    rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf(?:inity)?|nan))"
)


def _c_float(data: bytes) -> float | None:
    """The C unpickler's FLOAT: taken if the number stops at the newline or a NUL byte;
    a finite number too large for a double fails (OverflowError)."""
    text = _c_string(data)
    match = _C_FLOAT.match(text)
    if match is None or match.end() != len(text):
        return None
    value = float(text)
    if math.isinf(value) and not text.lstrip(b"+-")[:1].isalpha():
        return None
    return value


def _py_float(data: bytes) -> float | None:
    try:
        return float(data)
    except ValueError:
        return None


@_op(b"F")
def _float(vm: PickleMachine, offset: int) -> None:
    data = vm.readline()
    c_value = _c_float(data) if data else None
    vm.push(_parsed(vm, "FLOAT", c_value, _py_float(data), offset))


@_op(b"G")
def _binfloat(vm: PickleMachine, offset: int) -> None:
    vm.push(struct.unpack(">d", vm.read(8))[0])


# ---- strings and bytes


def _ascii(vm: PickleMachine, data: Any, offset: int) -> Any:
    # Both unpicklers decode protocol 0-2 byte strings as ASCII by default and fail on
    # others; a loader may pass another encoding and read on. The machine reads on as
    # with encoding="latin1" (a finding, unless every loader fails later anyway).
    if not isinstance(data, bytes):
        return data
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        vm.problem(
            "not-ascii",
            "a byte string is not ASCII: the default loaders fail here, a loader "
            "given another encoding reads on",
            offset,
        )
        return data.decode("latin1")


@_op(b"S")
def _string(vm: PickleMachine, offset: int) -> None:
    data = vm.readline()
    if len(data) >= 2 and data[0] == data[-1] and data[0] in b"\"'":
        data = data[1:-1]
    else:
        raise vm._fail("malformed", "STRING argument is not quoted", offset, FAILS)
    try:
        decoded = codecs.escape_decode(data)[0]
    except ValueError:
        raise vm._fail("malformed", "STRING argument has a bad escape", offset, FAILS) from None
    vm.push(_ascii(vm, decoded, offset))


@_op(b"T")
def _binstring(vm: PickleMachine, offset: int) -> None:
    (n,) = struct.unpack("<i", vm.read(4))
    if n < 0:
        raise vm._fail("malformed", "negative BINSTRING length", offset, FAILS)
    vm.push(_ascii(vm, vm._read_bytes_arg(n, "string"), offset))


@_op(b"U")
def _short_binstring(vm: PickleMachine, offset: int) -> None:
    vm.push(_ascii(vm, vm.read(vm.read(1)[0]), offset))


def _utf8(vm: PickleMachine, data: Any, offset: int) -> Any:
    if not isinstance(data, bytes):
        return data
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise vm._fail("malformed", "a unicode string is not UTF-8", offset, FAILS) from None


@_op(b"V")
def _unicode(vm: PickleMachine, offset: int) -> None:
    data = vm.readline()
    try:
        vm.push(str(data, "raw-unicode-escape"))
    except UnicodeDecodeError:
        raise vm._fail("malformed", "UNICODE argument has a bad escape", offset, FAILS) from None


@_op(b"X")
def _binunicode(vm: PickleMachine, offset: int) -> None:
    (n,) = struct.unpack("<I", vm.read(4))
    vm.push(_utf8(vm, vm._read_bytes_arg(n, "string"), offset))


@_op(b"\x8c")
def _short_binunicode(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(_utf8(vm, vm.read(vm.read_byte()), offset))


@_op(b"\x8d")
def _binunicode8(vm: PickleMachine, offset: int) -> None:
    (n,) = struct.unpack("<Q", vm.read(8))
    vm.push(_utf8(vm, vm._read_bytes_arg(n, "string"), offset))


@_op(b"B")
def _binbytes(vm: PickleMachine, offset: int) -> None:
    (n,) = struct.unpack("<I", vm.read(4))
    vm.push(vm._read_bytes_arg(n, "bytes"))


@_op(b"C")
def _short_binbytes(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(vm.read(vm.read_byte()))


@_op(b"\x8e")
def _binbytes8(vm: PickleMachine, offset: int) -> None:
    (n,) = struct.unpack("<Q", vm.read(8))
    vm.push(vm._read_bytes_arg(n, "bytes"))


@_op(b"\x96")
def _bytearray8(vm: PickleMachine, offset: int) -> None:
    (n,) = struct.unpack("<Q", vm.read(8))
    # Mutable: never taken for bytes. Kept within the budget (protocol 5 array data).
    data = vm.read(n) if vm._keeps(n) else None
    if data is None:
        vm.skip(n)
    vm.push(Opaque("bytearray", n, data))


@_op(b"\x97")
def _next_buffer(vm: PickleMachine, offset: int) -> None:
    # The loaders this scanner vouches for pass no buffers: they fail here.
    raise vm._fail("out-of-band", "the pickle asks for out-of-band buffers", offset, FAILS)


_BUFFER_KINDS = ("bytes", "bytearray", "buffer", "array")


@_op(b"\x98")
def _readonly_buffer(vm: PickleMachine, offset: int) -> None:
    # In-band it makes a read-only view of the buffer on the stack (bytes are
    # left as they are); anything without the buffer protocol fails.
    value = vm.top()
    if isinstance(value, bytes):
        return
    if isinstance(value, Obj) or (isinstance(value, Opaque) and value.kind in _BUFFER_KINDS):
        if isinstance(value, Opaque):
            vm.stack[-1] = Opaque("buffer", value.size, value.data)
        else:
            vm.stack[-1] = Opaque("buffer")
        return
    raise vm._fail(
        "malformed", f"READONLY_BUFFER on {_describe(value)}, not a buffer", offset, FAILS
    )


# ---- containers


@_op(b")")
def _empty_tuple(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(())


def _holds_wrapper(vm: PickleMachine, value: Any) -> bool:
    """The value is the NumpyArrayWrapper class or a container made holding it (at any
    depth of containers made after it): a constant-time look-up, never a walk."""
    return id(value) in vm.holds_wrapper


def _mark_holder(vm: PickleMachine, container: Any, items: Any) -> Any:
    """Record the container if any of the items holds the wrapper; returns it."""
    holders = vm.holds_wrapper
    if holders and any(map(holders.__contains__, map(id, items))):
        holders[id(container)] = container
    return container


def _push_tuple(vm: PickleMachine, items: Any) -> None:
    vm.stack.append(_mark_holder(vm, tuple(items), items))


@_op(b"t")
def _tuple(vm: PickleMachine, offset: int) -> None:
    _push_tuple(vm, vm.pop_mark())


@_op(b"\x85")
def _tuple1(vm: PickleMachine, offset: int) -> None:
    _push_tuple(vm, (vm.pop(),))


@_op(b"\x86")
def _tuple2(vm: PickleMachine, offset: int) -> None:
    b = vm.pop()
    a = vm.pop()
    _push_tuple(vm, (a, b))


@_op(b"\x87")
def _tuple3(vm: PickleMachine, offset: int) -> None:
    c = vm.pop()
    b = vm.pop()
    a = vm.pop()
    _push_tuple(vm, (a, b, c))


@_op(b"]")
def _empty_list(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(SList())


@_op(b"l")
def _list(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    vm.push(_mark_holder(vm, SList(items), items))


@_op(b"}")
def _empty_dict(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(SDict())


def _plain_key(key: Any) -> bool:
    """A key hashed and compared in constant time: hashing a tuple of shared tuples
    costs 2**depth, a long string or integer its length at every use."""
    kind = type(key)
    if kind is str or kind is bytes:  # the usual keys first
        return len(key) <= MAX_KEY
    if key is None or kind is bool or kind is float:
        return True
    return kind is int and -_KEY_INT <= key <= _KEY_INT


_KEY_INT = 1 << 64


def _set_items(vm: PickleMachine, target: SDict, items: list[Any]) -> None:
    kept = target.items
    # An odd last item is left out (the caller has refused it, or SETITEM passes two).
    for key, value in zip(items[::2], items[1::2], strict=False):
        # A short str key is the usual one: taken without calling _plain_key.
        if (type(key) is str and len(key) <= MAX_KEY) or _plain_key(key):
            kept[key] = value
        else:
            target.other.append((key, value))
    _mark_holder(vm, target, items)


@_op(b"d")
def _dict(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    if len(items) % 2:
        raise vm._fail("malformed", "DICT with an odd number of items", offset, FAILS)
    result = SDict()
    _set_items(vm, result, items)
    vm.push(result)


@_op(b"\x8f")
def _empty_set(vm: PickleMachine, offset: int) -> None:
    vm.push(SSet())


class SFrozenSet(SSet):
    """A frozenset: neither unpickler adds items to it."""


@_op(b"\x91")
def _frozenset(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    vm.push(_mark_holder(vm, SFrozenSet(items), items))


def _container_target(vm: PickleMachine, kinds: tuple[type, ...], what: str, offset: int) -> Any:
    target = vm.top()
    if isinstance(target, ArrayValue):
        # ndarray.__setitem__ and friends: the content the state validators read would
        # not be the content the library is given.
        raise vm._fail(
            "indirect-call",
            f"{what} on an ndarray: it would change the array after the scanner read it",
            offset,
        )
    if isinstance(target, SList) and target.checked:
        raise vm._fail(
            "indirect-call",
            f"{what} on a list an object holds since its state was checked: it would "
            "change that object after the scanner checked it",
            offset,
        )
    if isinstance(target, kinds) and not isinstance(target, SFrozenSet):
        return target
    raise vm._fail(
        "indirect-call",
        f"{what} on {_describe(target)}: it would call a method of that object",
        offset,
        # A plain value has no such method (or is immutable): the unpickler fails.
        FAILS if _inert(target) else REFUSED,
    )


def _python_lacks(value: Any, method: str) -> bool:
    """The value is a plain one without the method (list.extend, set.add...) that the
    Python unpickler looks up even for an empty MARK."""
    if isinstance(value, Opaque):  # bytearray.extend exists; str, bytes, arrays... lack both
        return method != "extend" or value.kind != "bytearray"
    if not _inert(value):
        return False
    if method == "extend":
        return not isinstance(value, SList)
    return not isinstance(value, SSet) or isinstance(value, SFrozenSet)


def _empty_mark_on(vm: PickleMachine, what: str, method: str, offset: int) -> bool:
    """APPENDS and ADDITEMS with an empty MARK: the C unpickler does nothing, whatever is
    below it; the Python one looks the method up first (an object's method is not
    called for nothing). True if that is this opcode (it is then done)."""
    if vm.stack:
        return False
    vm.pop_mark()
    target = vm.top()
    if isinstance(target, Global):
        raise vm._fail(
            "indirect-call",
            f"{what} on {_describe(target)}: the Python unpickler would call its {method}",
            offset,
        )
    if _python_lacks(target, method):
        vm.one_fails(PYTHON, "loaders-disagree", f"{what} with an empty MARK", offset)
    return True


@_op(b"a")
def _append(vm: PickleMachine, offset: int) -> None:
    value = vm.pop()
    target = _container_target(vm, (SList, Obj), "APPEND", offset)
    if isinstance(target, SList):
        target.items.append(value)
        _mark_holder(vm, target, (value,))


@_op(b"e")
def _appends(vm: PickleMachine, offset: int) -> None:
    if not vm.metastack:
        vm.pop_mark()  # fails: no MARK
    if _empty_mark_on(vm, "APPENDS", "extend", offset):
        return
    items = vm.pop_mark()
    target = _container_target(vm, (SList, Obj), "APPENDS", offset)
    if isinstance(target, SList):
        target.items.extend(items)
        _mark_holder(vm, target, items)


# SETITEM on a list assigns by index (list.__setitem__, nothing else runs); the
# scanner does not follow list contents, so it only lets it happen.
@_op(b"s")
def _setitem(vm: PickleMachine, offset: int) -> None:
    value = vm.pop()
    key = vm.pop()
    target = _container_target(vm, (SDict, SList, Obj), "SETITEM", offset)
    if isinstance(target, SDict):
        _set_items(vm, target, [key, value])
    if isinstance(target, SList):
        _list_assign(vm, target, key, value, offset)


def _list_assign(vm: PickleMachine, target: SList, key: Any, value: Any, offset: int) -> None:
    """list[key] = value, followed: the list may still be what an object is built from
    (a forest's trees), and the validators must see what the object will hold."""
    if type(key) is int and -len(target.items) <= key < len(target.items):
        target.items[key] = value
        return
    raise vm._fail(
        "malformed",
        f"SETITEM on a list with key {_describe(key)}: not an index the scanner follows",
        offset,
        # Anything but an int or a slice fails in list.__setitem__.
        REFUSED if isinstance(key, Obj | Opaque) else FAILS,
    )


@_op(b"u")
def _setitems(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    if not items:
        vm.top()  # both unpicklers do nothing, to anything, but need something there
        return
    target = _container_target(vm, (SDict, SList, Obj), "SETITEMS", offset)
    if len(items) % 2:
        raise vm._fail(
            "malformed",
            "SETITEMS with an odd number of items",
            offset,
            REFUSED if isinstance(target, Obj) else FAILS,
        )
    if isinstance(target, SDict):
        _set_items(vm, target, items)
    if isinstance(target, SList):
        for i in range(0, len(items), 2):
            _list_assign(vm, target, items[i], items[i + 1], offset)


@_op(b"\x90")
def _additems(vm: PickleMachine, offset: int) -> None:
    if not vm.metastack:
        vm.pop_mark()  # fails: no MARK
    if _empty_mark_on(vm, "ADDITEMS", "add", offset):
        return
    items = vm.pop_mark()
    target = _container_target(vm, (SSet,), "ADDITEMS", offset)
    target.items.extend(items)
    _mark_holder(vm, target, items)


# ---- memo


def _memo_get(vm: PickleMachine, key: int, offset: int) -> None:
    try:
        vm.stack.append(vm.memo[key])
    except KeyError:
        raise vm._fail("malformed", f"memo key {key} was never stored", offset, FAILS) from None


def _memo_put(vm: PickleMachine, key: int, offset: int) -> None:
    if key < 0:
        raise vm._fail("malformed", "negative memo key", offset, FAILS)
    vm.memo[key] = vm.top()


def _memo_key(vm: PickleMachine, what: str, offset: int) -> int:
    # GET and PUT read their key in base 10 (int(line)), unlike INT's base 0: "01" is
    # key 1 to both unpicklers; the C one stops at a NUL byte.
    data = vm.readline()
    c_key = _int_or_none(_c_string(data), 10) if data else None
    key: int = _parsed(vm, what, c_key, _int_or_none(data, 10), offset)
    return key


@_op(b"g")
def _get(vm: PickleMachine, offset: int) -> None:
    _memo_get(vm, _memo_key(vm, "GET", offset), offset)


@_op(b"h")
def _binget(vm: PickleMachine, offset: int) -> None:
    # The commonest opcode of all: read_byte and _memo_get inlined.
    source = vm.source
    pos = source.pos
    if pos < source.stop:
        source.pos = pos + 1
        key = source.buf[pos]
    else:
        key = vm.read(1)[0]
    memo = vm.memo
    if key in memo:
        vm.stack.append(memo[key])
    else:
        _memo_get(vm, key, offset)


@_op(b"j")
def _long_binget(vm: PickleMachine, offset: int) -> None:
    _memo_get(vm, struct.unpack("<I", vm.read(4))[0], offset)


@_op(b"p")
def _put(vm: PickleMachine, offset: int) -> None:
    _memo_put(vm, _memo_key(vm, "PUT", offset), offset)


@_op(b"q")
def _binput(vm: PickleMachine, offset: int) -> None:
    _memo_put(vm, vm.read_byte(), offset)


@_op(b"r")
def _long_binput(vm: PickleMachine, offset: int) -> None:
    _memo_put(vm, struct.unpack("<I", vm.read(4))[0], offset)


@_op(b"\x94")
def _memoize(vm: PickleMachine, offset: int) -> None:
    memo = vm.memo
    memo[len(memo)] = vm.stack[-1] if vm.stack else vm.top()


# ---- globals and calls


def _text_name(vm: PickleMachine, offset: int) -> str:
    try:
        data = vm.readline()
    except PickleError as exc:
        if exc.code != "truncated":
            raise
        # At the end of the file the Python unpickler takes what is there as the name
        # (its readline does not fail) and imports the module it names.
        raise vm._fail(
            "truncated",
            "a global's name is cut off by the end of the file: the Python unpickler "
            "would still import the module it names",
            offset,
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise vm._fail("malformed", "a global's name is not UTF-8", offset, FAILS) from None


@_op(b"c")
def _global(vm: PickleMachine, offset: int) -> None:
    module = _text_name(vm, offset)
    name = _text_name(vm, offset)
    vm.push(vm.resolve_global(module, name, offset))


@_op(b"\x93")
def _stack_global(vm: PickleMachine, offset: int) -> None:
    name = vm.pop()
    module = vm.pop()
    if type(name) is not str or type(module) is not str:
        # A string too long to keep is a str to the unpicklers all the same.
        long_string = any(isinstance(v, Opaque) and v.kind == "string" for v in (module, name))
        raise vm._fail(
            "indirect-global",
            "STACK_GLOBAL with a name that is not a plain string "
            f"({_describe(module)}, {_describe(name)})",
            offset,
            REFUSED if long_string else FAILS,
        )
    vm.push(vm.resolve_global(module, name, offset))


def _make(
    vm: PickleMachine,
    func: Global,
    args: tuple[Any, ...],
    offset: int,
    init: bool,
    kwargs: SDict | None = None,
) -> None:
    """Push the object a call makes, refusing the ways to make a joblib array wrapper
    whose attributes the scanner would not know (joblib reads array data after any).
    `init`: the call runs __init__ (not only __new__); `kwargs`: keyword values."""
    if func == JOBLIB_WRAPPER and init and args:
        raise vm._fail(
            "malformed",
            "joblib.numpy_pickle.NumpyArrayWrapper called with arguments: its __init__ sets "
            "the attributes (array alignment) joblib reads array data by; joblib writes it "
            "with NEWOBJ and a state",
            offset,
        )
    if func != JOBLIB_WRAPPER and (
        _holds_wrapper(vm, args) or (kwargs is not None and _holds_wrapper(vm, kwargs))
    ):
        raise vm._fail(
            "malformed",
            f"joblib.numpy_pickle.NumpyArrayWrapper passed to {func.qualified}: an object "
            "it makes may be an array wrapper joblib reads array data after",
            offset,
        )
    keywords = kwargs if kwargs is not None and (kwargs.items or kwargs.other) else None
    made = Obj(func, args, keywords=keywords)
    try:
        vm.push(states.checked_call(made))
    except states.UnsafeState as exc:
        raise vm._fail("unsafe-state", f"{func.qualified}: {exc.message}", offset) from None


@_op(b"R")
def _reduce(vm: PickleMachine, offset: int) -> None:
    args = vm.pop()
    func = vm.callable_of(vm.pop(), "REDUCE", offset)
    if not isinstance(args, tuple):
        raise vm._fail("malformed", "REDUCE arguments are not a tuple", offset)
    _make(vm, func, args, offset, init=True)


@_op(b"\x81")
def _newobj(vm: PickleMachine, offset: int) -> None:
    args = vm.pop()
    cls = vm.callable_of(vm.pop(), "NEWOBJ", offset)
    if not isinstance(args, tuple):
        raise vm._fail("malformed", "NEWOBJ arguments are not a tuple", offset)
    _make(vm, cls, args, offset, init=False)


@_op(b"\x92")
def _newobj_ex(vm: PickleMachine, offset: int) -> None:
    kwargs = vm.pop()
    args = vm.pop()
    cls = vm.callable_of(vm.pop(), "NEWOBJ_EX", offset)
    if not isinstance(args, tuple) or not isinstance(kwargs, SDict):
        raise vm._fail("malformed", "NEWOBJ_EX arguments are not a tuple and a dict", offset)
    _make(vm, cls, args, offset, init=False, kwargs=kwargs)


@_op(b"i")
def _inst(vm: PickleMachine, offset: int) -> None:
    module = _text_name(vm, offset)
    name = _text_name(vm, offset)
    cls = vm.resolve_global(module, name, offset)
    items = vm.pop_mark()
    _make(vm, cls, _mark_holder(vm, tuple(items), items), offset, init=True)


@_op(b"o")
def _obj(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    if not items:
        raise vm._fail("malformed", "OBJ without a class", offset, FAILS)
    cls = vm.callable_of(items[0], "OBJ", offset)
    _make(vm, cls, _mark_holder(vm, tuple(items[1:]), items[1:]), offset, init=True)


@_op(b"b")
def _build(vm: PickleMachine, offset: int) -> None:
    if len(vm.stack) < 2:
        raise vm._fail("malformed", "BUILD without an object and a state", offset, FAILS)
    state = vm.pop()
    target = vm.top()
    if _inert(target):
        _build_plain(vm, state, offset)
        return
    if not isinstance(target, Obj):
        raise vm._fail(
            "indirect-call",
            f"BUILD on {_describe(target)}: it would set attributes of something "
            "that is not an object made by an allowed class",
            offset,
        )
    _refuse_planted_methods(vm, target, state, offset)
    if target.callable in DICT_STATE_CLASSES:
        state = _merged_state(vm, target, state, offset)
    try:
        built = states.checked_build(target, state)
    except states.UnsafeState as exc:
        raise vm._fail(
            "unsafe-state", f"{target.callable.qualified}: {exc.message}", offset
        ) from None
    vm.stack[-1] = built
    if vm.on_array is not None and target.callable == JOBLIB_WRAPPER:
        vm.stack[-1] = vm.on_array(vm, target, offset)


# Allowed classes without __setstate__ whose state is read (joblib's wrapper; a state
# validator for such a class registers it here too): BUILD merges a dict state into the
# object's __dict__ (and setattr's a 2-tuple state's slot part), it does not replace it.
# Their Obj.state is that __dict__, as an SDict, and validators see it whole. joblib
# reads array data after every BUILD on its wrapper, with the attributes merged so far.
DICT_STATE_CLASSES: set[Global] = set()


# Attributes both unpicklers look up on the object itself, so an entry of its __dict__
# wins over the class's method: BUILD calls __setstate__, APPEND(S) call append or
# extend, ADDITEMS calls add. A state that sets one plants a call of any value.
_LOOKED_UP = ("__setstate__", "append", "extend", "add")


def _refuse_planted_methods(vm: PickleMachine, target: Obj, state: Any, offset: int) -> None:
    for part in _split_state(state)[:2]:
        if not isinstance(part, SDict):
            continue
        planted = [name for name in _LOOKED_UP if name in part.items]
        if planted or any(isinstance(key, Obj) for key, _ in part.other):
            raise vm._fail(
                "indirect-call",
                f"BUILD state of {target.callable.qualified} sets "
                f"{planted[0] if planted else 'an attribute named by an object'}: the "
                "unpickler looks it up on the object and calls whatever it holds",
                offset,
            )


def _split_state(state: Any) -> tuple[Any, Any, bool]:
    """(dict state, slot state, whether there is a slot state) as both unpicklers split
    a BUILD state: a 2-tuple is the two parts."""
    if isinstance(state, tuple) and len(state) == 2:
        return state[0], state[1], True
    return state, None, False


def _truth(value: Any) -> bool | None:
    """bool(value) for a symbol, or None where the object's own code decides."""
    if value is None or isinstance(value, bool | int | float | str | bytes | tuple):
        return bool(value)
    if isinstance(value, SList | SSet):
        return bool(value.items)
    if isinstance(value, SDict):
        return bool(value.items or value.other)
    if isinstance(value, Opaque) and value.kind in ("bytearray", "string", "bytes"):
        return value.size > 0
    return None


def _unknown_truth(vm: PickleMachine, offset: int) -> PickleError:
    return vm._fail(
        "indirect-call",
        "BUILD with a state whose truth value or items come from an object's own code",
        offset,
    )


def _build_plain(vm: PickleMachine, state: Any, offset: int) -> None:
    """BUILD on a plain value (no __setstate__, no __dict__): the Python unpickler does
    nothing if both parts of the state are falsy; the C one only if the dict part is
    None and the slot part, if any, an empty dict (None fails there). Otherwise each
    fails."""
    dict_part, slot_part, has_slot = _split_state(state)
    truths = (_truth(dict_part), _truth(slot_part))
    if None in truths:
        raise _unknown_truth(vm, offset)
    python_ok = not any(truths)
    c_ok = dict_part is None and (not has_slot or (isinstance(slot_part, SDict) and not truths[1]))
    if not python_ok and not c_ok:
        raise vm._fail(
            "malformed", f"BUILD on {_describe(vm.top())}: it has no attributes", offset, FAILS
        )
    if not python_ok:
        vm.one_fails(PYTHON, "loaders-disagree", "BUILD on a plain value", offset)
    elif not c_ok:
        vm.one_fails(C, "loaders-disagree", "BUILD on a plain value", offset)


def _merged_state(vm: PickleMachine, target: Obj, state: Any, offset: int) -> SDict:
    """The object's __dict__ after BUILD merges the state into it, as each unpickler
    does: Python merges a truthy dict part and setattr's a truthy slot part; C merges a
    dict part that is not None (it must be a dict) and setattr's the slot part of a
    2-tuple (a dict too, even if empty). Where only one of them fails, the other is
    followed."""
    dict_part, slot_part, has_slot = _split_state(state)
    truths = (_truth(dict_part), _truth(slot_part))
    if None in truths:
        raise _unknown_truth(vm, offset)
    python_fails = c_fails = False
    for part, truth, is_slot in ((dict_part, truths[0], False), (slot_part, truths[1], True)):
        if truth and not isinstance(part, SDict):
            python_fails = True  # it has no items()
        c_reads = has_slot if is_slot else part is not None
        if c_reads and not isinstance(part, SDict):
            c_fails = True  # "state is not a dictionary", "slot state is not a dictionary"
        if isinstance(part, SDict):
            if target.callable == JOBLIB_WRAPPER and len(part.items) + len(part.other) > MAX_MERGED:
                raise vm._fail(
                    "malformed",
                    f"BUILD state of {target.callable.qualified} is too large",
                    offset,
                )
            if is_slot and (part.other or not all(type(k) is str for k in part.items)):
                # setattr takes only str names (an Obj key might be a str subclass).
                if any(not _inert(k) for k, _ in part.other):
                    raise _unknown_truth(vm, offset)
                python_fails = c_fails = True
    if python_fails and c_fails:
        raise vm._fail(
            "malformed",
            f"BUILD state of {target.callable.qualified} is not a dict",
            offset,
            FAILS,
        )
    if python_fails:
        vm.one_fails(PYTHON, "loaders-disagree", "BUILD state only C takes", offset)
    elif c_fails:
        vm.one_fails(C, "loaders-disagree", "BUILD state only Python takes", offset)
    merged = target.state if isinstance(target.state, SDict) else SDict()
    for part in (dict_part, slot_part):
        if isinstance(part, SDict):
            merged.items.update(part.items)
            merged.other.extend(part.other)
    return merged


JOBLIB_WRAPPER = Global("joblib.numpy_pickle", "NumpyArrayWrapper")
DICT_STATE_CLASSES.add(JOBLIB_WRAPPER)
# ---- refused outright


def _no_persistent_load(vm: PickleMachine, offset: int) -> PickleError:
    return vm._fail(
        "persistent-id",
        "persistent-id opcode: the loader would hand its argument to persistent_load",
        offset,
    )


@_op(b"P")
def _persid(vm: PickleMachine, offset: int) -> None:
    if vm.persistent_load is None:
        raise _no_persistent_load(vm, offset)
    try:
        pid = vm.readline().decode("ascii")
    except UnicodeDecodeError:
        raise vm._fail("malformed", "a persistent id is not ASCII", offset, FAILS) from None
    vm.push(vm.persistent_load(vm, pid, offset))


@_op(b"Q")
def _binpersid(vm: PickleMachine, offset: int) -> None:
    if vm.persistent_load is None:
        raise _no_persistent_load(vm, offset)
    pid = vm.pop()
    vm.push(vm.persistent_load(vm, pid, offset))


def _ext(vm: PickleMachine, offset: int) -> None:
    raise vm._fail(
        "extension-registry",
        "extension-registry opcode: it names a global through copyreg's registry, "
        "out of the scanner's sight",
        offset,
    )


for _code in (b"\x82", b"\x83", b"\x84"):
    _DISPATCH[_code[0]] = _ext


def product(shape: tuple[Any, ...]) -> int | None:
    """The element count of a shape of plain non-negative ints, else None (also for
    more dimensions than numpy has, or a size joblib's int64 cast refuses)."""
    if len(shape) > MAX_DIMS or not all(type(n) is int and 0 <= n < 1 << 63 for n in shape):
        return None
    return int(math.prod(shape))


__all__ = [
    "CALLS_OBJECT",
    "FAILS",
    "JOBLIB_WRAPPER",
    "PYTHON",
    "REFUSED",
    "C",
    "Global",
    "GlobalUse",
    "Obj",
    "Opaque",
    "PickleError",
    "PickleMachine",
    "SDict",
    "SList",
    "SSet",
    "StreamError",
    "importable",
    "product",
]
