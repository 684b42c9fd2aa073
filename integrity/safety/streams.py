"""Byte streams the scanner reads: a file, a file decompressed on the fly (and, in
`archives`, an archive member).

Each is read through a window in memory (`Source.buf`, at most about a block
past the read position: never the whole stream), which the symbolic pickle
machine reads directly: `buf[pos]` is the next byte, at stream offset
`base + pos`. Below `stop` a read needs no check at all, so an opcode costs a
slice and an integer addition; at `stop` (the window's end, or the `fence` the
running machine sets where its frame ends) the machine takes its slow path,
which does every check and refills the window. A decompressed stream is also
bounded: output beyond a bound is refused as a bomb, not expanded.
"""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
from typing import Protocol

BLOCK = 1 << 20
# Decompressed output is bounded: a ratio to the compressed size (real models
# compress 2-20x; zero-filled arrays more), plus a floor for tiny files.
MAX_RATIO = 200
MIN_BOUND = 256 << 20
NO_FENCE = 1 << 64  # beyond any stream offset


class StreamError(Exception):
    """The stream cannot be read to the end as its format says (bomb, corrupt data)."""


class Source:
    """A byte stream read through a window (`buf`) that refills from `_more`.

    Invariant: `stop == min(len(buf), fence - base)`; every change of `buf`,
    `base` or `fence` keeps it (a change of `pos` alone does not touch it)."""

    __slots__ = ("base", "buf", "fence", "pos", "stop")

    def __init__(self, start: int = 0) -> None:
        self.buf = b""
        self.pos = 0  # into buf
        self.base = start  # stream offset of buf[0]
        self.fence = NO_FENCE  # stream offset the running machine must be told about
        self.stop = 0

    # ---- what a kind of stream provides

    def _more(self) -> bytes:
        """The next chunk of the stream after the window, b"" at its end."""
        raise NotImplementedError

    def _skip_beyond(self, n: int) -> int:
        """Pass over n bytes after the (empty) window; how many were there."""
        done = 0
        while done < n:
            chunk = self._more()
            if not chunk:
                break
            take = min(n - done, len(chunk))
            done += take
            if take < len(chunk):  # the rest of the chunk is the new window
                self.buf, self.pos = chunk, take
                return done
            self.base += take
        return done

    def _reposition(self, offset: int) -> None:
        raise StreamError("this stream cannot go back to an offset it has left")

    # ---- reading

    def _restop(self) -> None:
        self.stop = min(len(self.buf), self.fence - self.base)

    def set_fence(self, fence: int) -> None:
        self.fence = fence
        self.stop = min(len(self.buf), fence - self.base)

    def fill(self, n: int) -> int:
        """Make n bytes available from pos where the stream has them; how many are."""
        avail = len(self.buf) - self.pos
        if avail >= n:
            return avail
        parts = [self.buf[self.pos :]]
        while avail < n:
            chunk = self._more()
            if not chunk:
                break
            parts.append(chunk)
            avail += len(chunk)
        self.base += self.pos
        self.buf = b"".join(parts)
        self.pos = 0
        self._restop()
        return avail

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the stream."""
        if self.pos + n > len(self.buf):
            self.fill(n)
        pos = self.pos
        data = self.buf[pos : pos + n]
        self.pos = pos + len(data)
        return data

    def peek(self, n: int) -> bytes:
        """The next n bytes (fewer at the end), left unread."""
        self.fill(n)
        return self.buf[self.pos : self.pos + n]

    def readline(self, limit: int) -> bytes:
        """Bytes up to and including b"\\n", at most `limit`; no newline means end or limit."""
        searched = self.pos
        while True:
            pos = self.pos
            end = self.buf.find(b"\n", searched, pos + limit)
            if end >= 0:
                self.pos = end + 1
                return self.buf[pos : end + 1]
            avail = len(self.buf) - pos
            if avail >= limit or self.fill(avail + 1) <= avail:
                return self.read(min(avail, limit))
            searched = self.pos + avail  # the window was refilled: pos is 0 now

    def skip(self, n: int) -> int:
        """Advance n bytes without keeping them; returns how many were there."""
        if n <= 0:
            return 0
        avail = len(self.buf) - self.pos
        if n <= avail:
            self.pos += n
            return n
        self.base += len(self.buf)
        self.buf = b""
        self.pos = 0
        skipped = avail + self._skip_beyond(n - avail)
        self._restop()
        return skipped

    def tell(self) -> int:
        return self.base + self.pos

    def seek(self, offset: int) -> None:
        """Back to an offset read before (a look-ahead returns there)."""
        if self.base <= offset <= self.base + len(self.buf):
            self.pos = offset - self.base
        else:
            self._reposition(offset)


class FileSource(Source):
    """A regular file, read in blocks with pread (the fd's own offset is left alone);
    skips past the window are jumps, not reads."""

    __slots__ = ("_fd", "_next", "_size")

    def __init__(self, fd: int, size: int, start: int = 0) -> None:
        super().__init__(start)
        self._fd = fd  # the caller owns it
        self._size = size
        self._next = start  # file offset of the next block

    def _more(self) -> bytes:
        data = os.pread(self._fd, BLOCK, self._next)
        self._next += len(data)
        return data

    def _skip_beyond(self, n: int) -> int:
        n = max(0, min(n, self._size - self.base))
        self.base += n
        self._next = self.base
        return n

    def _reposition(self, offset: int) -> None:
        self.buf = b""
        self.pos = 0
        self.base = self._next = offset
        self._restop()


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


class DecompressingSource(Source):
    """The decompressed content of a file, streamed a block at a time; concatenated
    streams are read one after another, as joblib (and gzip, bz2, xz readers) do."""

    __slots__ = ("_decompressor", "_factory", "_limit", "_method", "_produced", "_raw")

    def __init__(self, fd: int, size: int, method: str, start: int = 0) -> None:
        super().__init__()
        factory = decompressor_factory(method)
        if factory is None:
            raise StreamError(f"{method} decompression is not available (pip install lz4)")
        self._factory = factory
        self._method = method
        self._decompressor = factory()
        self._raw = open(fd, "rb", buffering=0, closefd=False)  # noqa: SIM115
        self._raw.seek(start)
        self._limit = max(MIN_BOUND, size * MAX_RATIO)
        self._produced = 0

    def _more(self) -> bytes:
        """Decompress one more block (at most BLOCK bytes); b"" at the end of input."""
        while True:
            d = self._decompressor
            if d.eof:
                data = d.unused_data or self._raw.read(BLOCK)
                if not data:
                    return b""
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
                return out
