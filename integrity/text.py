"""Text that is safe to show: escaped control characters, any stream encoding.

Standard library only: the error path of every command uses it.
"""

from __future__ import annotations

import re
from typing import TextIO

# C0/C1 controls, Unicode line/paragraph separators (line breaks to many log
# viewers), bidirectional overrides (text that displays reordered) and lone
# surrogates (undecodable bytes in a file name; they cannot even be encoded).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def counted(n: int, noun: str) -> str:
    """'1 file', '2 files': a count and its noun, plural when it is not one."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def is_terminal(stream: object) -> bool:
    """Whether `stream` is a terminal; False for anything without a usable isatty."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # closed or detached
        return False


def write_text(stream: TextIO, text: str) -> None:
    """Write `text` whatever the stream's encoding: characters it cannot encode
    (an ASCII or cp1252 console, a file name in another script) are escaped
    rather than ending the run."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "utf-8"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))
    stream.flush()
