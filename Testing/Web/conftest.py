"""Browser tests of the web app (``delightsam serve``) in Debian's headless Chromium, through playwright's Python
package on the system browser (never a downloaded one).

They run in the web venv only (``pip install -e '.[web,web-test]'``: trame-slicer pins slicer-core 5.11 and vtk
9.6.0, which cannot share a venv with the ``slicer-test`` extra). Elsewhere this folder is not collected at all (CI turns skips
into failures).
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

collect_ignore_glob = []
if importlib.util.find_spec("trame_slicer") is None or importlib.util.find_spec("playwright") is None:
    collect_ignore_glob = ["test_*.py"]

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("DELIGHTSAM_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
URL_LINE = re.compile(r"De-LightSAM web app: (\S+)")
START_TIMEOUT_S = 120.0  # from the command to its URL line (a few seconds normally; slow CI machines)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WebServer:
    """``delightsam serve ...`` (the CLI's hook into DeLightSAMWeb) in a subprocess; ``url`` is what it printed."""

    def __init__(self, args, log: Path) -> None:
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self._logFile = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "DeLightSAMLib", "serve", *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=self._logFile,
            text=True,
            cwd=REPO,
            env=env,
        )
        self.started = time.perf_counter()
        self.url = self._waitForUrl()

    def _waitForUrl(self, timeout: float = START_TIMEOUT_S) -> str:
        """The URL the server prints; fails with the server's output if it exits first or prints none in time."""
        lines: queue.Queue = queue.Queue()

        def read() -> None:  # (in a thread: readline has no timeout; it goes on draining stdout afterwards)
            for line in self.process.stdout:
                lines.put(line)
            lines.put("")

        threading.Thread(target=read, daemon=True).start()
        deadline = time.perf_counter() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                self.stop()
                raise RuntimeError(
                    f"the web server printed no URL in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}"
                ) from None
            if not line:
                self.stop()
                raise RuntimeError(f"the web server exited before printing its URL:\n{self.log.read_text()[-3000:]}")
            match = URL_LINE.search(line)
            if match:
                return match.group(1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._logFile.close()


def write_volume(path: Path, seed: int = 7) -> Path:
    """A small CT-like NRRD, 5 axial slices of 64 x 80: noise (from ``seed``) plus a bright block (its middle slice is
    shown)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    voxels = rng.normal(0.0, 15.0, (5, 64, 80)).astype(np.int16)
    voxels[:, 18:46, 22:58] += 400
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-30.0, -20.0, 10.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="session")
def web_volume(tmp_path_factory) -> Path:
    return write_volume(tmp_path_factory.mktemp("web") / "ct.nrrd")


@pytest.fixture(scope="session")
def web_server(tmp_path_factory, web_volume, reference_weights_path, litemedsam_weights_path):
    folder = tmp_path_factory.mktemp("web-server")
    shown = folder / "cli.nrrd"  # what the command line loads; each test uploads ct.nrrd
    shutil.copy(web_volume, shown)
    server = WebServer(
        [
            shown,
            "--checkpoint",
            reference_weights_path,
            "--box-checkpoint",
            litemedsam_weights_path,
            "--device",
            "cpu",
            "--port",
            free_port(),
            "--torch-threads",
            "1",
        ],
        folder / "server.log",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set DELIGHTSAM_CHROMIUM)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, web_server, web_volume):
    """A fresh tab on the app with the test volume loaded (uploaded) and its first image shown."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.goto(web_server.url)
    upload(page, web_volume)
    expect_status(page, r"loaded ct\.nrrd")
    wait_for_view(page)
    page.locator('[data-testid="save-format"]').select_option("seg.nrrd")  # one server serves every test
    page.locator('[data-testid="modality"]').select_option("dermoscopy")  # (direct_labels segments dermoscopy)
    yield page
    context.close()


def upload(page, path: Path) -> None:
    page.locator('[data-testid="upload"]').set_input_files(str(path))


def status(page) -> str:
    return page.locator('[data-testid="status"]').inner_text()


def expect_status(page, pattern: str, timeout: float = 60.0) -> str:
    """Wait until the status line matches ``pattern`` (a regular expression); returns it."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        text = status(page)
        if re.search(pattern, text):
            return text
        page.wait_for_timeout(100)
    raise AssertionError(f"status never matched {pattern!r}; it says: {status(page)!r}")


def red_view(page):
    return page.locator("img.image-display-area").first


def wait_for_view(page, timeout: float = 20.0) -> None:
    page.wait_for_function(
        "() => { const i = document.querySelector('img.image-display-area'); return i && i.naturalWidth > 0; }",
        timeout=timeout * 1000,
    )


def view_pixels(page, settle_ms: int = 600) -> np.ndarray:
    """(rows, cols, 3) uint8 of the Red view as the page shows it, once the image stops changing."""
    import SimpleITK as sitk

    previous = None
    for _attempt in range(20):
        page.wait_for_timeout(settle_ms)
        png = red_view(page).screenshot()
        if png == previous:
            break
        previous = png
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"delightsam-view-{os.getpid()}.png"
    path.write_bytes(previous)
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    path.unlink()
    return np.asarray(pixels)[..., :3]


def read_seg_nrrd(data: bytes) -> np.ndarray:
    """The label voxels (i, j, k) of a downloaded .seg.nrrd, through slicerio."""
    import tempfile

    import slicerio

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "download.seg.nrrd"
        path.write_bytes(data)
        segmentation = slicerio.read_segmentation(str(path))
    return np.asarray(segmentation["voxels"])
