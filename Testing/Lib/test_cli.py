"""The delightsam command: outputs on the reference fixture, volumes, and one-line errors that write nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeLightSAMLib.build import build_model
from DeLightSAMLib.config import TINY_CONFIG
from DeLightSAMLib.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_png_writes_mask_and_logits_matching_reference(capsys, tmp_path, reference_image_path,
                                                               reference_weights_path, reference_outputs):
    output, logits_path = tmp_path / "mask.png", tmp_path / "logits.npy"
    code, out, err = run(capsys, "predict", reference_image_path, "--modality", "dermoscopy", "--checkpoint",
                         reference_weights_path, "--output", output, "--logits", logits_path, "--device", "cpu")
    assert code == 0, err
    logits = np.load(logits_path)
    assert logits.dtype == np.float32 and logits.shape == (1024, 1024)
    assert np.abs(logits - reference_outputs["mask_logits_1024_modality0"]).max() < 1e-4
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert mask.shape == (1024, 1024) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, torch.sigmoid(torch.from_numpy(logits)).numpy() >= 0.5)  # float32, as released
    assert str(output) in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logits.npy", "mask.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a temporary file


def test_predict_volume_slice_by_slice_keeps_geometry(capsys, tmp_path, reference_weights_path):
    rng = np.random.default_rng(3)
    volume = rng.normal(0, 200, size=(2, 40, 50)).astype(np.int16)  # [k, j, i]
    volume[:, 10:30, 15:35] += 600
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    source = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(source))
    code, _, err = run(capsys, "predict", source, "-m", "xray", "-c", reference_weights_path, "--device", "cpu")
    assert code == 0, err
    written = sitk.ReadImage(str(tmp_path / "ct_mask.nrrd"))
    assert written.GetSize() == image.GetSize()
    assert np.allclose(written.GetSpacing(), image.GetSpacing()) and np.allclose(written.GetOrigin(), image.GetOrigin())
    assert np.allclose(written.GetDirection(), image.GetDirection())
    mask = sitk.GetArrayFromImage(written)
    assert set(np.unique(mask)) <= {0, 1}

    from DeLightSAMLib.predictor import Predictor
    from DeLightSAMLib.intensity import robust_window

    predictor = Predictor.from_checkpoint(str(reference_weights_path), device="cpu")
    predictor.set_image(volume[1], robust_window(volume))
    np.testing.assert_array_equal(mask[1], predictor.predict("xray").mask)


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_model(TINY_CONFIG).state_dict(), path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-input", "input not found"),
        ("unreadable-input", "cannot read"),
        ("unknown-modality", "unknown modality 'brain'"),
        ("wrong-checkpoint", "does not fit the De-LightSAM model"),
        ("not-downloaded", "not downloaded yet"),
        ("missing-checkpoint", "checkpoint file not found"),
        ("bad-threshold", "--threshold must be between 0 and 1"),
        ("4d-input", "only 2D images and 3D volumes"),
        ("multichannel-input", "values per pixel (a multi-channel or 4D image)"),
        ("all-nan-input", "no finite pixel values"),
    ],
)
def test_user_errors_print_one_line_and_write_nothing(capsys, tmp_path, reference_image_path, tiny_checkpoint, case, message):
    work = tmp_path / "work"
    work.mkdir()
    image = work / "image.png"
    shutil.copy(reference_image_path, image)
    args = ["predict", image, "--modality", "fundus", "--device", "cpu", "--output", work / "out.png",
            "--logits", work / "out.npy"]
    if case == "missing-input":
        args[1] = work / "nothing.png"
    elif case == "unreadable-input":
        (work / "broken.png").write_bytes(b"not a png")
        args[1] = work / "broken.png"
    elif case == "unknown-modality":
        args[3] = "brain"
    elif case == "wrong-checkpoint":
        args += ["--checkpoint", tiny_checkpoint]
    elif case == "missing-checkpoint":
        args += ["--checkpoint", work / "nope.pth"]
    elif case == "bad-threshold":
        args += ["--threshold", "2"]
    elif case == "4d-input":
        sitk.WriteImage(sitk.JoinSeries([sitk.Image([6, 5, 4], sitk.sitkFloat32)] * 3), str(work / "dynamic.nrrd"))
        args[1] = work / "dynamic.nrrd"
    elif case == "all-nan-input":
        sitk.WriteImage(sitk.GetImageFromArray(np.full((5, 6), np.nan, np.float32)), str(work / "empty.nrrd"))
        args[1] = work / "empty.nrrd"
    elif case == "multichannel-input":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6, 7), np.float32), isVector=True), str(work / "spectral.nrrd"))
        args[1] = work / "spectral.nrrd"
    before = sorted(p.name for p in work.iterdir())
    code, out, err = run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("delightsam: error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert sorted(p.name for p in work.iterdir()) == before


def test_download_without_network_is_one_line(capsys, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = run(capsys, "download", "--checkpoint", f"http://127.0.0.1:{port}/x.pth", "--to", tmp_path / "d")
    assert code == 2 and "check the network" in err and len(err.strip().splitlines()) == 1
    assert list((tmp_path / "d").iterdir()) == []


def test_download_and_info(capsys, tmp_path, reference_weights_path):
    code, out, _ = run(capsys, "download", "--checkpoint", reference_weights_path, "--to", tmp_path / "d")
    assert code == 0 and (tmp_path / "d" / reference_weights_path.name).is_file()
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert "modality 3: fundus" in out and "not downloaded" in out and str(tmp_path / "cache") in out


def test_console_script_is_installed():
    exe = shutil.which("delightsam", path=os.path.dirname(sys.executable)) or shutil.which("delightsam")
    assert exe, "the delightsam console script is not on PATH; install the package (pip install -e .)"
    result = subprocess.run([exe, "predict", "x.png", "--modality", "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("delightsam: error: unknown modality 'nope'")
