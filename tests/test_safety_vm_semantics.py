"""The symbolic pickle machine against the real unpicklers, one test per mechanism.

Each reproducer is proven real first: the stock loader it targets (the C unpickler behind
`pickle.load`, the pure-Python `pickle._Unpickler` behind `joblib.load`, or `joblib.load`
itself) runs its payload, in a sandboxed subprocess that leaves a marker file. Then the scan
must refuse it (or, for what no loader unpickles, call it not a pickle).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from integrity.safety.scanner import scan_path

# ------------------------------------------------------------------ array spans


def test_array_spans_are_where_joblib_keeps_the_raw_array_data(tmp_path: Path) -> None:
    import joblib
    import numpy as np

    arrays = [np.arange(5, dtype="<f8"), np.array([[1, 2], [3, 4]], dtype="<i4"), np.zeros(0)]
    path = tmp_path / "arrays.joblib"
    joblib.dump({"a": arrays[0], "b": arrays[1], "c": arrays[2]}, path)
    result = scan_path(path)
    assert result.safe, result.findings
    data = path.read_bytes()
    assert len(result.array_spans) == 3
    previous_end = 0
    for (start, end), array in zip(result.array_spans, arrays, strict=True):
        assert previous_end <= start < end <= len(data)
        padding = data[start]
        assert data[start + 1 : start + 1 + padding] == b"\xff" * padding
        assert data[start + 1 + padding : end] == array.tobytes()
        previous_end = end


def test_array_spans_count_decompressed_bytes_in_a_compressed_file(tmp_path: Path) -> None:
    import joblib
    import numpy as np

    array = np.arange(1000, dtype="<i8")
    path = tmp_path / "array.joblib.z"
    joblib.dump(array, path, compress=("zlib", 3))
    result = scan_path(path)
    assert result.safe, result.findings
    data = zlib.decompress(path.read_bytes())
    [(start, end)] = result.array_spans
    assert data[start + 1 + data[start] : end] == array.tobytes()


@pytest.mark.parametrize("content", [b"\x80\x04N.", b"plain text, not a pickle\n"])
def test_array_spans_are_empty_without_arrays(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(content)
    assert scan_path(path).array_spans == []
