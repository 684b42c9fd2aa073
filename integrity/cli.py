"""Command line: parse arguments, dispatch to a command, map outcomes to exit codes.

Exit codes (all commands): 0 every check passed, 1 integrity not proven,
2 the run could not be judged (one line on stderr, never a traceback).
This module imports only the standard library; each command imports what it
needs when it runs, so `--help` and `hash` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from integrity import __version__
from integrity.errors import UserError

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
PROG = "model-integrity"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


def _check_ids(text: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError("expected a comma-separated list of check ids")
    return ids


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Prove a model's artifacts are exactly the committed ones before it ships.",
        epilog="Exit codes: 0 every check passed; 1 integrity not proven; "
        "2 the run could not be judged (bad arguments, invalid manifest, missing input).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    init = commands.add_parser("init", help="record the artifacts' digests in a new manifest")
    init.add_argument(
        "--manifest",
        default="model-integrity.json",
        metavar="PATH",
        help="manifest to write (default: model-integrity.json)",
    )
    init.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="PATH",
        help="the model: a file, or a folder of files (repeatable: each is recorded as a model)",
    )
    init.add_argument(
        "--artifact",
        action="append",
        default=[],
        metavar="PATH",
        help="another file or folder to record (repeatable)",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing manifest")

    verify = commands.add_parser("verify", help="run the checks against the manifest")
    verify.add_argument(
        "--manifest",
        default="model-integrity.json",
        metavar="PATH",
        help="manifest to verify against (default: model-integrity.json)",
    )
    verify.add_argument(
        "--only", type=_check_ids, metavar="IDS", help="run only these checks (comma-separated ids)"
    )
    verify.add_argument(
        "--skip", type=_check_ids, metavar="IDS", help="skip these checks (comma-separated ids)"
    )
    verify.add_argument("--json", metavar="PATH", help="write the JSON report here")
    verify.add_argument("--no-progress", action="store_true", help="never print progress lines")

    hash_ = commands.add_parser("hash", help="print or check SHA-256 digests like sha256sum")
    hash_.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files to hash ('-' for standard input); folders are expanded",
    )
    hash_.add_argument(
        "--check", "-c", metavar="FILE", help="verify the digests listed in FILE (sha256sum output)"
    )

    scan = commands.add_parser("scan", help="static safety scan of model files (loads nothing)")
    scan.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to scan")

    diff = commands.add_parser("diff", help="list artifacts added, removed or changed")
    diff.add_argument("old", metavar="OLD_MANIFEST")
    diff.add_argument("new", metavar="NEW_MANIFEST")

    commands.add_parser("schema", help="print the manifest's JSON Schema")
    return parser


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "init":
        from integrity.commands.init import run_init

        return run_init(args)
    if args.command == "verify":
        from integrity.commands.verify import run_verify

        return run_verify(args)
    if args.command == "hash":
        from integrity.commands.hash import run_hash

        return run_hash(args)
    if args.command == "scan":
        from integrity.commands.scan import run_scan

        return run_scan(args)
    if args.command == "diff":
        from integrity.commands.diff import run_diff

        return run_diff(args)
    if args.command == "schema":
        from integrity.commands.schema import run_schema

        return run_schema(args)
    raise UserError(f"unknown command {args.command!r}")  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAIL
    except Exception as exc:  # a bug of ours: still one line, still not a pass
        if os.environ.get("MODEL_INTEGRITY_DEBUG"):
            raise
        _error(
            f"internal error: {type(exc).__name__}: {exc} "
            "(set MODEL_INTEGRITY_DEBUG=1 for a traceback)"
        )
        return EXIT_USAGE


def _error(message: str) -> None:
    # One line, whatever the message holds: file names may hold newlines or
    # escape sequences, which must neither split the line nor drive a terminal.
    from integrity.text import printable, write_text

    write_text(sys.stderr, f"{PROG}: error: {printable(message)}\n")
