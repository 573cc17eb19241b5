"""Loading, checking and downloading checkpoints, with a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import pytest
import torch

from DeLightSAMLib import checkpoint as ckpt
from DeLightSAMLib import registry
from DeLightSAMLib.build import build_model
from DeLightSAMLib.config import TINY_CONFIG
from DeLightSAMLib.errors import CheckpointError, DownloadError
from DeLightSAMLib.registry import CheckpointEntry, UnknownNameError


def test_download_over_http_verifies_and_reports_progress(server, tmp_path, reference_weights_path):
    url, digest = server
    seen = []
    path = ckpt.download_checkpoint(
        f"{url}/weights.pth", tmp_path, progress=lambda d, t: seen.append((d, t)), sha256=digest
    )
    assert path == tmp_path / "weights.pth"
    assert path.read_bytes() == reference_weights_path.read_bytes()
    size = reference_weights_path.stat().st_size
    assert seen[-1] == (size, size) and all(t == size for _, t in seen)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pth"]
    assert ckpt.remote_size(f"{url}/weights.pth") == size


def test_registry_entry_downloads_into_the_cache(server, monkeypatch, tmp_path):
    url, digest = server
    entry = CheckpointEntry(
        name="test-entry",
        filename="entry.pth",
        urls=(f"{url}/missing.pth", f"{url}/weights.pth"),
        description="test",
        sha256=digest,
    )
    monkeypatch.setitem(registry.CHECKPOINTS, "test-entry", entry)
    path = ckpt.download_checkpoint("test-entry")  # first URL is a 404: the second one is used
    assert path == Path(tmp_path / "cache" / "entry.pth")
    assert ckpt.resolve_checkpoint("test-entry") == (path, entry)


@pytest.mark.parametrize(
    "name, message",
    [
        ("truncated.pth", "not a readable PyTorch checkpoint"),
        ("quota.pth", "HTML page"),
        ("tiny.pth", "does not fit"),
        ("short.pth", "closed after 1000 of 1000000 bytes"),
        ("missing.pth", "HTTP 404"),
    ],
)
def test_bad_downloads_are_refused_and_leave_nothing(server, tmp_path, name, message):
    url, _ = server
    with pytest.raises(DownloadError, match=message):
        ckpt.download_checkpoint(f"{url}/{name}", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["chunked-drop.pth", "reset.pth"])
def test_a_connection_that_drops_mid_transfer_is_one_error_and_leaves_nothing(server, tmp_path, name):
    url, _ = server
    with pytest.raises(DownloadError, match=r"the connection closed after \d+ (of 1000000 )?bytes"):
        ckpt.download_checkpoint(f"{url}/{name}", tmp_path)
    assert list(tmp_path.iterdir()) == []


def _failing_writes(monkeypatch, error_number, after_bytes):
    """Files that checkpoint.py opens for writing fail with ``error_number`` once ``after_bytes`` are written."""
    import builtins
    import errno

    class Failing:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            if self.written + len(data) > after_bytes:
                raise OSError(error_number, errno.errorcode[error_number] and os.strerror(error_number))
            self.written += len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def opener(path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)
        return Failing(handle) if "w" in mode else handle

    monkeypatch.setattr(ckpt, "open", opener, raising=False)


def test_a_full_disk_during_a_download_is_one_error_and_leaves_nothing(server, monkeypatch, tmp_path):
    import errno

    url, _ = server
    _failing_writes(monkeypatch, errno.ENOSPC, after_bytes=3 << 20)
    with pytest.raises(DownloadError, match=r"cannot write the checkpoint into .* \(No space left on device\); free"):
        ckpt.download_checkpoint(f"{url}/weights.pth", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_one_error(tmp_path, monkeypatch, reference_weights_path):
    import errno

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(DownloadError, match="cannot write the checkpoint into .*Permission denied.*permissions"):
        ckpt.download_checkpoint(str(reference_weights_path), tmp_path)


def test_wrong_sha256_is_refused(server, tmp_path):
    url, _ = server
    with pytest.raises(DownloadError, match="SHA-256"):
        ckpt.download_checkpoint(f"{url}/weights.pth", tmp_path, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_says_check_the_network(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach .* check the network"):
        ckpt.download_checkpoint(f"http://127.0.0.1:{port}/weights.pth", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cancelling_from_the_progress_callback_leaves_nothing(server, tmp_path):
    url, _ = server

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled()

    with pytest.raises(Cancelled):
        ckpt.download_checkpoint(f"{url}/weights.pth", tmp_path, progress=cancel)
    assert list(tmp_path.iterdir()) == []


def test_local_file_is_copied_and_checked(tmp_path, reference_weights_path):
    path = ckpt.download_checkpoint(str(reference_weights_path), tmp_path / "out")
    assert path.read_bytes() == reference_weights_path.read_bytes()
    assert path.stat().st_mode & 0o044 == 0o044 & ~_umask()  # readable like any new file, not 0600


def _umask() -> int:
    import os

    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_existing_file_is_kept_when_a_new_download_fails(server, tmp_path):
    url, _ = server
    good = ckpt.download_checkpoint(f"{url}/weights.pth", tmp_path)
    before = good.read_bytes()
    (tmp_path / "src").mkdir()
    bad = tmp_path / "src" / "weights.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(DownloadError):
        ckpt.download_checkpoint(str(bad), tmp_path)
    assert good.read_bytes() == before


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module"])
def test_checkpoint_layouts_load_strictly(tmp_path, wrap):
    state = build_model(TINY_CONFIG).state_dict()
    if wrap == "module":
        saved = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "plain":
        saved = state
    else:
        saved = {wrap: state, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(saved, path)
    loaded = ckpt.read_state_dict(path)
    assert loaded.keys() == state.keys()
    model, entry = ckpt.load_model(path, TINY_CONFIG)
    assert entry is None
    assert torch.equal(model.mask_query.weight, state["mask_query.weight"])


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    state = build_model(TINY_CONFIG).state_dict()
    state.pop("mask_query.weight")
    state["extra.weight"] = torch.zeros(1)
    state["patch_decoder.3.bias"] = torch.zeros(2)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        ckpt.load_model(path, TINY_CONFIG)
    text = str(error.value)
    assert "1 missing: mask_query.weight" in text
    assert "1 unexpected: extra.weight" in text
    assert "1 mis-shaped: patch_decoder.3.bias (2,) (expected (1,))" in text
    assert str(path) in text


def test_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "sam.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, path)
    with pytest.raises(CheckpointError, match="not SAM or MobileSAM"):
        ckpt.load_model(path)


def test_pickled_objects_are_not_executed(tmp_path):
    path = tmp_path / "with_objects.pth"
    torch.save({"state_dict": build_model(TINY_CONFIG).state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="stores Python objects besides tensors.*re-save only its weights"):
        ckpt.read_state_dict(path)


def test_random_bytes_are_called_corrupt_not_pickled_objects(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*download it again"):
        ckpt.read_state_dict(path)


def test_missing_and_not_yet_downloaded_checkpoints_say_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="not downloaded yet.*delightsam download"):
        ckpt.resolve_checkpoint(None)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        ckpt.resolve_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(UnknownNameError, match="known checkpoints: delightsam"):
        ckpt.resolve_checkpoint("no-such-model")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DELIGHTSAM_CACHE_DIR", str(tmp_path / "here"))
    assert ckpt.cache_dir() == tmp_path / "here"
    assert ckpt.cached_path() == tmp_path / "here" / "delightsam_official.pth"


_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any 'import torch' fails, as on a fresh Slicer before PyTorch is installed
from DeLightSAMLib import checkpoint
from DeLightSAMLib.errors import DownloadError
source, truncated, html, folder = sys.argv[1:]
print(checkpoint.download_checkpoint(source, folder).name)
for bad in (truncated, html):
    try:
        checkpoint.download_checkpoint(bad, folder)
    except DownloadError as error:
        print("refused:", "truncated" in str(error), "HTML page" in str(error))
print(sorted(p.name for p in __import__("pathlib").Path(folder).iterdir()))
print("torch" in sys.modules and sys.modules["torch"] is not None)
"""


