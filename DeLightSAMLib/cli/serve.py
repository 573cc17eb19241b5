"""``delightsam serve``: the web face (``DeLightSAMWeb``, its own install: ``pip install -e '.[web]'``).

The library never imports the web stack (slicer-core, vtk, trame): the web app is imported by name, only when the
command runs, and parses its own options.
"""

from __future__ import annotations

import argparse
import importlib

from ..errors import DeLightSAMError

COMMAND = "serve"


def add_parser(commands) -> None:
    serve = commands.add_parser(
        COMMAND, add_help=False, help="the web app in the browser (own venv: pip install -e '.[web]'; serve --help)"
    )
    serve.add_argument("serve_args", nargs=argparse.REMAINDER)
    serve.set_defaults(handler=run_serve)


def arguments(argv: list) -> argparse.Namespace:
    """The command's arguments, all of them for the web app (argparse's REMAINDER would drop leading options)."""
    return argparse.Namespace(handler=run_serve, serve_args=argv[1:])


def run_serve(args: argparse.Namespace) -> int:
    try:
        web = importlib.import_module("DeLightSAMWeb.server")
    except ImportError as error:
        raise DeLightSAMError(f"delightsam serve needs the web app ({error}); in its own venv: pip install -e '.[web]'")
    return web.main(args.serve_args)
