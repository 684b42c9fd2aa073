"""Byte streams the scanner reads: a file, or a file decompressed on the fly.

Both give the same interface (`read`, `readline`, `skip`, `tell`), never hold
more than about a block in memory, and stop a decompression bomb: output
beyond a bound is refused, not expanded.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Protocol

BLOCK = 1 << 20
# Decompressed output is bounded: a ratio to the compressed size (real models
# compress 2-20x; zero-filled arrays more), plus a floor for tiny files.
MAX_RATIO = 200
MIN_BOUND = 256 << 20


class StreamError(Exception):
    """The stream cannot be read to the end as its format says (bomb, corrupt data)."""


class Source(Protocol):
    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the stream."""
        ...

    def readline(self, limit: int) -> bytes:
        """Bytes up to and including b"\\n", at most `limit`; no newline means end or limit."""
        ...

    def skip(self, n: int) -> int:
        """Advance n bytes without keeping them; returns how many were there."""
        ...

    def tell(self) -> int: ...


class FileSource:
    """A regular file read through a large buffer; skips are seeks."""

    def __init__(self, fd: int, size: int, start: int = 0) -> None:
        # The caller owns fd; this buffered view is dropped with the source.
        self._file = open(fd, "rb", buffering=BLOCK, closefd=False)  # noqa: SIM115
        self._file.seek(start)
        self._size = size

    def read(self, n: int) -> bytes:
        return self._file.read(n)

    def readline(self, limit: int) -> bytes:
        return self._file.readline(limit)

    def skip(self, n: int) -> int:
        here = self._file.tell()
        n = max(0, min(n, self._size - here))
        self._file.seek(here + n)
        return n

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int) -> None:
        """Back to an offset read before (a look-ahead returns here)."""
        self._file.seek(offset)


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = ...) -> bytes: ...


class _Zlib:
    """zlib's decompressobj with the needs_input interface of bz2 and lzma."""

    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)
        self._tail = b""
        self.needs_input = True

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        out = self._d.decompress(self._tail + data if self._tail else data, max(max_length, 0))
        self._tail = self._d.unconsumed_tail
        self.needs_input = not self._tail and len(out) < max_length
        return out


def decompressor_factory(method: str) -> type[_Decompressor] | None:
    """A no-argument constructor for `method`'s decompressor, None if unavailable."""
    if method == "zlib":
        return lambda: _Zlib(zlib.MAX_WBITS)  # type: ignore[return-value]
    if method == "gzip":
        return lambda: _Zlib(16 + zlib.MAX_WBITS)  # type: ignore[return-value]
    if method == "bz2":
        return bz2.BZ2Decompressor
    if method == "xz":
        return lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)  # type: ignore[return-value]
    if method == "lzma":
        return lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE)  # type: ignore[return-value]
    if method == "lz4":
        try:
            import lz4.frame
        except ImportError:
            return None
        return lz4.frame.LZ4FrameDecompressor  # type: ignore[no-any-return]
    raise ValueError(method)


class DecompressingSource:
    """The decompressed content of a file, streamed; concatenated streams are
    read one after another, as joblib (and gzip, bz2, xz readers) do."""

    def __init__(self, fd: int, size: int, method: str, start: int = 0) -> None:
        factory = decompressor_factory(method)
        if factory is None:
            raise StreamError(f"{method} decompression is not available (pip install lz4)")
        self._factory = factory
        self._method = method
        self._decompressor = factory()
        self._raw = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
        self._raw.seek(start)
        self._limit = max(MIN_BOUND, size * MAX_RATIO)
        self._buffer = b""
        self._pos = 0  # into _buffer
        self._consumed = 0  # decompressed bytes before _buffer
        self._produced = 0

    def _fill(self) -> bool:
        """Decompress one more block into the buffer; False at the end of input."""
        while True:
            d = self._decompressor
            if d.eof:
                data = d.unused_data or self._raw.read(BLOCK)
                if not data:
                    return False
                self._decompressor = d = self._factory()
            elif d.needs_input:
                data = self._raw.read(BLOCK)
                if not data:
                    raise StreamError(f"{self._method} stream is truncated")
            else:
                data = b""
            try:
                out = d.decompress(data, BLOCK)
            except Exception as exc:  # OSError, EOFError, zlib.error, LZMAError, lz4's RuntimeError
                raise StreamError(f"corrupt {self._method} data: {exc}") from None
            if out:
                self._produced += len(out)
                if self._produced > self._limit:
                    raise StreamError(
                        f"decompresses to more than {self._limit} bytes "
                        f"({MAX_RATIO}x the file): refused as a decompression bomb"
                    )
                self._consumed += self._pos
                self._buffer = self._buffer[self._pos :] + out
                self._pos = 0
                return True

    def _available(self) -> int:
        return len(self._buffer) - self._pos

    def read(self, n: int) -> bytes:
        while self._available() < n and self._fill():
            pass
        chunk = self._buffer[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def readline(self, limit: int) -> bytes:
        while True:
            end = self._buffer.find(b"\n", self._pos, self._pos + limit)
            if end >= 0:
                return self.read(end + 1 - self._pos)
            if self._available() >= limit or not self._fill():
                return self.read(min(limit, self._available()))

    def skip(self, n: int) -> int:
        skipped = 0
        while skipped < n:
            if not self._available() and not self._fill():
                break
            take = min(n - skipped, self._available())
            self._pos += take
            skipped += take
            if self._pos == len(self._buffer):
                self._consumed += self._pos
                self._buffer = b""
                self._pos = 0
        return skipped

    def tell(self) -> int:
        return self._consumed + self._pos
