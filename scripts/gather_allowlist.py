#!/usr/bin/env python3
"""Gather the globals that benign scikit-learn artifacts make an unpickler resolve.

Run it in a throw-away virtual environment that has scikit-learn, numpy, scipy, pandas and
joblib (lz4 and skops are optional), never in the tool's own environment:

    python3 -m venv /tmp/al && /tmp/al/bin/pip install scikit-learn numpy scipy pandas joblib
    /tmp/al/bin/python scripts/gather_allowlist.py gather --output /tmp/al.json \\
        --details /tmp/al-details.json
    python3 scripts/gather_allowlist.py merge /tmp/al.json /tmp/al-old.json --output all.json

`gather` writes every estimator and plain datum of `tests/safety_corpus.py` in every dump style
to a temporary file and loads it back with recording unpicklers: a `pickle._Unpickler` (and,
for joblib files, a subclass of joblib's `NumpyUnpickler`) whose `find_class` records the
`(module, name)` pair after the Python 2 name mapping pickle applies below protocol 3, then
resolves it as usual. joblib reads the nested pickle of an object array with a fresh unpickler:
joblib < 1.5 calls `pickle.load`, which is swapped for a recording loader while a file loads;
newer joblib routes that unpickler's `find_class` through ours. `numpy.save` files are read by
skipping the `.npy` header and unpickling the rest. A skops file is a zip of JSON and `.npy`
members, not a pickle: the types its `schema.json` names are reported in the details only.

These are our own benign dumps, made a moment earlier, so loading them is fine.

The output is JSON `{"module.name": [names of the corpus entries that needed it]}`, sorted.
`--details` adds, per pair, the exact module and name, the dump styles, the raw pre-mapping
spellings and the library versions. `merge` takes several outputs, adds for every
`numpy._core.X` name its numpy 1.x spelling `numpy.core.X` and back (pickles cross numpy
versions), and writes the union in the same shape.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import contextlib
import importlib
import json
import pickle
import platform
import sys
import tempfile
import traceback
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
NPY_MAGIC = b"\x93NUMPY"
LIBRARIES = ("scikit-learn", "numpy", "scipy", "pandas", "joblib", "lz4", "skops")


@dataclass
class Use:
    """Where one resolved global was seen."""

    estimators: set[str] = field(default_factory=set)
    styles: set[str] = field(default_factory=set)
    raw: set[str] = field(default_factory=set)  # spellings in the stream, before mapping


@dataclass
class Recorder:
    """Collects `(module, name)` pairs for the corpus entry and dump style being loaded."""

    uses: dict[tuple[str, str], Use] = field(default_factory=lambda: defaultdict(Use))
    skops_types: dict[tuple[str, str], Use] = field(default_factory=lambda: defaultdict(Use))
    estimator: str = ""
    style: str = ""

    def record(self, raw: tuple[str, str], mapped: tuple[str, str]) -> None:
        use = self.uses[mapped]
        use.estimators.add(self.estimator)
        use.styles.add(self.style)
        use.raw.add(".".join(raw))


RECORDER = Recorder()


def mapped_name(proto: int, fix_imports: bool, module: str, name: str) -> tuple[str, str]:
    """The pair `pickle.Unpickler.find_class` resolves (Python 2 names below protocol 3)."""
    if proto < 3 and fix_imports:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return module, name


class RecordingMixin:
    """Records every global before the unpickler resolves it."""

    proto: int
    fix_imports: bool

    def find_class(self, module: str, name: str) -> Any:
        RECORDER.record((module, name), mapped_name(self.proto, self.fix_imports, module, name))
        return super().find_class(module, name)  # type: ignore[misc]


class RecordingUnpickler(RecordingMixin, pickle._Unpickler):
    pass


def recording_pickle_load(file: IO[bytes], **kwargs: Any) -> Any:
    """Stand-in for `pickle.load` while joblib loads: joblib < 1.5 reads object arrays so."""
    return RecordingUnpickler(file, **kwargs).load()


@contextlib.contextmanager
def patched(target: object, attribute: str, value: object) -> Iterator[None]:
    original = getattr(target, attribute)
    setattr(target, attribute, value)
    try:
        yield
    finally:
        setattr(target, attribute, original)


def load_pickle(path: Path) -> Any:
    with path.open("rb") as handle:
        return RecordingUnpickler(handle).load()


def load_joblib(path: Path) -> Any:
    import joblib.numpy_pickle  # type: ignore[import-not-found, import-untyped, unused-ignore]

    class RecordingNumpyUnpickler(RecordingMixin, joblib.numpy_pickle.NumpyUnpickler):  # type: ignore[misc]
        pass

    numpy_pickle = joblib.numpy_pickle
    with (
        patched(numpy_pickle, "NumpyUnpickler", RecordingNumpyUnpickler),
        patched(numpy_pickle.pickle, "load", recording_pickle_load),
    ):
        return joblib.load(path)


def load_npy(path: Path) -> Any:
    """Skip the `.npy` header (format 1.0, 2.0 or 3.0) and unpickle the object array after it."""
    with path.open("rb") as handle:
        if handle.read(6) != NPY_MAGIC:
            raise ValueError(f"{path}: not a .npy file")
        major = handle.read(2)[0]
        size_bytes = 2 if major == 1 else 4
        header_length = int.from_bytes(handle.read(size_bytes), "little")
        header = handle.read(header_length).decode("latin1")
        if "'descr': '|O'" not in header:
            raise ValueError(f"{path}: not an object array: {header.strip()}")
        return RecordingUnpickler(handle).load()


def skops_types(path: Path) -> set[tuple[str, str]]:
    """The `(__module__, __class__)` pairs a skops file's schema names."""
    found: set[tuple[str, str]] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            module, name = node.get("__module__"), node.get("__class__")
            if isinstance(module, str) and isinstance(name, str):
                found.add((module, name))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    with zipfile.ZipFile(path) as archive:
        walk(json.loads(archive.read("schema.json")))
    return found


