"""Run a `ctfm` subcommand module in-process, the way the `ctfm` command does."""

from __future__ import annotations

import argparse


def run_tool(module, argv: list[str]) -> int:
    """Parse ``argv`` with the tool's own parser and run it, as ``ctfm <tool>`` does."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))
