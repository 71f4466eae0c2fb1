"""The `lfmkit` command.

Each subcommand lives in its own module under `lfmkit/commands/` and exposes
`register(subparsers)` (add its parser, set `func`) so this file stays a dispatcher.
Any `LFMKitError` (and a missing file) becomes one clear line on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import LFMKitError

# (module under lfmkit.commands) in the order they appear in --help.
COMMANDS = (
    "info",
    "run",
    "chat",
    "bench",
    "serve",
    "export",
    "train",
    "distill",
    "prefs",
    "merge",
    "merge_lora",
    "eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lfmkit",
        description="Run, chat with, serve, benchmark, export and fine-tune LFM2 hybrid language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lfmkit.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except LFMKitError as exc:
        print(f"lfmkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable file, permission denied, disk full, port in use ...
        print(f"lfmkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