def loader_for(style: str) -> Callable[[Path], Any]:
    if style.startswith("pickle_"):
        return load_pickle
    if style.startswith("joblib"):
        return load_joblib
    if style.startswith("numpy_save"):
        return load_npy
    raise ValueError(f"no loader for dump style {style!r}")


def same_kind(original: object, loaded: Any, style: str) -> bool:
    if style.startswith("numpy_save"):
        loaded = loaded[0]  # the one-element object array that held it
    return type(loaded) is type(original)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def gather() -> tuple[Recorder, list[str]]:
    sys.path.insert(0, str(REPO / "tests"))
    safety_corpus = importlib.import_module("safety_corpus")

    problems: list[str] = []
    corpus = safety_corpus.benign_estimators()
    styles = safety_corpus.dump_styles()
    with tempfile.TemporaryDirectory(prefix="gather-allowlist-") as folder:
        for style, dump in styles:
            for estimator, obj in corpus:
                path = Path(folder) / f"{estimator}.{style}"
                RECORDER.estimator, RECORDER.style = estimator, style
                try:
                    dump(obj, path)
                except Exception as error:  # a style that cannot write this object needs nothing
                    problems.append(f"dump {estimator} as {style}: {error!r}")
                    continue
                try:
                    if style == "skops":
                        for pair in skops_types(path):
                            use = RECORDER.skops_types[pair]
                            use.estimators.add(estimator)
                            use.styles.add(style)
                        continue
                    loaded = loader_for(style)(path)
                except Exception:
                    problems.append(f"load {estimator} as {style}: {traceback.format_exc()}")
                    continue
                finally:
                    path.unlink(missing_ok=True)
                if not same_kind(obj, loaded, style):
                    problems.append(f"load {estimator} as {style}: got {type(loaded)!r}")
    return RECORDER, problems


def summary(uses: dict[tuple[str, str], Use]) -> dict[str, list[str]]:
    return {
        f"{module}.{name}": sorted(uses[(module, name)].estimators) for module, name in sorted(uses)
    }


def details(recorder: Recorder) -> dict[str, Any]:
    def entries(uses: dict[tuple[str, str], Use]) -> list[dict[str, Any]]:
        return [
            {
                "module": module,
                "name": name,
                "estimators": sorted(use.estimators),
                "styles": sorted(use.styles),
                "raw": sorted(use.raw),
            }
            for (module, name), use in sorted(uses.items())
        ]

    return {
        "versions": library_versions(),
        "globals": entries(recorder.uses),
        "skops_types": entries(recorder.skops_types),
    }


def other_numpy_spelling(module: str) -> str | None:
    """`numpy.core.X` for `numpy._core.X` and back; None for other modules."""
    for this, other in (("numpy._core", "numpy.core"), ("numpy.core", "numpy._core")):
        if module == this or module.startswith(this + "."):
            return other + module[len(this) :]
    return None


def merge(outputs: list[dict[str, list[str]]], details_files: list[Path]) -> dict[str, list[str]]:
    """Union of gather outputs, plus the other numpy spelling of every numpy core name.

    A key "module.name" is split with the details files where given (exact pairs); without
    them, at the last dot, which is right for every name gathered so far (no dotted names).
    """
    pairs: dict[str, tuple[str, str]] = {}
    for path in details_files:
        for entry in json.loads(path.read_text())["globals"]:
            pairs[f"{entry['module']}.{entry['name']}"] = (entry["module"], entry["name"])
    merged: dict[tuple[str, str], set[str]] = defaultdict(set)
    for output in outputs:
        for key, estimators in output.items():
            module, _, name = key.rpartition(".")
            merged[pairs.get(key, (module, name))].update(estimators)
    for (module, name), users in list(merged.items()):
        other = other_numpy_spelling(module)
        if other is not None and (other, name) not in merged:
            merged[(other, name)] = {f"(numpy spelling of {module}.{name})", *users}
    return {f"{module}.{name}": sorted(merged[(module, name)]) for module, name in sorted(merged)}


def write_json(data: object, output: str | None) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("gather", help="dump and reload the corpus, record the globals")
    run.add_argument("--output", help="JSON summary file (default: standard output)")
    run.add_argument("--details", help="also write per-pair details to this JSON file")
    join = commands.add_parser("merge", help="union of gather outputs, both numpy spellings")
    join.add_argument("outputs", nargs="+", type=Path)
    join.add_argument("--details", nargs="*", type=Path, default=[], help="their details files")
    join.add_argument("--output", help="JSON file (default: standard output)")
    args = parser.parse_args(argv)

    if args.command == "merge":
        loaded = [json.loads(path.read_text()) for path in args.outputs]
        write_json(merge(loaded, args.details), args.output)
        return 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy.core deprecation and the like
        recorder, problems = gather()
    write_json(summary(recorder.uses), args.output)
    if args.details:
        write_json(details(recorder), args.details)
    versions = ", ".join(f"{name} {version}" for name, version in library_versions().items())
    print(f"{len(recorder.uses)} globals gathered with {versions}", file=sys.stderr)
    for problem in problems:
        print(f"note: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
