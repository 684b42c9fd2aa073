r"""The line formats of GNU coreutils `sha256sum`: pure functions on bytes, no I/O.

Output (`sha256sum FILE` and `sha256sum --tag FILE`, coreutils 9.1)::

    <64 lowercase hex><space><space or '*'><name>
    SHA256 (<name>) = <64 lowercase hex>

A name holding a backslash, a newline or a carriage return is escaped: the whole
line starts with a backslash, and in the name `\\` stands for a backslash, `\n`
for a newline and `\r` for a carriage return. Names are bytes: on POSIX a file
name is any bytes but NUL and `/`-separated, whatever the locale.

Input (`sha256sum -c`) accepts what `sha256sum` prints, with the same rules as
coreutils: leading spaces or tabs are skipped, a leading backslash marks an
escaped name, the digest is 64 hex digits in either case, one trailing CR is
dropped (CRLF files), empty lines and lines starting with `#` are ignored. The
"BSD reversed" form `DIGEST NAME` (one space, as `sha256 -r` prints) is not
accepted: it cannot be told apart from a name starting with a space or `*`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal

DIGEST_HEX_LENGTH = 64
TAG = b"SHA256"
_HEX_DIGITS = frozenset(string.hexdigits.encode("ascii"))
_BLANKS = b" \t"
# `MD5 (name) = ...`, `SHA512(name)= ...`: another algorithm's tagged line.
_OTHER_TAG = re.compile(rb"([A-Za-z][A-Za-z0-9-]{0,15}) ?\(")
_UNESCAPES = {ord("\\"): b"\\", ord("n"): b"\n", ord("r"): b"\r"}

CheckStatus = Literal["OK", "FAILED", "FAILED open or read"]


class ChecksumLineError(ValueError):
    """A checksum line sha256sum would report as improperly formatted; the text says why."""


@dataclass(frozen=True)
class ChecksumEntry:
    """One parsed checksum line."""

    digest: str  # 64 lowercase hex digits
    name: bytes  # unescaped, never empty, never holds NUL
    binary: bool = False  # the '*' marker (meaningless on POSIX, kept for fidelity)
    tagged: bool = False  # the BSD form `SHA256 (name) = digest`


def needs_escape(name: bytes) -> bool:
    """Whether sha256sum escapes this name (it holds a backslash, a newline or a CR)."""
    return b"\\" in name or b"\n" in name or b"\r" in name


def escape_name(name: bytes) -> bytes:
    r"""The name with backslash, newline and CR written as `\\`, `\n`, `\r`."""
    return name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")


def unescape_name(text: bytes) -> bytes:
    """Inverse of `escape_name`; raises ChecksumLineError on any other escape."""
    if b"\\" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        byte = text[i]
        if byte != ord("\\"):
            out.append(byte)
            i += 1
            continue
        if i + 1 == len(text):
            raise ChecksumLineError("the file name ends with a lone backslash")
        replacement = _UNESCAPES.get(text[i + 1])
        if replacement is None:
            shown = text[i : i + 2].decode("ascii", "backslashreplace")
            raise ChecksumLineError(
                f"invalid escape {shown!r} in the file name (only \\\\, \\n and \\r)"
            )
        out += replacement
        i += 2
    return bytes(out)


def _shown(name: bytes) -> tuple[bytes, bytes]:
    """(line prefix, name as written) following sha256sum's escaping rule."""
    if needs_escape(name):
        return b"\\", escape_name(name)
    return b"", name


def format_line(digest: str, name: bytes, *, binary: bool = False) -> bytes:
    """The line `sha256sum` prints for `name` (text mode unless `binary`), newline included."""
    prefix, shown = _shown(name)
    marker = b" *" if binary else b"  "
    return prefix + digest.encode("ascii") + marker + shown + b"\n"


def format_tag_line(digest: str, name: bytes) -> bytes:
    """The line `sha256sum --tag` prints for `name`, newline included."""
    prefix, shown = _shown(name)
    return prefix + TAG + b" (" + shown + b") = " + digest.encode("ascii") + b"\n"


