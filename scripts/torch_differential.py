"""Differential campaign: mutated PyTorch checkpoints through the scanner and through torch.load.

Run by hand where torch is installed (CI has none), from the repository root:

    /tmp/torchvenv/bin/python scripts/torch_differential.py [ROUNDS] [SEED] [-v]

Each round takes a committed benign fixture (tests/data/torch/), flips a few bytes (mostly
inside the pickles), scans the result, and loads it with `torch.load(weights_only=False)` in
a subprocess that records every global the unpickler resolves. A file the scanner passes
must resolve, under torch.load, only globals the scanner reported, and must not crash the
process. Prints the figures and every disagreement (with -v also the files the scanner
refuses that torch loads: the price of failing closed); exit 1 if there is a disagreement.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from integrity.safety.scanner import scan_path  # noqa: E402

FIXTURES = ROOT / "tests" / "data" / "torch"
BASES = ["state_dict.pt", "checkpoint_mixed.pt", "legacy_state_dict.pt", "legacy_mixed.pt"]
LOADER = r"""
import json, pickle, sys, types
import torch
seen = []
class Recording(pickle.Unpickler):
    def find_class(self, module, name):
        seen.append([module, name])
        return super().find_class(module, name)
def load(f, **kwargs):
    return Recording(f, **kwargs).load()
module = types.ModuleType("recording_pickle")
module.Unpickler = Recording
module.load = load
for path in sys.argv[1:]:
    seen.clear()
    try:
        torch.load(path, weights_only=False, pickle_module=module)
        outcome = "loaded"
    except BaseException as exc:
        outcome = type(exc).__name__
    print(json.dumps({"path": path, "outcome": outcome, "globals": seen}), flush=True)
"""
BATCH = 25


def pickle_range(path: Path) -> tuple[int, int]:
    """Where the pickles are: data.pkl's bytes in a zip, the whole of a legacy file."""
    data = path.read_bytes()
    if not data.startswith(b"PK"):
        return 0, len(data)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    return start, start + info.compress_size


def mutate(data: bytes, span: tuple[int, int], rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(*span)
        out[at] = rng.choice([0, 1, 0x28, 0x2E, 0x4B, 0x51, 0x52, 0x63, 0x80, 0xFF, out[at] ^ 1])
    return bytes(out)


def load_all(paths: list[Path]) -> dict[str, dict[str, object]]:
    """torch.load on each file in a subprocess; a file with no answer crashed the process."""
    run = subprocess.run(
        [sys.executable, "-c", LOADER, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    answers = {}
    for line in run.stdout.splitlines():
        if line.startswith("{"):
            answer = json.loads(line)
            answers[answer["path"]] = answer
    return answers


def main() -> int:
    numbers = [int(arg) for arg in sys.argv[1:] if arg != "-v"]
    rounds = numbers[0] if numbers else 200
    rng = random.Random(numbers[1] if len(numbers) > 1 else 0)
    verbose = "-v" in sys.argv
    counts = dict.fromkeys(
        ("rounds", "scanned_safe", "torch_loaded", "refused_but_loaded", "disagreements"), 0
    )
    spans = {base: pickle_range(FIXTURES / base) for base in BASES}
    with tempfile.TemporaryDirectory() as folder:
        for first in range(0, rounds, BATCH):
            batch = []
            for n in range(first, min(rounds, first + BATCH)):
                base = BASES[n % len(BASES)]
                path = Path(folder) / f"m{n}.pt"
                path.write_bytes(mutate((FIXTURES / base).read_bytes(), spans[base], rng))
                batch.append((base, path, scan_path(path)))
            answers = load_all([path for _, path, _ in batch])
            for base, path, scan in batch:
                counts["rounds"] += 1
                answer = answers.get(str(path))
                counts["torch_loaded"] += bool(answer and answer["outcome"] == "loaded")
                if not scan.safe:
                    if answer and answer["outcome"] == "loaded":
                        counts["refused_but_loaded"] += 1
                        if verbose:
                            first = scan.findings[0]
                            print(f"refused, torch loads it: {base}: {first.code}: {first.message}")
                    continue
                counts["scanned_safe"] += 1
                reported = {(g.module, g.name) for g in scan.globals_used}
                resolved = {(m, name) for m, name in answer["globals"]} if answer else set()
                if answer is None or resolved - reported:
                    counts["disagreements"] += 1
                    print(f"DISAGREE {base} {path.name}: {sorted(resolved - reported)} {answer}")
                    (ROOT / f"disagreement-{path.name}").write_bytes(path.read_bytes())
                if answer is None:
                    break  # the process died here: the rest of the batch has no answer
    print(json.dumps(counts))
    return 1 if counts["disagreements"] else 0


if __name__ == "__main__":
    sys.exit(main())
