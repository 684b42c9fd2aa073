"""Manifest paths: relative to the manifest's folder, `/`-separated, never escaping it.

A manifest path is stored exactly as the file is named on disk (no case folding,
no Unicode normalisation): the digests check compares names byte for byte. Two
paths that differ only in case or Unicode normalisation would name the same file
on macOS and Windows, so a manifest holding both is ambiguous and invalid.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

# Control characters (C0, DEL, C1) and line or paragraph separators in a name
# garble terminals, logs and workflow commands, and break one-line messages.
_FORBIDDEN_CHARS = {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}
_FORBIDDEN_CHARS |= {"\\", "\u2028", "\u2029"}


_SEGMENT = r"(?!\.\.?(?:/|\Z))[^/\x00-\x1f\x7f-\x9f\\\u2028\u2029\ud800-\udfff]+"
# A path that passes every check below: relative, plain segments (not '', '.' or
# '..'), no forbidden character, no lone surrogate (so valid UTF-8). One regex
# match: a manifest may hold tens of thousands of paths.
_PLAIN = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*\Z")


def manifest_path_problem(path: str) -> str | None:
    """Why `path` is not a valid manifest path, or None when it is."""
    if _PLAIN.match(path) and path[1:2] != ":":
        return None
    if not path:
        return "is empty"
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return "is absolute; paths are relative to the manifest's folder"
    bad = sorted({c for c in path if c in _FORBIDDEN_CHARS})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"contains {shown}; paths use '/' separators and no control characters"
    for part in path.split("/"):
        if part == "..":
            return "contains '..'; paths may not leave the manifest's folder"
        if part in ("", "."):
            return "is not normalised (empty or '.' segment); write it as a plain a/b/c path"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def collision_key(path: str) -> str:
    """The key under which two names are the same file on a case- and
    normalisation-insensitive filesystem (macOS, Windows).

    Compare keys only; they are not names. Upper-casing before folding also
    joins pairs that full case folding alone keeps apart but Windows, which
    compares upper-cased names, does not ('ı' and 'i' are both 'I').
    """
    if path.isascii():
        return path.lower()  # what the steps below give for ASCII, at a fraction of the cost
    decomposed = unicodedata.normalize("NFD", path)
    return unicodedata.normalize("NFD", decomposed.upper().casefold())


def to_manifest_path(root: Path, path: Path) -> str:
    """`path` (absolute, or relative to the working directory) as a manifest path
    relative to `root`. Lexical: symlinks are not followed here."""
    absolute = Path(os.path.abspath(path))
    root_abs = Path(os.path.abspath(root))
    try:
        relative = absolute.relative_to(root_abs)
    except ValueError:
        raise ValueError(f"is outside the manifest's folder {root_abs}") from None
    if not relative.parts:
        raise ValueError("is the manifest's folder itself; name the files or folders to record")
    text = "/".join(relative.parts)
    problem = manifest_path_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def is_within(path: str, directory: str) -> bool:
    """Whether manifest path `path` lies inside manifest path `directory`."""
    return path.startswith(directory + "/")


def escapes_root(root: Path, path: str) -> str | None:
    """The symlinked folder through which the folders leading to `path` resolve
    outside `root`, or None. The last component is not followed: a recorded file
    or folder that became a symlink is the digests check's finding, not this.

    Reads link targets only, never file contents.
    """
    root_real = os.path.realpath(root)
    current = root_real
    for part in path.split("/")[:-1]:
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.path.realpath(candidate)
            if target != root_real and not target.startswith(root_real + os.sep):
                return candidate[len(root_real) + 1 :]
            current = target
        else:
            current = candidate
    return None
