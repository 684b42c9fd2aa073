"""The manifest (`model-integrity.json`): models, strict loading and deterministic writing.

The manifest arrives in pull requests from strangers, so loading is strict:
a size cap, UTF-8 JSON only, duplicate keys and non-finite numbers refused,
unknown fields refused, every path validated before anything on disk is read.
Writing is deterministic (sorted paths, model field order, 2-space indent,
trailing newline) so that one changed file is a few changed lines in a diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from integrity.errors import ManifestError
from integrity.manifest_json import MANIFEST_VERSION, parse_manifest_json, read_manifest_bytes
from integrity.paths import collision_key, escapes_root, manifest_path_problem
from integrity.text import counted

DEFAULT_MANIFEST = "model-integrity.json"


def _check_path(value: str) -> str:
    problem = manifest_path_problem(value)
    if problem:
        raise ValueError(f"path {value!r} {problem}")
    return value


ManifestPath = Annotated[str, AfterValidator(_check_path)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    # defer_build: a model's validator is built on first use, not at import. Loading
    # a manifest builds Manifest's alone (its sub-models are part of it); the
    # sub-models' own are built only by what constructs them (init).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True)


class Artifact(_Strict):
    """What the user named at `init`: a file, or a folder whose every file is recorded."""

    path: ManifestPath
    type: Literal["file", "directory"] = Field(
        description="A directory's files are all recorded; a file added to it later is reported."
    )
    role: Literal["model", "artifact"] = Field(
        description="'model' artifacts are what the model checks load; "
        "'artifact' is any other file."
    )


# A manifest may list tens of thousands of files: each is a slotted dataclass
# (56 bytes) rather than a model (about 400 bytes with its __dict__ and
# fields-set). Strict per field, since a strict dataclass would refuse the JSON
# object it is read from.
@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid", defer_build=True))
class FileDigest:
    """One regular file: its SHA-256 and size in bytes."""

    path: Annotated[str, Strict(), AfterValidator(_check_path)]
    sha256: Annotated[str, Strict(), Field(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, Strict(), Field(ge=0)]


_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"


class AllowedGlobal(_Strict):
    """One exact (module, name) a model of yours needs, with why it is safe to load."""

    module: str = Field(pattern=rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*$", max_length=200)
    name: str = Field(pattern=rf"^{_IDENTIFIER}$", max_length=200)
    reason: str = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _never_dangerous(self) -> AllowedGlobal:
        from integrity.safety.allowlist import refusal_to_extend

        problem = refusal_to_extend(self.module, self.name)
        if problem:
            raise ValueError(f"safety.allow: {self.module}.{self.name} {problem}")
        return self


class SafetyPolicy(_Strict):
    """How model files are judged safe to load."""

    allow: list[AllowedGlobal] = Field(
        default_factory=list,
        description="Globals allowed besides the built-in allow-list (your own classes), "
        "each with a reason; they are shown in every report.",
    )


class Manifest(_Strict):
    """model-integrity manifest: what the committed artifacts are, byte for byte."""

    model_config = ConfigDict(title="model-integrity manifest")

    version: Literal[1] = Field(description="Manifest format version.")
    artifacts: list[Artifact] = Field(min_length=1)
    files: list[FileDigest]
    safety: SafetyPolicy | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: object) -> object:
        # Literal[1] alone, even strict, lets `true` and `1.0` through as 1.
        if type(value) is not int:
            raise ValueError(f"must be the integer {MANIFEST_VERSION}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        # Set operations over all paths, Python loops only over folders or on
        # error: a manifest may list tens of thousands of files.
        artifact_paths = [a.path for a in self.artifacts]
        file_paths = [f.path for f in self.files]
        _no_duplicates("artifacts", artifact_paths)
        _no_duplicates("files", file_paths)
        if self.safety is not None:
            pairs = [(g.module, g.name) for g in self.safety.allow]
            if len(set(pairs)) != len(pairs):
                raise ValueError("safety.allow: an entry is listed twice")
        files = set(file_paths)
        folders = _folders_above(files | set(artifact_paths))
        _one_spelling(files | set(artifact_paths) | folders)
        if not any(a.role == "model" for a in self.artifacts):
            raise ValueError("artifacts: no artifact has role 'model'")
        directories = {a.path for a in self.artifacts if a.type == "directory"}
        for artifact in self.artifacts:
            if artifact.type == "file" and artifact.path not in files:
                raise ValueError(f"artifacts: file {artifact.path!r} has no entry in files")
            if artifact.type == "directory" and artifact.path in files:
                raise ValueError(f"artifacts: {artifact.path!r} is a directory and a file")
        # A recorded file cannot also be a folder holding other recorded paths.
        for folder in sorted(files & folders):
            inside = sorted(p for p in files | directories if p.startswith(folder + "/"))
            raise ValueError(f"{inside[0]!r} is inside {folder!r}, which is recorded as a file")
        file_artifacts = {a.path for a in self.artifacts if a.type == "file"}
        loose = files - file_artifacts
        parents = {path.rpartition("/")[0] for path in loose}
        for parent in parents - _folders_within(parents, directories):
            path = min(p for p in loose if p.rpartition("/")[0] == parent)
            raise ValueError(f"files: {path!r} is not inside any recorded artifact")
        return self


def _no_duplicates(field: str, paths: list[str]) -> None:
    """No path listed twice (two spellings of one name are `_one_spelling`'s)."""
    if len(set(paths)) == len(paths):
        return
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise ValueError(f"{field}: {path!r} is listed twice")
        seen.add(path)


def _folders_above(paths: set[str]) -> set[str]:
    """Every folder leading to any of `paths`: 'a/b/c' gives 'a' and 'a/b'."""
    pending = {path.rpartition("/")[0] for path in paths} - {""}
    folders: set[str] = set()
    while pending:  # one round per level of depth
        folders |= pending
        pending = {folder.rpartition("/")[0] for folder in pending} - {""} - folders
    return folders


def _folders_within(folders: set[str], directories: set[str]) -> set[str]:
    """Those of `folders` that are one of `directories` or lie inside one."""
    within = set()
    for folder in folders:
        above = folder
        while above and above not in directories:
            above = above.rpartition("/")[0]
        if above:
            within.add(folder)
    return within


def _one_spelling(names: set[str]) -> None:
    """Each file and folder is spelled one way: 'Data/a' and 'data/b' would be
    two folders on Linux but one on macOS and Windows."""
    keys = {collision_key(name) for name in names}
    if len(keys) == len(names):
        return
    spelled: dict[str, str] = {}
    for name in sorted(names):
        other = spelled.setdefault(collision_key(name), name)
        if other != name:
            raise ValueError(
                f"{other!r} and {name!r} differ only in case or Unicode "
                "normalisation; they are the same name on macOS and Windows"
            )


def build_manifest(artifacts: list[Artifact], files: list[FileDigest]) -> Manifest:
    """A manifest in canonical order (sorted by path)."""
    return Manifest(
        version=MANIFEST_VERSION,
        artifacts=sorted(artifacts, key=lambda a: a.path),
        files=sorted(files, key=lambda f: f.path),
    )


def dump_manifest(manifest: Manifest) -> str:
    """Canonical text: same manifest, same bytes.

    Exactly `json.dumps(manifest.model_dump(mode="json", exclude_none=True),
    indent=2, ensure_ascii=False)` with sorted lists, but the file entries are
    written directly: with an indent, json.dumps runs its pure-Python encoder,
    which for tens of thousands of files is slow and holds a list of a dozen
    small strings per entry until it joins them.
    """
    data = manifest.model_dump(mode="json", exclude_none=True, exclude={"files"})
    data["artifacts"].sort(key=lambda a: a["path"])
    if "safety" in data:
        data["safety"]["allow"].sort(key=lambda g: (g["module"], g["name"]))
    files = sorted(manifest.files, key=lambda f: f.path)
    # "files" in its field place, as an empty list to be filled in below.
    ordered = {name: data[name] if name != "files" else [] for name in _dumped_fields(data)}
    text = json.dumps(ordered, indent=2, ensure_ascii=False) + "\n"
    if not files:
        return text
    # Unique: a newline inside a JSON string is always escaped.
    placeholder = '\n  "files": []'
    entries = ",\n".join(map(_file_entry, files))
    before, found, after = text.partition(placeholder)
    if not found:  # pragma: no cover - json.dumps always writes it
        raise RuntimeError("manifest text lacks its files list")
    return f'{before}\n  "files": [\n{entries}\n  ]{after}'


def _file_entry(entry: FileDigest) -> str:
    path = json.dumps(entry.path, ensure_ascii=False)
    sha256 = json.dumps(entry.sha256)
    return (
        f'    {{\n      "path": {path},\n      "sha256": {sha256},\n'
        f'      "size": {entry.size}\n    }}'
    )


def _dumped_fields(data: dict[str, Any]) -> list[str]:
    """The manifest's field names in model order, as model_dump writes them."""
    return [name for name in Manifest.model_fields if name in data or name == "files"]


def write_manifest(text: str, path: Path, *, overwrite: bool) -> None:
    """Write manifest text (from dump_manifest) atomically; never replace an
    existing file unless `overwrite`."""
    from integrity.files import write_file_atomically

    write_file_atomically(path, text.encode("utf-8"), overwrite=overwrite)


def manifest_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **Manifest.model_json_schema(),
    }


