"""The ``delightsam`` command: the parser and ``main``. Each command is one module of this package (``predict``,
``cohort`` for several inputs, ``checkpoints`` for download and info, ``training`` for train, distill and evaluate,
``serve`` for the web app) and one handler, thin over the library.

User mistakes end in one line on stderr (``delightsam: error: ...``) and exit status 2; no output file is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import DeLightSAMError
from . import checkpoints, predict, serve, training
from .exits import EXIT_INTERRUPTED, EXIT_USER_ERROR


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other mistake: ``delightsam: error: ...``, exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"delightsam: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="delightsam", description="De-LightSAM medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    predict.add_parser(commands)
    checkpoints.add_parsers(commands)  # download, info
    training.add_parsers(commands)  # train, distill, evaluate
    serve.add_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="delightsam: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = serve.arguments(argv) if argv[:1] == [serve.COMMAND] else build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed on one line
        return done.code if isinstance(done.code, int) else EXIT_USER_ERROR
    try:
        return args.handler(args) or 0
    except DeLightSAMError as error:
        print(f"delightsam: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("delightsam: interrupted; no output written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
