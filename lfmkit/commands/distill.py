"""`lfmkit distill cache`: the issue's spelling of `lfmkit train distill-cache` (the same command)."""

from __future__ import annotations

from .train import add_distill_cache


def register(sub) -> None:
    p = sub.add_parser(
        "distill",
        help="distillation tools: cache (= train distill-cache)",
        description="Distillation tools. Training itself is `lfmkit train distill`.",
    )
    tools = p.add_subparsers(dest="tool", metavar="TOOL")
    add_distill_cache(tools, "cache")
    p.set_defaults(func=lambda args: p.print_help() or 0, tool=None)
