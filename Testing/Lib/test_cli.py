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


def test_predict_png_writes_mask_and_logits_matching_reference(
    capsys, tmp_path, reference_image_path, reference_weights_path, reference_outputs
):
    output, logits_path = tmp_path / "mask.png", tmp_path / "logits.npy"
    code, out, err = run(
        capsys,
        "predict",
        reference_image_path,
        "--modality",
        "dermoscopy",
        "--checkpoint",
        reference_weights_path,
        "--output",
        output,
        "--logits",
        logits_path,
        "--device",
        "cpu",
    )
    assert code == 0, err
    logits = np.load(logits_path)
    assert logits.dtype == np.float32 and logits.shape == (1024, 1024)
    assert np.abs(logits - reference_outputs["mask_logits_1024_modality0"]).max() < 1e-4
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert mask.shape == (1024, 1024) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(
        mask == 255, torch.sigmoid(torch.from_numpy(logits)).numpy() >= 0.5
    )  # float32, as released
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


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_one_input_with_output_replaces_the_file_with_or_without_overwrite(capsys, monkeypatch, tmp_path, overwrite):
    """--overwrite is a cohort option, but with one input and --output it is harmless: that file is replaced (it was
    refused with '--output names one file but the command has 1 cases')."""
    from cohort_data import TINY, save_tiny_checkpoint
    from DeLightSAMLib.registry import CHECKPOINTS

    monkeypatch.setitem(CHECKPOINTS, "tiny", TINY)
    save_tiny_checkpoint(tmp_path / "cache")
    work = tmp_path / "work"
    work.mkdir()
    source, output = work / "vol.nrrd", work / "out.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 12, 14), np.int16)), str(source))
    sitk.WriteImage(sitk.GetImageFromArray(np.full((1, 3, 3), 7, np.uint8)), str(output))  # an older result
    code, out, err = run(
        capsys, "predict", source, "-m", "xray", "-o", output, *overwrite, "-c", "tiny", "--device", "cpu"
    )
    assert code == 0 and err == "", err
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert mask.shape == (2, 12, 14) and set(np.unique(mask)) <= {0, 1}
    assert str(output) in out
    assert sorted(p.name for p in work.iterdir()) == ["out.nrrd", "vol.nrrd"]  # no summary, no cohort state


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
def test_user_errors_print_one_line_and_write_nothing(
    capsys, tmp_path, reference_image_path, tiny_checkpoint, case, message
):
    work = tmp_path / "work"
    work.mkdir()
    image = work / "image.png"
    shutil.copy(reference_image_path, image)
    args = [
        "predict",
        image,
        "--modality",
        "fundus",
        "--device",
        "cpu",
        "--output",
        work / "out.png",
        "--logits",
        work / "out.npy",
    ]
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
        sitk.WriteImage(
            sitk.GetImageFromArray(np.zeros((5, 6, 7), np.float32), isVector=True), str(work / "spectral.nrrd")
        )
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


def _one_line_error(code, err, message):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("delightsam: error: ") and message in lines[0], err
    assert "Traceback" not in err and "usage:" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "x.png", "-m", "xray", "--axis", "5"], "argument --axis: invalid choice"),
        (["predict", "x.png", "-m", "xray", "--axis", "k"], "argument --axis: invalid int value: 'k'"),
        (["predict", "-m", "xray"], "the following arguments are required: input"),
        (["predict", "x.png", "--box", "1", "2", "3"], "argument --box: expected 4 arguments"),
        (["predict", "x.png", "-m", "xray", "--threshold", "half"], "argument --threshold: invalid float value"),
        (["predict", "x.png", "-m", "xray", "--engine", "turbo"], "argument --engine: invalid choice"),
        (["predict", "x.png", "-m", "xray", "--window", "40"], "argument --window: expected 2 arguments"),
        (["predict", "x.png", "-m", "xray", "--colour", "red"], "unrecognized arguments: --colour red"),
        (["segment", "x.png"], "invalid choice"),
        ([], "the following arguments are required: command"),
        (["train", "--modality", "xray"], "the following arguments are required: --data"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    _one_line_error(code, err, message)
    assert out == ""


def test_help_still_prints_the_usage(capsys):
    code, out, _ = run(capsys, "predict", "--help")
    assert code == 0 and out.startswith("usage: delightsam predict") and "--engine" in out


@pytest.fixture()
def work_image(tmp_path, reference_image_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(reference_image_path, work / "image.png")
    return work / "image.png"


def _fails_before_the_network(monkeypatch):
    from DeLightSAMLib.predictor import Predictor

    def no_network(*args, **kwargs):
        raise AssertionError("the network was set up before the inputs were checked")

    monkeypatch.setattr(Predictor, "from_checkpoint", no_network)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "cpu:all"], "unknown device 'cpu:all'"),
        (["--device", "cuda:x"], "unknown device 'cuda:x'"),
        (["--device", "cuda:٣"], "unknown device 'cuda:٣'"),
        (["--device", "gpu"], "unknown device 'gpu'"),
        (["--device", "cpu:1"], "device 'cpu:1' does not exist"),
        (["--modality", "٣"], "unknown modality '٣'"),
        (["--modality", "³"], "unknown modality '³'"),
        (["--modality", "7"], "modality index 7 is out of range"),
        (["--window", "40", "-400"], "window width must not be negative"),
        (["--window", "nan", "400"], "window center and width must be finite"),
        (["--threshold", "nan"], "--threshold must be between 0 and 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_malformed_options_are_one_line(capsys, work_image, reference_weights_path, extra, message):
    args = ["predict", work_image, "--modality", "fundus", "-c", reference_weights_path, "--device", "cpu", *extra]
    before = sorted(p.name for p in work_image.parent.iterdir())
    code, _, err = run(capsys, *args)
    _one_line_error(code, err, message)
    assert sorted(p.name for p in work_image.parent.iterdir()) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--threshold", "2"], "--threshold must be between 0 and 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--window", "40", "-400"], "window width must not be negative"),
    ],
)
def test_malformed_options_fail_a_cohort_before_any_case(capsys, monkeypatch, work_image, extra, message):
    (work_image.parent / "second.png").write_bytes(work_image.read_bytes())
    before = sorted(p.name for p in work_image.parent.iterdir())
    _fails_before_the_network(monkeypatch)
    code, _, err = run(
        capsys, "predict", work_image.parent, "-m", "xray", "--output-dir", work_image.parent / "out", *extra
    )
    _one_line_error(code, err, message)
    assert sorted(p.name for p in work_image.parent.iterdir()) == before


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown-extension", "unsupported file type '.xyz'"),
        ("jpeg-mask", "unsupported file type '.jpg' (JPEG is lossy: a mask would not stay 0/255"),
        ("detached-header", "unsupported file type '.nhdr'"),
        ("logits-not-npy", "unsupported file type '.txt'"),
        ("missing-folder", "does not exist"),
    ],
)
def test_outputs_are_checked_before_the_network_runs(capsys, monkeypatch, work_image, case, message):
    work = work_image.parent
    source = work_image
    output, logits = work / "out.png", work / "out.npy"
    if case == "unknown-extension":
        output = work / "out.xyz"
    elif case == "jpeg-mask":  # lossy: the mask's edges would come back as other values than 0 and 255
        output = work / "out.jpg"
    elif case == "detached-header":  # its data file would keep the temporary name
        source = work / "ct.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 9), np.int16)), str(source))
        output = work / "out.nhdr"
    elif case == "logits-not-npy":
        logits = work / "out.png.txt"
    elif case == "missing-folder":
        logits = work / "no" / "out.npy"
    before = sorted(p.name for p in work.iterdir())
    _fails_before_the_network(monkeypatch)
    code, _, err = run(capsys, "predict", source, "-m", "xray", "--output", output, "--logits", logits)
    _one_line_error(code, err, message)
    assert sorted(p.name for p in work.iterdir()) == before


