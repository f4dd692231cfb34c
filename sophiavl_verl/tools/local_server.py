"""``python -m sophiavl_verl.tools.local_server serve MODEL [options]``: ``transformers serve`` with the processor shim.

The server itself, and the class that runs it beside a process (``LocalOpenAIServer``), belong to the CPU
backend: :mod:`sophiavl_verl.integration.cpu_backend.transformers_serve`, imported only to serve (it imports verl,
which this command line's ``--help`` must not wait for).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sophiavl_verl.tools.local_server serve MODEL [options]``: ``transformers serve`` with the shim."""
    from sophiavl_verl.tools.command import OneLineErrorParser, run_command, set_command

    parser = OneLineErrorParser(prog="python -m sophiavl_verl.tools.local_server",
                                description="transformers serve for one local model, with the processor shim")
    commands = parser.add_subparsers(dest="command", metavar="serve", required=True)
    serve = commands.add_parser("serve", help="serve MODEL (a local folder) on an OpenAI-compatible API")
    serve.add_argument("model", help="the model folder")
    serve.add_argument("options", nargs=argparse.REMAINDER, help="transformers serve options (--host, --port, ...)")
    set_command(serve, _serve)
    return run_command(parser, argv)


def _serve(args: argparse.Namespace) -> int:
    from sophiavl_verl.integration.cpu_backend.transformers_serve import serve

    serve([args.model, *args.options])
    return 0


if __name__ == "__main__":
    sys.exit(main())
