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

Frames follow both unpicklers: the Python one (joblib's) fails on an opcode
that crosses a frame's end, the C one (pickle.load) ignores frames and reads
on. A frame that disagrees with its data is therefore a finding, after which
the machine reads on linearly, as the C unpickler does, to name what follows.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from integrity.safety import states
from integrity.safety.streams import NO_FENCE, Source, StreamError
from integrity.safety.symbols import Global, Obj, Opaque, SDict, SList, SSet

MAX_LINE = 1 << 20  # protocol 0 text arguments; longer lines are refused
MAX_KEPT = 1 << 16  # byte/str arguments longer than this are skipped, kept as opaque
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


# What the real unpicklers do where the machine stops (PickleError.nature).
FAILS = "fails"  # every unpickler fails here too: nothing from here on can run
REFUSED = "refused"  # an unpickler may go on (and run code): the scanner refuses
CALLS_OBJECT = "calls-object"  # calls an object an allowed callable returned


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


class MemoOverlay:
    """A memo that reads through to another and keeps its own writes (a look-ahead
    that must not change the machine it looks ahead for)."""

    def __init__(self, base: MemoLike) -> None:
        self._base = base
        self._own: dict[int, Any] = {}
        self._base_len = len(base)
        self._new_keys = 0

    def __getitem__(self, key: int) -> Any:
        return self._own[key] if key in self._own else self._base[key]

    def __setitem__(self, key: int, value: Any) -> None:
        if key not in self._own and key not in self._base:
            self._new_keys += 1
        self._own[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self._own or key in self._base

    def __len__(self) -> int:
        return self._base_len + self._new_keys


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
        self.limit: int | None = None  # no opcode may start beyond this offset (set before run)
        self._running = False  # the source's fence is this machine's
        # After a frame problem the Python unpickler has failed; the C one
        # ignores frames: reading goes on linearly, with plain pickle.load's
        # semantics (no joblib array data).
        self.linear = False
        # Containers and objects are not changed (a look-ahead on shared state).
        self.readonly = False
        # Findings that do not stop the reading (frame problems), also handed to
        # on_problem as they are met.
        self.problems: list[PickleError] = []
        self.on_problem: Callable[[PickleError], None] | None = None
        self.op_offset = 0  # offset of the opcode being followed
        # Called where joblib reads raw array data, to follow the same bytes as
        # plain pickle.load would (it reads them as opcodes).
        self.shadow: Callable[[PickleMachine], None] | None = None

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

    def _frame_problem(self, message: str) -> None:
        problem = PickleError(
            "bad-frame",
            f"{message}: joblib's (Python) unpickler stops there, pickle.load reads on",
            self.op_offset,
        )
        self.problems.append(problem)
        if self.on_problem is not None:
            self.on_problem(problem)
        self.linear = True
        self.on_array = None

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

    def _read_bytes_arg(self, n: int, kind: str) -> Any:
        if n <= MAX_KEPT:
            return self.read(n)
        self.skip(n)
        return Opaque(kind, n)

    # ------------------------------------------------------------ stack

    def pop(self) -> Any:
        if not self.stack:
            raise self._fail("malformed", "the pickle pops from an empty stack", nature=FAILS)
        return self.stack.pop()

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
        return Global(module, name)

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
        while True:
            pos = source.pos
            if pos < source.stop:  # in the window, before any frame end or limit
                source.pos = pos + 1
                code = source.buf[pos]
                offset = source.base + pos
            else:
                offset, code = self._next_opcode()
            self.op_offset = offset
            handler = dispatch[code]
            if handler is None:
                raise self._fail("unknown-opcode", f"unknown opcode 0x{code:02x}", offset, FAILS)
            if handler(self, offset):
                return self.pop()

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


def _int_text(vm: PickleMachine, data: bytes, offset: int, base: int = 0) -> int:
    try:
        return int(data, base)
    except ValueError:
        raise vm._fail("malformed", "an integer argument is not a number", offset, FAILS) from None


# What C's strtol(s, &end, 0) reads whole: the C unpickler's INT takes it ("010" is
# octal 8 there) before it falls back to int(s, 0), which is all the Python one does.
_STRTOL = re.compile(rb"^[ \t\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$")


@_op(b"I")
def _int(vm: PickleMachine, offset: int) -> None:
    data = vm.readline()
    if data == b"00":
        vm.push(False)
    elif data == b"01":
        vm.push(True)
    elif match := _STRTOL.match(data):
        sign, digits = match.group(1), match.group(2)
        base = 16 if digits[:2].lower() == b"0x" else 8 if digits[:1] == b"0" else 10
        try:
            value = int(digits[2:] if base == 16 else digits, base)
        except ValueError:  # over sys.get_int_max_str_digits(): both unpicklers fail too
            raise vm._fail("malformed", "an integer argument is too long", offset, FAILS) from None
        vm.push(-value if sign == b"-" else value)
    else:
        vm.push(_int_text(vm, data, offset))


@_op(b"L")
def _long(vm: PickleMachine, offset: int) -> None:
    data = vm.readline()
    if data.endswith(b"L"):
        data = data[:-1]
    vm.push(_int_text(vm, data, offset))


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


@_op(b"F")
def _float(vm: PickleMachine, offset: int) -> None:
    data = vm.readline()
    try:
        vm.push(float(data))
    except ValueError:
        raise vm._fail("malformed", "a float argument is not a number", offset, FAILS) from None


@_op(b"G")
def _binfloat(vm: PickleMachine, offset: int) -> None:
    vm.push(struct.unpack(">d", vm.read(8))[0])


# ---- strings and bytes


def _ascii(vm: PickleMachine, data: Any, offset: int) -> Any:
    # The unpickler decodes protocol 0-2 byte strings as ASCII by default (a
    # loader may pass another encoding: the scanner refuses, not "fails").
    if not isinstance(data, bytes):
        return data
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise vm._fail("malformed", "a byte string is not ASCII", offset) from None


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
    vm.skip(n)
    vm.push(Opaque("bytearray", n))  # mutable: never taken for bytes


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
        vm.stack[-1] = Opaque("buffer", value.size if isinstance(value, Opaque) else 0)
        return
    raise vm._fail(
        "malformed", f"READONLY_BUFFER on {_describe(value)}, not a buffer", offset, FAILS
    )


# ---- containers


@_op(b")")
def _empty_tuple(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(())


@_op(b"t")
def _tuple(vm: PickleMachine, offset: int) -> None:
    vm.push(tuple(vm.pop_mark()))


@_op(b"\x85")
def _tuple1(vm: PickleMachine, offset: int) -> None:
    vm.push((vm.pop(),))


@_op(b"\x86")
def _tuple2(vm: PickleMachine, offset: int) -> None:
    b = vm.pop()
    a = vm.pop()
    vm.push((a, b))


@_op(b"\x87")
def _tuple3(vm: PickleMachine, offset: int) -> None:
    c = vm.pop()
    b = vm.pop()
    a = vm.pop()
    vm.push((a, b, c))


@_op(b"]")
def _empty_list(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(SList())


@_op(b"l")
def _list(vm: PickleMachine, offset: int) -> None:
    vm.push(SList(vm.pop_mark()))


@_op(b"}")
def _empty_dict(vm: PickleMachine, offset: int) -> None:
    vm.stack.append(SDict())


def _set_item(target: SDict, key: Any, value: Any) -> None:
    # Only plain keys are hashed: hashing a tuple of shared tuples costs 2**depth.
    if key is None or isinstance(key, str | bytes | int | float):
        target.items[key] = value
    else:
        target.other.append((key, value))


@_op(b"d")
def _dict(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    if len(items) % 2:
        raise vm._fail("malformed", "DICT with an odd number of items", offset, FAILS)
    result = SDict()
    for i in range(0, len(items), 2):
        _set_item(result, items[i], items[i + 1])
    vm.push(result)


@_op(b"\x8f")
def _empty_set(vm: PickleMachine, offset: int) -> None:
    vm.push(SSet())


@_op(b"\x91")
def _frozenset(vm: PickleMachine, offset: int) -> None:
    vm.push(SSet(vm.pop_mark()))


def _container_target(vm: PickleMachine, kinds: tuple[type, ...], what: str, offset: int) -> Any:
    target = vm.top()
    if isinstance(target, kinds):
        return target
    raise vm._fail(
        "indirect-call",
        f"{what} on {_describe(target)}: it would call a method of that object",
        offset,
        # A plain value has no such method (or is immutable): the unpickler fails.
        FAILS if _inert(target) else REFUSED,
    )


@_op(b"a")
def _append(vm: PickleMachine, offset: int) -> None:
    value = vm.pop()
    target = _container_target(vm, (SList, Obj), "APPEND", offset)
    if isinstance(target, SList) and not vm.readonly:
        target.items.append(value)


@_op(b"e")
def _appends(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    target = _container_target(vm, (SList, Obj), "APPENDS", offset)
    if isinstance(target, SList) and not vm.readonly:
        target.items.extend(items)


# SETITEM on a list assigns by index (list.__setitem__, nothing else runs); the
# scanner does not follow list contents, so it only lets it happen.
@_op(b"s")
def _setitem(vm: PickleMachine, offset: int) -> None:
    value = vm.pop()
    key = vm.pop()
    target = _container_target(vm, (SDict, SList, Obj), "SETITEM", offset)
    if isinstance(target, SDict) and not vm.readonly:
        _set_item(target, key, value)


@_op(b"u")
def _setitems(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    target = _container_target(vm, (SDict, SList, Obj), "SETITEMS", offset)
    if len(items) % 2:
        raise vm._fail(
            "malformed",
            "SETITEMS with an odd number of items",
            offset,
            REFUSED if isinstance(target, Obj) else FAILS,
        )
    if isinstance(target, SDict) and not vm.readonly:
        for i in range(0, len(items), 2):
            _set_item(target, items[i], items[i + 1])


@_op(b"\x90")
def _additems(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    target = _container_target(vm, (SSet,), "ADDITEMS", offset)
    if not vm.readonly:
        target.items.extend(items)


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


# GET and PUT read their key in base 10 (int(line)), unlike INT's base 0:
# "01" is key 1 to the unpickler.
@_op(b"g")
def _get(vm: PickleMachine, offset: int) -> None:
    _memo_get(vm, _int_text(vm, vm.readline(), offset, 10), offset)


@_op(b"h")
def _binget(vm: PickleMachine, offset: int) -> None:
    _memo_get(vm, vm.read_byte(), offset)


@_op(b"j")
def _long_binget(vm: PickleMachine, offset: int) -> None:
    _memo_get(vm, struct.unpack("<I", vm.read(4))[0], offset)


@_op(b"p")
def _put(vm: PickleMachine, offset: int) -> None:
    _memo_put(vm, _int_text(vm, vm.readline(), offset, 10), offset)


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
        raise vm._fail(
            "indirect-global",
            "STACK_GLOBAL with a name that is not a plain string "
            f"({_describe(module)}, {_describe(name)})",
            offset,
            FAILS,
        )
    vm.push(vm.resolve_global(module, name, offset))


def _mentions_wrapper(value: Any, depth: int = 0) -> bool:
    if value == JOBLIB_WRAPPER:
        return True
    if isinstance(value, tuple) and depth < 4:
        return any(_mentions_wrapper(item, depth + 1) for item in value)
    return False


def _make(
    vm: PickleMachine,
    func: Global,
    args: tuple[Any, ...],
    offset: int,
    init: bool,
    kwargs: tuple[Any, ...] = (),
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
    if func != JOBLIB_WRAPPER and _mentions_wrapper(args + kwargs):
        raise vm._fail(
            "malformed",
            f"joblib.numpy_pickle.NumpyArrayWrapper passed to {func.qualified}: an object "
            "it makes may be an array wrapper joblib reads array data after",
            offset,
        )
    made = Obj(func, args)
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
    _make(vm, cls, args, offset, init=False, kwargs=tuple(kwargs.items.values()))


@_op(b"i")
def _inst(vm: PickleMachine, offset: int) -> None:
    module = _text_name(vm, offset)
    name = _text_name(vm, offset)
    cls = vm.resolve_global(module, name, offset)
    _make(vm, cls, tuple(vm.pop_mark()), offset, init=True)


@_op(b"o")
def _obj(vm: PickleMachine, offset: int) -> None:
    items = vm.pop_mark()
    if not items:
        raise vm._fail("malformed", "OBJ without a class", offset, FAILS)
    cls = vm.callable_of(items[0], "OBJ", offset)
    _make(vm, cls, tuple(items[1:]), offset, init=True)


@_op(b"b")
def _build(vm: PickleMachine, offset: int) -> None:
    state = vm.pop()
    target = vm.top()
    if not isinstance(target, Obj):
        raise vm._fail(
            "indirect-call",
            f"BUILD on {_describe(target)}: it would set attributes of something "
            "that is not an object made by an allowed class",
            offset,
            FAILS if _inert(target) else REFUSED,
        )
    try:
        # A look-ahead checks the state too (pickle.load would build it), on a
        # copy: it must not change what the machine it looks ahead for holds.
        built = states.checked_build(replace(target) if vm.readonly else target, state)
    except states.UnsafeState as exc:
        raise vm._fail(
            "unsafe-state", f"{target.callable.qualified}: {exc.message}", offset
        ) from None
    if vm.readonly:
        return
    vm.stack[-1] = built
    if vm.on_array is not None and target.callable == JOBLIB_WRAPPER:
        vm.stack[-1] = vm.on_array(vm, target, offset)


JOBLIB_WRAPPER = Global("joblib.numpy_pickle", "NumpyArrayWrapper")
# ---- refused outright


@_op(b"P")
def _persid(vm: PickleMachine, offset: int) -> None:
    raise vm._fail(
        "persistent-id",
        "persistent-id opcode: the loader would hand its argument to persistent_load",
        offset,
    )


@_op(b"Q")
def _binpersid(vm: PickleMachine, offset: int) -> None:
    _persid(vm, offset)


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
    """The element count of a shape of plain non-negative ints, else None."""
    if not all(type(n) is int and n >= 0 for n in shape):
        return None
    return int(math.prod(shape))


__all__ = [
    "CALLS_OBJECT",
    "FAILS",
    "JOBLIB_WRAPPER",
    "REFUSED",
    "Global",
    "GlobalUse",
    "MemoOverlay",
    "Obj",
    "Opaque",
    "PickleError",
    "PickleMachine",
    "SDict",
    "SList",
    "SSet",
    "StreamError",
    "product",
]
