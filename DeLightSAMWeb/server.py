"""``delightsam serve``: start the web app, print its URL, open no browser.

127.0.0.1 by default. Any other ``--host`` makes a random access token: the printed URL carries it, the page's first
request turns it into a cookie, and every HTTP or websocket request without it is refused (401 without a token, 403
with a wrong one). Whatever the host, a websocket opened by a page of another site (its Origin header) is refused.
Checkpoints come only from the server's command line.
"""

from __future__ import annotations

import argparse
import hmac
import importlib.util
import logging
import os
import secrets
import socket
import sys
from typing import Optional, Sequence

from DeLightSAMLib.errors import first_line

logger = logging.getLogger(__name__)

TOKEN_COOKIE = "delightsam_token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="delightsam serve",
        description="Segment in the browser: De-LightSAM (Apply, All slices) and LiteMedSAM (box prompts) on Slicer's "
        "own core (trame-slicer). Prints the URL and serves until interrupted.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="images to load (NRRD, NIfTI, MHA, DICOM, PNG/JPEG) or a DICOMweb series, as `delightsam predict` takes "
        "it: dicomweb://HOST:PORT/PATH?StudyInstanceUID=...&SeriesInstanceUID=... (the first series it names)",
    )
    parser.add_argument("--checkpoint", default=None, help="De-LightSAM weights: registry name or .pth path")
    parser.add_argument(
        "--box-checkpoint", default=None, help="LiteMedSAM weights for box prompts: registry name or .pth path"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs the token)"
    )
    parser.add_argument("--max-upload-mb", type=int, default=512, help="largest upload accepted (default: 512 MB)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch CPU threads (default: cores - 1)")
    return parser


def token_middleware(token: str):
    """aiohttp middleware: the token from ``?token=`` or the cookie it set, compared in constant time."""
    from aiohttp import web

    @web.middleware
    async def check(request, handler):
        given = request.query.get("token")
        cookie = request.cookies.get(TOKEN_COOKIE)
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            response = await handler(request)
            if not isinstance(response, web.WebSocketResponse) and not response.prepared:
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            return response
        if cookie is not None and hmac.compare_digest(cookie.encode(), token.encode()):
            return await handler(request)
        if given is None and cookie is None:
            raise web.HTTPUnauthorized(text="access token required: open the URL the server printed\n")
        raise web.HTTPForbidden(text="wrong access token: open the URL the server printed\n")

    return check


def listen_error(host: str, port: int, error: OSError) -> str:
    reason = error.strerror or first_line(error)
    return f"delightsam serve: error: cannot listen on {host}:{port} ({reason}); choose another --port"


def port_error(host: str, port: int) -> Optional[str]:
    """The one-line error when ``host:port`` cannot be listened on (taken by another program, an address that is
    not this machine's), else None. The server's own bind may still lose a race: ``main`` catches that too."""
    if port == 0:
        return None
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no bar
            probe.bind(address)
    except OSError as error:
        return listen_error(host, port, error)
    return None


def origin_middleware():
    """aiohttp middleware: a websocket upgrade whose ``Origin`` is not this server's own address is refused (403),
    so that no other web page the user opens can drive the app (browsers send any page's websocket to 127.0.0.1).
    Requests without an Origin (not from a browser page) pass; the token, where there is one, still applies."""
    from urllib.parse import urlsplit

    from aiohttp import web

    @web.middleware
    async def check(request, handler):
        origin = request.headers.get("Origin")
        if origin is not None and request.headers.get("Upgrade", "").lower() == "websocket":
            if urlsplit(origin).netloc.lower() != (request.host or "").lower():
                raise web.HTTPForbidden(text="websocket from another site refused: open the URL the server printed\n")
        return await handler(request)

    return check


def configure_rendering() -> None:
    """Headless rendering (EGL when no display) without multisampling: 8x costs ~2.5x per frame on a CPU renderer."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame_slicer.views import abstract_view

    base = abstract_view.vtkRenderWindow

    class SingleSampleRenderWindow(base):
        def SetMultiSamples(self, _samples):  # noqa: N802 - VTK's name
            base.SetMultiSamples(self, 0)

    abstract_view.vtkRenderWindow = SingleSampleRenderWindow


def configure_torch(threads: Optional[int]) -> None:
    """Leave a core to rendering and the event loop: torch's threads otherwise compete with them."""
    import torch

    torch.set_num_threads(max(1, threads or (os.cpu_count() or 2) - 1))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    missing = [name for name in ("trame_slicer", "slicer", "torch") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"delightsam serve: error: {', '.join(missing)} not installed; the web app has a venv of its own: "
            "python3 -m venv venv-web && . venv-web/bin/activate && pip install -e '.[web]'",
            file=sys.stderr,
        )
        return 2
    if not 0 <= args.port <= 65535:
        print(f"delightsam serve: error: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    busy = port_error(args.host, args.port)  # before the scene and the views are built: a quick, quiet answer
    if busy:
        print(busy, file=sys.stderr)
        return 2
    # The project's own messages (per-run timings, loading) at INFO; other libraries' only from WARNING (trame's
    # optional encoders announce their absence at INFO, which a user would read as an error).
    logging.basicConfig(level=logging.WARNING, format="delightsam serve: %(message)s", force=True)
    for ours in ("DeLightSAMWeb", "DeLightSAMSlicerLib", "DeLightSAMLib"):
        logging.getLogger(ours).setLevel(logging.INFO)
    configure_rendering()
    configure_torch(args.torch_threads)

    from trame.app import get_server

    from .app import DeLightSAMWebApp

    server = get_server("delightsam", client_type="vue3")
    token = None if args.host in LOCAL_HOSTS else secrets.token_urlsafe(24)
    middlewares = [origin_middleware()] + ([token_middleware(token)] if token is not None else [])
    server.controller.on_server_bind.add(lambda wslinkServer: wslinkServer.app.middlewares.extend(middlewares))
    app = DeLightSAMWebApp(
        server, checkpoint=args.checkpoint, boxCheckpoint=args.box_checkpoint, device=args.device, inputs=args.inputs
    )
    app.uploads.maxBytes = args.max_upload_mb * 2**20

    def announce(**_kwargs):
        host = f"[{args.host}]" if ":" in args.host else args.host
        url = f"http://{host}:{server.port}/" + (f"?token={token}" if token else "")
        print(f"De-LightSAM web app: {url}", flush=True)

    server.controller.on_server_ready.add(announce)
    sys.argv = sys.argv[:1]  # trame parses sys.argv too; everything it needs is passed here
    try:
        server.start(port=args.port, host=args.host, open_browser=False, timeout=0, show_connection_info=False)
    except OSError as error:  # the port is taken (or the address is not this machine's)
        print(listen_error(args.host, args.port, error), file=sys.stderr)
        return 2
    finally:
        app.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