def test_download_needs_no_torch(tmp_path, reference_weights_path):
    """A fresh Slicer downloads before PyTorch exists: the download imports no torch and still refuses a truncated
    file and an HTML page (the archive check); loading makes the full check later."""
    import subprocess
    import sys

    data = reference_weights_path.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "quota.pth").write_text("<!DOCTYPE html><html><body>quota exceeded</body></html>")
    (tmp_path / "out").mkdir()
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _WITHOUT_TORCH,
            str(reference_weights_path),
            str(tmp_path / "truncated.pth"),
            str(tmp_path / "quota.pth"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        reference_weights_path.name,
        "refused: True False",
        "refused: False True",
        f"['{reference_weights_path.name}']",
        "False",
    ]


def test_google_drive_through_gdown_5(monkeypatch, tmp_path, reference_weights_path):
    """gdown 5 (the last for Python 3.9, Slicer 5.8) has no progress or timeout arguments: the library calls it
    with what it accepts, and progress comes from the writes."""
    import types

    data = reference_weights_path.read_bytes()
    calls = []

    def download(
        url=None,
        output=None,
        quiet=False,
        proxy=None,
        speed=None,
        use_cookies=True,
        verify=True,
        id=None,
        fuzzy=False,
        resume=False,
        format=None,
        user_agent=None,
        log_messages=None,
    ):  # gdown 5.2.0's signature
        calls.append(id)
        for start in range(0, len(data), 1 << 20):
            output.write(data[start : start + (1 << 20)])
        return output

    monkeypatch.setitem(__import__("sys").modules, "gdown", types.SimpleNamespace(download=download))
    seen = []
    path = ckpt.download_checkpoint("gdrive:FILEID", tmp_path, progress=lambda done, total: seen.append((done, total)))
    assert calls == ["FILEID"] and path.read_bytes() == data
    assert seen[-1] == (len(data), None) and len(seen) == -(-len(data) // (1 << 20))


def test_file_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib

    path = tmp_path / "weights.pth"
    path.write_bytes(b"a" * 1000)
    assert ckpt.file_sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *args, **kwargs: opened.append(args[0]) or real_open(*args, **kwargs))
    assert ckpt.file_sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest() and opened == []
    monkeypatch.undo()
    before = path.stat().st_mtime_ns
    path.write_bytes(b"b" * 1000)  # same size, new content (and a new time, even where the clock is coarse)
    os.utime(path, ns=(before + 10**9, before + 10**9))
    assert ckpt.file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()
