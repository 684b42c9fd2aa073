"""The manifest file as JSON: read it (bounded) and parse it strictly.

Standard library only: `verify` reads the manifest this far, and starts hashing
the files it names (`hashing.ForkedDigests`), before pydantic is imported and the
document validated (`manifest.validate_manifest`). Every problem is a
ManifestError with one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from integrity.errors import ManifestError

MANIFEST_VERSION: Literal[1] = 1
# A manifest for 100,000 files is about 15 MB; anything far larger is not a manifest.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
# No manifest number needs more digits (a size is at most 20); refusing early
# also avoids Python's own int-conversion limit and its advice to users.
_MAX_INT_DIGITS = 40


def read_manifest_bytes(path: Path) -> bytes:
    """The manifest's bytes: a regular file, not too large; a FIFO is never opened."""
    from integrity.files import PathProblem, open_regular_file

    shown = str(path)
    try:
        fd, st = open_regular_file(path, follow_symlinks=True)
    except FileNotFoundError:
        raise ManifestError(shown, "no such file; create one with 'model-integrity init'") from None
    except PathProblem as problem:
        if problem.kind == "directory":
            raise ManifestError(shown, "is a directory, not a manifest file") from None
        raise ManifestError(shown, problem.detail) from None
    except OSError as exc:
        raise ManifestError(shown, f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        if st.st_size > MAX_MANIFEST_BYTES:
            raise ManifestError(
                shown,
                f"is {st.st_size / 2**20:.1f} MiB; a manifest is at most "
                f"{MAX_MANIFEST_BYTES // 2**20} MiB",
            )
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(shown, f"is larger than {MAX_MANIFEST_BYTES // 2**20} MiB")
    return data


def parse_manifest_json(data: bytes, shown: str) -> dict[str, Any]:
    """The JSON object in manifest bytes, not yet validated against the model:
    UTF-8 (a BOM allowed), no duplicate keys, no NaN or Infinity, no huge
    numbers, an object at the top, a version this program reads."""
    if not data.strip():
        raise ManifestError(shown, "is empty; create one with 'model-integrity init'")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            shown, f"is not UTF-8 text (invalid byte at offset {exc.start}); not a manifest"
        ) from None
    try:
        raw = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
        )
        del text  # the parsed objects hold what is needed: free its copy before validating
    except json.JSONDecodeError as exc:
        raise ManifestError(
            shown, f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    except ValueError as exc:
        raise ManifestError(shown, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ManifestError(shown, "invalid JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ManifestError(shown, f"must be a JSON object, found {_json_kind(raw)}")
    version = raw.get("version")
    if "version" in raw and version != MANIFEST_VERSION and isinstance(version, int):
        raise ManifestError(
            shown,
            f"manifest version {version} is not supported by this model-integrity "
            f"(supports version {MANIFEST_VERSION})",
        )
    return raw


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # the loop only to name the key
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > _MAX_INT_DIGITS:
        raise ValueError(f"a number has {digits} digits; at most {_MAX_INT_DIGITS} are allowed")
    return int(text)


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__  # pragma: no cover


def named_files(raw: dict[str, Any]) -> list[tuple[str, int]]:
    """(path, size) of each well-formed entry of the document's `files`, before
    the document is validated: what `verify` may start hashing ahead. A malformed
    entry is left out here and refused by validation; a path is taken only if it
    is a valid manifest path (relative, never '..')."""
    from integrity.paths import manifest_path_problem

    files = raw.get("files")
    if not isinstance(files, list):
        return []
    named: list[tuple[str, int]] = []
    for entry in files:
        if not isinstance(entry, dict):
            continue
        path, size = entry.get("path"), entry.get("size")
        if (
            isinstance(path, str)
            and type(size) is int
            and size >= 0
            and manifest_path_problem(path) is None
        ):
            named.append((path, size))
    return named
