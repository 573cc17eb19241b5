"""`delightsam predict --box`: LiteMedSAM through the command line on 2D images and volumes, overlays, and the
one-line errors that write nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeLightSAMLib.cli import main
from DeLightSAMLib.intensity import robust_window
from DeLightSAMLib.overlay import BOX_COLOUR, PALETTE
from DeLightSAMLib.transforms import LongestSideTransform

TOLERANCE = 1e-4


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _png(path, rgb):
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=rgb.ndim == 3), str(path))
    return path


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_one_box_writes_mask_logits_and_overlay_at_the_input_size(
    capsys, tmp_path, litemedsam_reference, litemedsam_cached
):
    ref = litemedsam_reference
    image = _png(tmp_path / "ellipse.png", ref["image_2"])
    box = ref["box_2"]  # 150 70 350 215
    code, out, err = run(
        capsys,
        "predict",
        image,
        "--box",
        *box,
        "--logits",
        tmp_path / "l.npy",
        "--overlay",
        tmp_path / "o.png",
        "--device",
        "cpu",
    )  # default checkpoint: litemedsam
    assert code == 0, err
    assert str(tmp_path / "ellipse_mask.png") in out and "IoU estimate 0.95" in out
    logits = np.load(tmp_path / "l.npy")
    assert logits.dtype == np.float32 and logits.shape == (300, 420)
    assert np.abs(logits - ref["logits_2"]).max() < TOLERANCE
    mask = _read(tmp_path / "ellipse_mask.png")
    assert mask.shape == (300, 420) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask == 255, torch.sigmoid(torch.from_numpy(logits)).numpy() > 0.5)

    overlay = _read(tmp_path / "o.png")
    assert overlay.shape == (300, 420, 3) and overlay.dtype == np.uint8
    x0, y0, x1, y1 = (int(v) for v in box)
    assert (overlay[y0 : y1 + 1, x0] == BOX_COLOUR).all() and (overlay[y1, x0 : x1 + 1] == BOX_COLOUR).all()
    far = np.ones((300, 420), bool)
    far[y0 - 2 : y1 + 3, x0 - 2 : x1 + 3] = False
    np.testing.assert_array_equal(overlay[far], ref["image_2"][far])  # outside the box: the image as it is
    inside = (mask == 255).copy()
    inside[: y0 + 3], inside[y1 - 2 :], inside[:, : x0 + 3], inside[:, x1 - 2 :] = False, False, False, False
    tinted = overlay[inside].astype(int) - ref["image_2"][inside].astype(int)
    assert (np.sign(tinted) == np.sign(np.array(PALETTE[0]) - 128)).mean() > 0.5  # pulled towards the mask colour
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ellipse.png", "ellipse_mask.png", "l.npy", "o.png"]


def test_radiograph_mask_matches_reference_where_decided(capsys, tmp_path, litemedsam_reference, litemedsam_cached):
    ref = litemedsam_reference
    image = _png(tmp_path / "chest.png", ref["image_1"])
    code, _, err = run(
        capsys,
        "predict",
        image,
        "--box",
        *ref["box_1"],
        "--checkpoint",
        "litemedsam",
        "--output",
        tmp_path / "lung.nrrd",
        "--device",
        "cpu",
    )
    assert code == 0, err
    mask = _read(tmp_path / "lung.nrrd")
    assert mask.shape == (978, 921) and set(np.unique(mask)) == {0, 1}
    reference_logits = (
        LongestSideTransform()
        .logits_to_image(torch.from_numpy(ref["low_res_logits_1"])[None, None], (978, 921))[0, 0]
        .numpy()
    )
    decided = np.abs(reference_logits) > TOLERANCE
    np.testing.assert_array_equal((mask == 1)[decided], ref["mask_1"][decided])


def test_several_boxes_give_labels_and_stacked_logits(
    capsys, tmp_path, litemedsam_reference, litemedsam_predictor, litemedsam_cached
):
    ref = litemedsam_reference
    image = _png(tmp_path / "ellipse.png", ref["image_2"])
    boxes = [[150, 70, 350, 215], [0, 0, 140, 120], [300, 150, 500, 320]]  # the last one partly outside
    args = ["predict", image, "--output", tmp_path / "labels.png", "--logits", tmp_path / "l.npy", "--device", "cpu"]
    for box in boxes:
        args += ["--box", *box]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "label 1:" in out and "label 3:" in out
    labels = _read(tmp_path / "labels.png")
    logits = np.load(tmp_path / "l.npy")
    assert labels.shape == (300, 420) and logits.shape == (3, 300, 420) and logits.dtype == np.float32
    litemedsam_predictor.set_image(ref["image_2"])
    expected = litemedsam_predictor.predict(boxes, return_logits=True)
    np.testing.assert_array_equal(labels, expected.label_image())
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels == 1).sum() > 1000
    np.testing.assert_allclose(logits, expected.logits, atol=TOLERANCE)


def _volume(tmp_path, name="ct.nrrd"):
    rng = np.random.default_rng(5)
    volume = rng.normal(0, 30, size=(5, 40, 60)).astype(np.int16)  # [k, j, i]
    volume[:, 10:30, 20:45] += 500
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 3.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / name))
    return tmp_path / name, volume, image


def test_volume_box_segments_only_the_slice_range(capsys, tmp_path, litemedsam_predictor, litemedsam_cached):
    source, volume, image = _volume(tmp_path)
    code, _, err = run(
        capsys,
        "predict",
        source,
        "--box",
        15,
        5,
        50,
        35,
        "--slices",
        1,
        3,
        "--logits",
        tmp_path / "l.npy",
        "--overlay",
        tmp_path / "o.png",
        "--device",
        "cpu",
    )
    assert code == 0, err
    written = sitk.ReadImage(str(tmp_path / "ct_mask.nrrd"))
    assert written.GetSize() == image.GetSize() and np.allclose(written.GetSpacing(), image.GetSpacing())
    assert np.allclose(written.GetOrigin(), image.GetOrigin())
    mask = sitk.GetArrayFromImage(written)
    logits = np.load(tmp_path / "l.npy")
    assert logits.shape == volume.shape and logits.dtype == np.float32
    assert not mask[0].any() and not mask[4].any() and np.isneginf(logits[[0, 4]]).all()
    window = robust_window(volume)
    for k in (1, 3):
        litemedsam_predictor.set_image(volume[k], window)
        expected = litemedsam_predictor.predict([15, 5, 50, 35], return_logits=True)
        np.testing.assert_array_equal(mask[k] == 1, expected.masks[0])
        np.testing.assert_allclose(logits[k], expected.logits[0], atol=TOLERANCE)
    assert mask[1:4].sum() > 300  # the bright block is found
    assert _read(tmp_path / "o.png").shape == (40, 60, 3)


def test_volume_boxes_along_another_axis(capsys, tmp_path, litemedsam_predictor, litemedsam_cached):
    source, volume, _ = _volume(tmp_path)
    # axis i=0: slices are volume[:, :, i], rows k and columns j; the box is in those coordinates
    code, _, err = run(
        capsys,
        "predict",
        source,
        "--axis",
        0,
        "--box",
        0,
        0,
        39,
        4,
        "--box",
        5,
        1,
        35,
        4,
        "--slices",
        25,
        26,
        "--output",
        tmp_path / "labels.nii.gz",
        "--logits",
        tmp_path / "l.npy",
        "--device",
        "cpu",
    )
    assert code == 0, err
    labels = _read(tmp_path / "labels.nii.gz")
    logits = np.load(tmp_path / "l.npy")
    assert labels.shape == volume.shape and logits.shape == (2, *volume.shape)
    assert not labels[:, :, :25].any() and not labels[:, :, 27:].any()
    window = robust_window(volume)
    litemedsam_predictor.set_image(volume[:, :, 26], window)
    expected = litemedsam_predictor.predict([[0, 0, 39, 4], [5, 1, 35, 4]], return_logits=True)
    np.testing.assert_array_equal(labels[:, :, 26], expected.label_image())
    np.testing.assert_allclose(logits[:, :, :, 26], expected.logits, atol=TOLERANCE)


def test_overlay_with_a_modality(capsys, tmp_path, reference_weights_path):
    rgb = np.zeros((64, 80, 3), np.uint8)
    rgb[16:48, 20:60] = (200, 120, 90)
    image = _png(tmp_path / "skin.png", rgb)
    code, _, err = run(
        capsys,
        "predict",
        image,
        "--modality",
        "dermoscopy",
        "--checkpoint",
        reference_weights_path,
        "--overlay",
        tmp_path / "o.png",
        "--device",
        "cpu",
        "--engine",
        "eager",
    )
    assert code == 0, err
    mask = _read(tmp_path / "skin_mask.png") == 255
    overlay = _read(tmp_path / "o.png")
    assert overlay.shape == (64, 80, 3)
    np.testing.assert_array_equal(overlay[~mask], rgb[~mask])  # no box drawn; only the mask is coloured
    assert mask.any() and (overlay[mask] != rgb[mask]).any(axis=-1).all()


@pytest.mark.parametrize(
    "case, message",
    [
        ("both", "--modality and --box cannot be combined"),
        ("neither", "nothing to segment by"),
        ("empty-box", "box 1 (10 10 10 40) is empty or inverted"),
        ("inverted-box", "is empty or inverted"),
        ("nan-box", "not a finite number"),
        ("outside-box", "lies wholly outside the image of 64 x 48 pixels"),
        ("second-box-bad", "box 2 (5 5 1 9) is empty or inverted"),
        ("delightsam-with-box", "is a De-LightSAM model, which takes no box"),
        ("litemedsam-with-modality", "is LiteMedSAM, a box-prompted model"),
        ("slices-on-2d", "--slices is for 3D volumes"),
        ("slices-with-modality", "--slices goes with --box"),
        ("slices-out-of-range", "--slices 3 9 is not a range within 0..4"),
        ("slices-reversed", "--slices 3 1 is not a range"),
        ("volume-box-outside", "lies wholly outside the image of 60 x 40 pixels"),
        ("missing-folder", "the folder"),
        ("logits-suffix", "--logits"),
        ("overlay-suffix", "--overlay"),
        ("overwrite-input", "is also the input or another output"),
        ("same-outputs", "is also the input or another output"),
        ("volume-as-png", "unsupported file type '.png'"),
        ("output-is-folder", "is a folder"),
    ],
)
def test_box_mistakes_print_one_line_and_write_nothing(
    capsys, tmp_path, case, message, reference_weights_path, litemedsam_weights_path
):
    work = tmp_path / "work"
    work.mkdir()
    image = _png(work / "image.png", np.full((48, 64), 90, np.uint8))
    volume, _, _ = _volume(work, "vol.nrrd")
    box = ["--box", 10, 10, 30, 40]
    tail = ["--device", "cpu", "--output", work / "out.png", "--logits", work / "out.npy", "--overlay", work / "o.png"]
    args = {
        "both": [image, *box, "--modality", "xray"],
        "neither": [image],
        "empty-box": [image, "--box", 10, 10, 10, 40],
        "inverted-box": [image, "--box", 30, 10, 10, 40],
        "nan-box": [image, "--box", 10, "nan", 30, 40],
        "outside-box": [image, "--box", 70, 10, 90, 40],
        "second-box-bad": [image, *box, "--box", 5, 5, 1, 9],
        "delightsam-with-box": [image, *box, "--checkpoint", reference_weights_path],
        "litemedsam-with-modality": [image, "--modality", "xray", "--checkpoint", litemedsam_weights_path],
        "slices-on-2d": [image, *box, "--slices", 0, 0],
        "slices-with-modality": [volume, "--modality", "xray", "--slices", 0, 1],
        "slices-out-of-range": [volume, *box, "--slices", 3, 9],
        "slices-reversed": [volume, *box, "--slices", 3, 1],
        "volume-box-outside": [volume, "--box", 60, 0, 70, 10],
        "missing-folder": [image, *box],
        "logits-suffix": [image, *box],
        "overlay-suffix": [image, *box],
        "overwrite-input": [image, *box],
        "same-outputs": [image, *box],
        "volume-as-png": [volume, *box],
        "output-is-folder": [image, *box],
    }[case]
    argv = ["predict", *args, *tail]
    if case == "missing-folder":
        argv[argv.index("--overlay") + 1] = work / "no-such-folder" / "o.png"
    elif case == "logits-suffix":
        argv[argv.index("--logits") + 1] = work / "out.txt"
    elif case == "overlay-suffix":
        argv[argv.index("--overlay") + 1] = work / "o.jpg"
    elif case == "overwrite-input":
        argv[argv.index("--output") + 1] = image
    elif case == "same-outputs":
        argv[argv.index("--overlay") + 1] = work / "out.png"
    elif case in (
        "volume-as-png",
        "slices-out-of-range",
        "slices-reversed",
        "volume-box-outside",
        "slices-with-modality",
    ):
        argv[argv.index("--output") + 1] = work / ("out.png" if case == "volume-as-png" else "out.nrrd")
    elif case == "output-is-folder":
        (work / "folder.png").mkdir()
        argv[argv.index("--output") + 1] = work / "folder.png"
    before = sorted(p.name for p in work.iterdir())
    snapshot = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("delightsam: error: ") and message in lines[0], err
    assert sorted(p.name for p in work.iterdir()) == before
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == snapshot


def test_outputs_are_written_all_or_none(capsys, tmp_path, monkeypatch, litemedsam_reference, litemedsam_cached):
    """A failure while writing the last output leaves none of them behind."""
    from DeLightSAMLib import imageio

    image = _png(tmp_path / "ellipse.png", litemedsam_reference["image_2"])

    def broken(rgb):
        def write(temporary):
            raise OSError(28, "No space left on device")

        return write

    monkeypatch.setattr(imageio, "rgb_writer", broken)
    code, _, err = run(
        capsys,
        "predict",
        image,
        "--box",
        150,
        70,
        350,
        215,
        "--logits",
        tmp_path / "l.npy",
        "--overlay",
        tmp_path / "o.png",
        "--device",
        "cpu",
    )
    assert code == 2 and "No space left on device" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ellipse.png"]


def test_console_script_runs_box_prompts(tmp_path, litemedsam_reference):
    import subprocess
    import sys

    exe = shutil.which("delightsam", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe
    result = subprocess.run([exe, "predict", "x.png", "--box", "1", "2", "3"], capture_output=True, text=True)
    assert result.returncode == 2 and "--box: expected 4 arguments" in result.stderr


def test_a_box_partly_outside_the_image_is_clipped_with_one_line(capsys, caplog, tmp_path):
    image = _png(tmp_path / "small.png", np.zeros((48, 64), np.uint8))
    code, _, err = run(capsys, "predict", image, "--box", 50, -5, 90, 40, "--checkpoint", tmp_path / "none.pth")
    assert code == 2 and "checkpoint file not found" in err  # the box was checked (and clipped) before loading
    said = [record.getMessage() for record in caplog.records if "clipped" in record.getMessage()]
    assert said == [
        "box 1 (50 -5 90 40) reaches outside small.png (64 x 48 pixels, width x height): clipped to 50 0 64 40"
    ]