# ---------------------------------------------------------------- loading


def parse_manifest(data: bytes, shown: str) -> Manifest:
    """Validate manifest bytes; every problem is a ManifestError with one line."""
    return validate_document(parse_manifest_json(data, shown), shown)


def validate_document(raw: dict[str, Any], shown: str) -> Manifest:
    """The manifest in a parsed JSON object (`manifest_json.parse_manifest_json`)."""
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(shown, describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    location = _format_location(first["loc"])
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    elif first["type"] == "string_pattern_mismatch" and location.endswith(".sha256"):
        message = "must be 64 lowercase hexadecimal characters"
    extra = len(errors) - 1
    more = f" (and {counted(extra, 'more problem')})" if extra else ""
    where = f"{location}: " if location else ""
    return f"{where}{message}{more}"


def _format_location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            # A field name comes from the manifest: never let it print control
            # characters or line breaks.
            name = part if part and part.isprintable() else repr(part)
            text += f".{name}" if text else name
    return text


def load_manifest(path: Path) -> Manifest:
    """Load and validate a manifest, including that no path leaves its folder.

    Only link targets are read before this returns; no artifact content is.
    """
    return validate_manifest(parse_manifest_json(read_manifest_bytes(path), str(path)), path)


def validate_manifest(raw: dict[str, Any], path: Path) -> Manifest:
    """`load_manifest` from the parsed JSON of the manifest at `path`."""
    manifest = validate_document(raw, str(path))
    root = manifest_root(path)
    # Below an artifact's own path, symlinks are the artifact's content: the
    # digests check reports them. Above it, they move the whole artifact.
    for candidate in [a.path for a in manifest.artifacts]:
        link = escapes_root(root, candidate)
        if link:
            raise ManifestError(
                str(path),
                f"path {candidate!r} resolves outside the manifest's folder "
                f"through the symlink {link!r}",
            )
    return manifest


def manifest_root(path: Path) -> Path:
    """The folder manifest paths are relative to."""
    return Path(os.path.abspath(path)).parent
