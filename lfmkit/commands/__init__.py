"""Subcommands of the `lfmkit` CLI, one module each (see lfmkit/cli.py)."""