def test_detached_volumes_get_a_single_file_mask_by_default(capsys, monkeypatch, tmp_path):
    from DeLightSAMLib.cli import default_output
    from DeLightSAMLib.imageio import read_image

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 9), np.int16)), str(tmp_path / "ct.nhdr"))
    assert default_output(read_image(tmp_path / "ct.nhdr")) == tmp_path / "ct_mask.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 8, 9), np.int16)), str(tmp_path / "mr.nii.gz"))
    assert default_output(read_image(tmp_path / "mr.nii.gz")) == tmp_path / "mr_mask.nii.gz"


def test_a_cut_off_compressed_volume_is_refused(capsys, monkeypatch, tmp_path):
    source = tmp_path / "ct.nii.gz"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 300, (4, 30, 40)).astype(np.int16)), str(source)
    )
    data = source.read_bytes()
    source.write_bytes(data[: len(data) * 2 // 3])
    _fails_before_the_network(monkeypatch)
    code, _, err = run(capsys, "predict", source, "-m", "xray")
    _one_line_error(code, err, "stops before its end")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_gray_and_alpha_png_is_segmented_as_gray(capsys, tmp_path, reference_image_path, reference_weights_path):
    gray = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_image_path)))[::4, ::4, 1]
    sitk.WriteImage(
        sitk.GetImageFromArray(np.stack([gray, np.full_like(gray, 255)], -1), isVector=True), str(tmp_path / "ga.png")
    )
    sitk.WriteImage(sitk.GetImageFromArray(gray), str(tmp_path / "g.png"))
    for name, extra in (("ga", []), ("g", ["--axis", "0"])):  # an image has no slices: --axis changes nothing
        code, _, err = run(
            capsys,
            "predict",
            tmp_path / f"{name}.png",
            "-m",
            "dermoscopy",
            "-c",
            reference_weights_path,
            "--device",
            "cpu",
            "--engine",  # eager: the same arithmetic each run (fast adapts its thread count to the machine's load)
            "eager",
            "--logits",
            tmp_path / f"{name}.npy",
            *extra,
        )
        assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "ga.npy"), np.load(tmp_path / "g.npy"))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ga_mask.png"))).shape == gray.shape


def test_download_broken_off_mid_transfer_is_one_line(capsys, tmp_path, server):
    url, _ = server
    code, _, err = run(capsys, "download", "--checkpoint", f"{url}/chunked-drop.pth", "--to", tmp_path / "d")
    _one_line_error(code, err, "the connection closed after")
    assert list((tmp_path / "d").iterdir()) == []


def test_download_onto_a_full_disk_is_one_line(capsys, monkeypatch, tmp_path, reference_weights_path):
    import builtins
    import errno

    from DeLightSAMLib import checkpoint

    class Full:
        def __init__(self, *args, **kwargs):
            self.handle = builtins.open(*args, **kwargs)

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(
        checkpoint,
        "open",
        lambda path, mode="r", *a, **k: (
            Full(path, mode, *a, **k) if "w" in mode else builtins.open(path, mode, *a, **k)
        ),
        raising=False,
    )
    code, _, err = run(capsys, "download", "--checkpoint", reference_weights_path, "--to", tmp_path / "d")
    _one_line_error(code, err, "No space left on device")
    assert list((tmp_path / "d").iterdir()) == []


def test_evaluate_help_describes_evaluation_not_training(capsys):
    code, out, _ = run(capsys, "evaluate", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "weights to evaluate, registry name or .pth" in text and "starting weights" not in text
    assert "metrics.csv, evaluate.log, summary.json" in text and "checkpoints" not in text
