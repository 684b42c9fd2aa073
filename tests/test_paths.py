"""Manifest paths: properties of validation, conversion, collisions, and the manifest round trip."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from integrity.manifest import (
    Artifact,
    FileDigest,
    build_manifest,
    dump_manifest,
    parse_manifest,
)
from integrity.paths import (
    collision_key,
    escapes_root,
    manifest_path_problem,
    to_manifest_path,
)

ROOT = Path("/srv/project")  # to_manifest_path is lexical: this folder need not exist

# Characters no valid name may hold: C0/C1 controls, DEL, line/paragraph separators.
CONTROL = st.characters(categories=["Cc", "Zl", "Zp"])

# A safe segment: any printable text without '/', '\\' or ':' (a drive letter
# in first place would read as absolute on Windows), never '.' or '..'.
segment_chars = st.characters(
    exclude_categories=["Cc", "Cs", "Zl", "Zp"], exclude_characters="/\\:"
)
segments = st.text(segment_chars, min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
safe_parts = st.lists(segments, min_size=1, max_size=6)


@given(safe_parts)
def test_safe_path_round_trips(parts: list[str]) -> None:
    text = "/".join(parts)
    assert to_manifest_path(ROOT, ROOT.joinpath(*parts)) == text
    assert manifest_path_problem(text) is None


@given(safe_parts)
def test_relative_input_is_relative_to_the_working_directory(parts: list[str]) -> None:
    cwd = Path.cwd()
    assert to_manifest_path(cwd, Path(*parts)) == "/".join(parts)


def test_to_manifest_path_refuses_outside_and_root_itself() -> None:
    with pytest.raises(ValueError):
        to_manifest_path(ROOT, Path("/srv/other/model.bin"))
    with pytest.raises(ValueError):
        to_manifest_path(ROOT, ROOT / ".." / "model.bin")
    with pytest.raises(ValueError):
        to_manifest_path(ROOT, ROOT)
    with pytest.raises(ValueError):
        to_manifest_path(ROOT, ROOT / "a\\b")
    with pytest.raises(ValueError):
        to_manifest_path(ROOT, ROOT / "a\nb")


def _problem(text: str) -> None:
    problem = manifest_path_problem(text)
    assert isinstance(problem, str) and problem.strip(), f"{text!r} was accepted"


@given(safe_parts, st.data())
def test_dotdot_segment_is_rejected(parts: list[str], data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(parts)))
    _problem("/".join([*parts[:at], "..", *parts[at:]]))


@given(safe_parts)
def test_absolute_is_rejected(parts: list[str]) -> None:
    _problem("/" + "/".join(parts))
    _problem("C:/" + "/".join(parts))


@given(safe_parts, st.data())
def test_empty_or_dot_segment_is_rejected(parts: list[str], data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(parts)))
    bad = data.draw(st.sampled_from(["", "."]))
    _problem("/".join([*parts[:at], bad, *parts[at:]]))


@given(safe_parts, st.data())
def test_backslash_or_control_character_is_rejected(parts: list[str], data: st.DataObject) -> None:
    text = "/".join(parts)
    at = data.draw(st.integers(0, len(text)))
    bad = data.draw(st.one_of(st.just("\\"), CONTROL))
    _problem(text[:at] + bad + text[at:])


def test_empty_path_is_rejected() -> None:
    _problem("")


@given(safe_parts)
def test_problem_messages_are_one_line(parts: list[str]) -> None:
    for bad in ["/".join(parts) + "\n", "../" + "/".join(parts), "/".join(parts) + "/"]:
        problem = manifest_path_problem(bad)
        assert problem is not None
        assert len(problem.splitlines()) == 1


# ---------------------------------------------------------------- collisions

# Letters and digits of every script. (Not free combining marks: str.upper() turns
# U+0345 into a base letter, so a mark after it moves to another letter and the
# "variant" is no longer the same name.)
letters = st.text(st.characters(categories=["Lu", "Ll", "Lt", "Lm", "Lo", "Nd"]), max_size=20)


@given(letters)
def test_case_variants_collide(text: str) -> None:
    key = collision_key(text)
    for variant in (text.upper(), text.lower(), text.swapcase(), text.title(), text.casefold()):
        assert collision_key(variant) == key, (text, variant)


@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=20))
def test_normalisation_variants_collide(text: str) -> None:
    key = collision_key(text)
    assert collision_key(unicodedata.normalize("NFC", text)) == key
    assert collision_key(unicodedata.normalize("NFD", text)) == key


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Model.PKL", "model.pkl"),
        ("caf\u00e9.csv", "cafe\u0301.csv"),
        ("CAF\u00c9.csv", "cafe\u0301.csv"),
        ("stra\u00dfe", "STRASSE"),
        ("\u0131", "I"),  # dotless i: the same name on Windows
        ("\u03c3\u03c2", "\u03a3\u03a3"),  # Greek final sigma
        ("\u212b", "\u00e5"),  # Angstrom sign and a-ring: canonically equivalent
    ],
)
def test_collision_examples(one: str, other: str) -> None:
    assert collision_key(one) == collision_key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [("data/a.csv", "data/b.csv"), ("a/b", "a-b"), ("cafe", "caf\u00e9"), ("model", "model ")],
)
def test_different_names_do_not_collide(one: str, other: str) -> None:
    assert collision_key(one) != collision_key(other)


@given(safe_parts, safe_parts)
def test_key_keeps_the_folder_structure(one: list[str], other: list[str]) -> None:
    # Folding never invents or removes a '/': paths of different depth never collide.
    if len(one) != len(other):
        assert collision_key("/".join(one)) != collision_key("/".join(other))


# ---------------------------------------------------------------- manifest round trip

# Lower-case names only, so distinct paths never collide and folders are spelled one way.
name = st.text(st.sampled_from("abcxyz019-_.é中"), min_size=1, max_size=6).filter(
    lambda s: s not in (".", "..")
)
sha256 = st.binary(min_size=32, max_size=32).map(bytes.hex)
size = st.integers(0, 2**63)


def _prefix_free(paths: set[str]) -> list[str]:
    """Drop paths that are folders of other paths: a file cannot hold files."""
    return sorted(p for p in paths if not any(q.startswith(p + "/") for q in paths))


Role = Literal["model", "artifact"]
ROLES: list[Role] = ["model", "artifact"]


@st.composite
def manifests(draw: st.DrawFn) -> tuple[list[Artifact], list[FileDigest]]:
    tops = draw(st.lists(name, min_size=1, max_size=5, unique=True))
    artifacts: list[Artifact] = []
    files: list[FileDigest] = []
    for i, top in enumerate(tops):
        role: Role = "model" if i == 0 else draw(st.sampled_from(ROLES))
        if draw(st.booleans()):
            artifacts.append(Artifact(path=top, type="file", role=role))
            paths = [top]
        else:
            artifacts.append(Artifact(path=top, type="directory", role=role))
            tails = draw(st.sets(st.lists(name, min_size=1, max_size=3).map("/".join), max_size=6))
            paths = _prefix_free({f"{top}/{t}" for t in tails})
        files.extend(FileDigest(path=p, sha256=draw(sha256), size=draw(size)) for p in paths)
    order = draw(st.randoms(use_true_random=False))
    order.shuffle(artifacts)
    order.shuffle(files)
    return artifacts, files


@given(manifests())
def test_manifest_round_trip(parts: tuple[list[Artifact], list[FileDigest]]) -> None:
    artifacts, files = parts
    manifest = build_manifest(artifacts, files)
    text = dump_manifest(manifest)
    parsed = parse_manifest(text.encode("utf-8"), "model-integrity.json")
    assert parsed == manifest
    assert dump_manifest(parsed) == text
    # Same content in another order: same bytes.
    again = build_manifest(list(reversed(artifacts)), list(reversed(files)))
    assert dump_manifest(again) == text


@given(manifests(), st.data())
def test_case_variant_of_a_recorded_path_is_refused(
    parts: tuple[list[Artifact], list[FileDigest]], data: st.DataObject
) -> None:
    artifacts, files = parts
    directories = {a.path for a in artifacts if a.type == "directory"}
    inside = [f.path for f in files if f.path.split("/")[0] in directories]
    assume(inside)
    path = data.draw(st.sampled_from(inside))
    top, *tail = path.split("/")
    at = data.draw(st.integers(0, len(tail) - 1))
    assume(tail[at].upper() != tail[at])
    variant = "/".join([top, *tail[:at], tail[at].upper(), *tail[at + 1 :]])
    # The control: a new name in the same place is fine ('~' is in no generated name).
    control = FileDigest(path=path + "~", sha256="0" * 64, size=0)
    build_manifest(artifacts, [*files, control])
    # A second spelling of a recorded file or folder is not.
    with pytest.raises(ValidationError):
        build_manifest(artifacts, [*files, FileDigest(path=variant, sha256="0" * 64, size=0)])


# ---------------------------------------------------------------- escapes_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    (folder / "inside").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return folder


def test_plain_folders_do_not_escape(root: Path) -> None:
    assert escapes_root(root, "inside/model.bin") is None
    assert escapes_root(root, "model.bin") is None
    assert escapes_root(root, "not/yet/created.bin") is None


def test_symlink_to_inside_does_not_escape(root: Path) -> None:
    (root / "link").symlink_to("inside", target_is_directory=True)
    assert escapes_root(root, "link/model.bin") is None
    (root / "self").symlink_to(".", target_is_directory=True)
    assert escapes_root(root, "self/inside/model.bin") is None


def test_symlink_to_outside_is_named(root: Path) -> None:
    (root / "link").symlink_to("../outside", target_is_directory=True)
    assert escapes_root(root, "link/model.bin") == "link"
    assert escapes_root(root, "link/deeper/model.bin") == "link"


def test_absolute_symlink_to_outside_is_named(root: Path) -> None:
    (root / "inside" / "abs").symlink_to(root.parent / "outside", target_is_directory=True)
    assert escapes_root(root, "inside/abs/model.bin") == "inside/abs"


def test_symlink_to_parent_escapes(root: Path) -> None:
    (root / "up").symlink_to("..", target_is_directory=True)
    assert escapes_root(root, "up/root/model.bin") == "up"


def test_dangling_symlink_outside_escapes(root: Path) -> None:
    (root / "gone").symlink_to("../does-not-exist", target_is_directory=True)
    assert escapes_root(root, "gone/model.bin") == "gone"


def test_sibling_with_same_prefix_is_outside(root: Path) -> None:
    # '/tmp/x/root-other' starts with '/tmp/x/root' as a string, not as a folder.
    sibling = root.parent / (root.name + "-other")
    sibling.mkdir()
    (root / "link").symlink_to(sibling, target_is_directory=True)
    assert escapes_root(root, "link/model.bin") == "link"


def test_chained_symlinks_are_followed(root: Path) -> None:
    (root / "inside" / "out").symlink_to("../../outside", target_is_directory=True)
    (root / "hop").symlink_to("inside", target_is_directory=True)
    link = escapes_root(root, "hop/out/model.bin")
    assert link is not None and link.endswith("out")


def test_last_component_is_not_followed(root: Path) -> None:
    # A recorded file that became a symlink is the digests check's finding.
    (root / "model.bin").symlink_to(root.parent / "outside")
    assert escapes_root(root, "model.bin") is None


def test_root_reached_through_a_symlink(root: Path) -> None:
    alias = root.parent / "alias"
    alias.symlink_to(root, target_is_directory=True)
    (root / "link").symlink_to("inside", target_is_directory=True)
    assert escapes_root(alias, "link/model.bin") is None
    (root / "out").symlink_to("../outside", target_is_directory=True)
    assert escapes_root(alias, "out/model.bin") == "out"


def test_symlink_loop_does_not_crash(root: Path) -> None:
    (root / "loop").symlink_to("loop")
    result = escapes_root(root, "loop/model.bin")
    assert result is None or result == "loop"


def test_escapes_root_reads_no_file_content(root: Path) -> None:
    fifo = root / "inside" / "pipe"
    os.mkfifo(fifo)
    # A FIFO among the folders would hang any open(); only link targets are read.
    assert escapes_root(root, "inside/pipe/model.bin") is None