def format_check_status(name: bytes, status: CheckStatus) -> bytes:
    """A `sha256sum -c` result line: `name: OK`, `name: FAILED`, `name: FAILED open or read`.

    The name is escaped like in `format_line`. (coreutils 9.1 itself escapes here
    only names holding a newline and prints a raw CR or backslash; later releases
    escape all three, as done here, so that a CR in a name cannot overwrite a
    FAILED on a terminal.)
    """
    prefix, shown = _shown(name)
    return prefix + shown + b": " + status.encode("ascii") + b"\n"


def _digest(text: bytes) -> str:
    if len(text) != DIGEST_HEX_LENGTH or not _HEX_DIGITS.issuperset(text):
        shown = text[:80].decode("ascii", "backslashreplace")
        raise ChecksumLineError(
            f"expected a SHA-256 digest of {DIGEST_HEX_LENGTH} hex digits, got {shown!r}"
        )
    return text.decode("ascii").lower()


def _parse_tagged(rest: bytes, escaped: bool) -> ChecksumEntry:
    """`rest` follows the `SHA256` tag: ` (NAME) = DIGEST`."""
    if rest.startswith(b" "):
        rest = rest[1:]
    if not rest.startswith(b"("):
        raise ChecksumLineError("expected 'SHA256 (NAME) = DIGEST'")
    rest = rest[1:]
    close = rest.rfind(b")")
    if close < 0:
        raise ChecksumLineError("no ')' closes the file name in 'SHA256 (NAME) = DIGEST'")
    raw_name, tail = rest[:close], rest[close + 1 :].lstrip(_BLANKS)
    if not tail.startswith(b"="):
        raise ChecksumLineError("expected '= DIGEST' after 'SHA256 (NAME)'")
    digest = _digest(tail[1:].lstrip(_BLANKS))
    name = unescape_name(raw_name) if escaped else raw_name
    if not name:
        raise ChecksumLineError("the file name is empty")
    return ChecksumEntry(digest, name, binary=False, tagged=True)


def _parse_plain(rest: bytes, escaped: bool) -> ChecksumEntry:
    """`rest` is `DIGEST  NAME` or `DIGEST *NAME`."""
    end = 0
    while end < len(rest) and rest[end] not in _BLANKS:
        end += 1
    other_tag = _OTHER_TAG.match(rest)
    if other_tag:
        tag = other_tag.group(1).decode("ascii")
        raise ChecksumLineError(f"a {tag} checksum, not SHA256")
    if end == len(rest):
        raise ChecksumLineError("expected 'DIGEST  NAME' or 'SHA256 (NAME) = DIGEST'")
    digest = _digest(rest[:end])
    after = rest[end + 1 :]
    if len(after) < 2 or after[:1] not in (b" ", b"*"):
        raise ChecksumLineError(
            "expected two spaces (or a space and '*') between the digest and the file name"
        )
    raw_name = after[1:]
    name = unescape_name(raw_name) if escaped else raw_name
    if not name:
        raise ChecksumLineError("the file name is empty")
    return ChecksumEntry(digest, name, binary=after[:1] == b"*", tagged=False)


def parse_line(line: bytes) -> ChecksumEntry | None:
    """Parse one line of a checksum list (with or without its newline).

    Returns None for the lines sha256sum skips: empty ones (after dropping the
    newline and one CR) and comments (`#` as the very first byte). Raises
    ChecksumLineError for a line sha256sum would call improperly formatted.
    """
    if line.startswith(b"#"):
        return None
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        return None
    if b"\0" in line:
        raise ChecksumLineError("the line holds a NUL byte")
    start = 0
    while start < len(line) and line[start] in _BLANKS:
        start += 1
    escaped = line[start : start + 1] == b"\\"
    rest = line[start + 1 :] if escaped else line[start:]
    if rest.startswith(TAG):
        return _parse_tagged(rest[len(TAG) :], escaped)
    return _parse_plain(rest, escaped)
