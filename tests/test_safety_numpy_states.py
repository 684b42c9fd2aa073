"""numpy's own states, checked as numpy uses them: dtypes, arrays, scalars, bit generators.

Each refusal test builds the state numpy's C code would trust, shows in a subprocess
what the stock loader suffers with it (a crash, or bytes read from outside the
array), and that the scanner refuses the file. The acceptance tests dump real
numpy objects of many kinds and check the scanner's model against numpy itself.
Nothing here loads a pickle in the test process.
"""

from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from integrity.safety.arrays import read_joblib_array
from integrity.safety.pickle_vm import PickleMachine
from integrity.safety.scanner import scan_path
from integrity.safety.streams import FileSource
from integrity.safety.symbols import ArrayValue, SDict

_RECONSTRUCT = np._core.multiarray._reconstruct  # type: ignore[attr-defined]


class Reduce:
    """Pickles as func(*args) and, with a state, a BUILD: how the tests write the
    exact calls and states numpy's pickles hold, with any value in them."""

    def __init__(self, func: Any, args: tuple[Any, ...], state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[Any, ...]:
        if self.state is None:
            return (self.func, self.args)
        return (self.func, self.args, self.state)


def symbolic(data: bytes, tmp_path: Path, *, joblib_file: bool = False) -> Any:
    """The symbolic value the scanner's machine builds for a pickle (never loaded)."""
    path = tmp_path / "value.pkl"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        source = FileSource(fd, len(data))
        machine = PickleMachine(
            source, lambda use: None, read_joblib_array if joblib_file else None
        )
        return machine.run()
    finally:
        os.close(fd)


def joblib_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(value, buffer)
    return buffer.getvalue()


def tree_nodes() -> np.ndarray[Any, Any]:
    """A structured array shaped like scikit-learn's tree nodes, with a subarray
    field and a big-endian one."""
    nodes = np.zeros(
        4,
        dtype=[
            ("left_child", "<i8"),
            ("right_child", "<i8"),
            ("threshold", "<f8"),
            ("pair", ">i4", (2,)),
            ("flag", "?"),
        ],
    )
    nodes["left_child"] = [1, -1, 3, -1]
    nodes["right_child"] = [2, -1, -1, -1]
    nodes["threshold"] = [0.5, -2.0, 1.25, -2.0]
    nodes["pair"] = [[1, 2], [3, 4], [-5, 6], [7, 8]]
    nodes["flag"] = [True, False, True, False]
    return nodes


# ---------------------------------------------------------------- ArrayValue API


def _check_array_value(value: Any, real: np.ndarray[Any, Any]) -> None:
    assert isinstance(value, ArrayValue) and value.built
    assert value.shape == real.shape
    assert value.dtype is not None and value.dtype.itemsize == real.dtype.itemsize
    if real.dtype.names:
        for name in real.dtype.names:
            kind = real.dtype[name].base.kind
            got = value.ints(name) if kind in "biu" else value.floats(name)
            assert got is not None and list(got) == real[name].ravel().tolist(), name
    else:
        ints = value.ints()
        memory = real.ravel(order="F" if value.order == "F" else "C")
        assert ints is not None and list(ints) == memory.tolist()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_array_value_carries_reconstructed_arrays_content(protocol: int, tmp_path: Path) -> None:
    arrays = {
        "nodes": tree_nodes(),
        "ints": np.arange(-3, 7, dtype=">i2"),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.uint32).reshape(3, 4)),
        "bools": np.array([True, False, True]),
    }
    value = symbolic(pickle.dumps(arrays, protocol=protocol), tmp_path)
    assert isinstance(value, SDict)
    for name, real in arrays.items():
        _check_array_value(value.items[name], real)
    assert value.items["fortran"].order == "F"


def test_array_value_carries_joblib_arrays_content(tmp_path: Path) -> None:
    arrays = {"nodes": tree_nodes(), "ints": np.arange(10, dtype=np.int32).reshape(2, 5)}
    value = symbolic(joblib_bytes(arrays), tmp_path, joblib_file=True)
    for name, real in arrays.items():
        _check_array_value(value.items[name], real)


def test_array_value_keeps_no_float_content(tmp_path: Path) -> None:
    """Only integer and structured content is kept: a float array's bytes are skipped
    (joblib) or dropped, and a validator asking for them gets None."""
    for data, joblib_file in (
        (pickle.dumps(np.arange(4.0), protocol=4), False),
        (joblib_bytes(np.arange(4.0)), True),
    ):
        value = symbolic(data, tmp_path, joblib_file=joblib_file)
        assert isinstance(value, ArrayValue) and value.shape == (4,)
        assert value.data is None and value.ints() is None and value.floats() is None


def test_array_value_content_stops_at_the_budget(tmp_path: Path) -> None:
    """Beyond the file's content budget, array bytes are skipped, not kept."""
    path = tmp_path / "big.pkl"
    path.write_bytes(joblib_bytes({"a": np.arange(1000, dtype=np.int64), "b": np.arange(10)}))
    fd = os.open(path, os.O_RDONLY)
    try:
        machine = PickleMachine(
            FileSource(fd, path.stat().st_size), lambda use: None, read_joblib_array
        )
        machine.budget.left = 8000 + 40
        value = machine.run()
    finally:
        os.close(fd)
    assert value.items["a"].ints() is not None
    assert value.items["b"].ints() is None and value.items["b"].shape == (10,)


def test_array_value_from_protocol_5_buffers(tmp_path: Path) -> None:
    real = np.arange(24, dtype=np.int16).reshape(2, 3, 4).transpose(1, 0, 2)
    value = symbolic(pickle.dumps(real, protocol=5), tmp_path)
    assert isinstance(value, ArrayValue) and value.shape == real.shape and value.order == "K"
    ints = value.ints()
    assert ints is not None and sorted(ints) == sorted(real.ravel().tolist())


def scan(data: bytes, tmp_path: Path, name: str = "model.pkl") -> list[str]:
    path = tmp_path / name
    path.write_bytes(data)
    return [f"{f.code}: {f.message}" for f in scan_path(path).findings]


def loads_in_subprocess(data: bytes, then: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Load `data` with stock pickle.load in a child process, then run `then` on the
    result `value`: what a user's process suffers."""
    path = tmp_path / "payload.pkl"
    path.write_bytes(data)
    code = textwrap.dedent(
        f"""
        import pickle, sys
        import numpy as np
        with open({str(path)!r}, "rb") as f:
            value = pickle.load(f)
        """
    ) + textwrap.dedent(then)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def crashed(run: subprocess.CompletedProcess[str]) -> bool:
    return run.returncode in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT)
