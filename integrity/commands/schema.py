"""`schema`: print the manifest's JSON Schema."""

from __future__ import annotations

import argparse
import json
import sys

from integrity.manifest import manifest_schema


def run_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n")
    return 0
