"""Intensities, geometry and normalisation between callers' images and the network."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import reference_file
from DeLightSAMLib.errors import ImageError
from DeLightSAMLib.intensity import apply_window, check_window, robust_window, to_rgb8
from DeLightSAMLib.transforms import PIXEL_MEAN, ImageTransform, threshold_logits


def test_reference_png_becomes_the_reference_input():
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_file("reference_image_seed1234.png"))))
    prepared = ImageTransform().prepare(image)[0].numpy()
    expected = np.load(reference_file("reference_input_seed1234.npy"))
    assert prepared.shape == (3, 1024, 1024)
    assert np.abs(prepared - expected).max() < 1e-6


def test_normalisation_is_the_released_loaders_quirk():
    gray = np.full((4, 5), 200, dtype=np.uint8)
    prepared = ImageTransform(image_size=8).prepare(gray)[0]
    for channel, mean in enumerate(PIXEL_MEAN):
        assert torch.allclose(prepared[channel], torch.tensor((200 - mean) / mean))


def test_uint8_rgb_passes_through_and_alpha_is_dropped():
    rgba = np.random.default_rng(0).integers(0, 256, size=(6, 7, 4), dtype=np.uint8)
    rgb = to_rgb8(rgba)
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 7, 3)
    np.testing.assert_array_equal(rgb, rgba[..., :3])


def test_gray_is_copied_to_three_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_rgb8(gray[..., None])
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.float64])
def test_non_8bit_data_goes_through_the_robust_window(dtype):
    values = (
        np.linspace(-1000, 3000, 200 * 10).reshape(200, 10).astype(dtype)
        if dtype != np.uint16
        else np.linspace(0, 4000, 2000).reshape(200, 10).astype(dtype)
    )
    rgb = to_rgb8(values)
    assert rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert 100 < rgb[100, 5, 0] < 155  # the middle of a linear ramp lands mid-gray


def test_explicit_window_maps_like_slicer_window_level():
    ct = np.array([[-1000, -160, 40, 240, 3000]], dtype=np.int16)
    np.testing.assert_array_equal(apply_window(ct, (40, 400)), [[0, 0, 128, 255, 255]])
    np.testing.assert_array_equal(to_rgb8(ct, window=(40, 400))[..., 1], [[0, 0, 128, 255, 255]])


def test_robust_window_ignores_outliers_and_nan():
    values = np.concatenate([np.linspace(0, 100, 10_000), [1e9, -1e9, np.nan]])
    center, width = robust_window(values)
    assert 45 < center < 55 and 95 < width < 101


def test_constant_image_does_not_divide_by_zero():
    assert to_rgb8(np.full((3, 3), 7.5, dtype=np.float32)).max() == 0


@pytest.mark.parametrize("shape", [(1, 1), (7, 1000), (3000, 2000), (1024, 1024), (513, 77)])
def test_mask_round_trip_through_model_geometry(shape):
    """A mask drawn at the caller's size, taken to the model's low-res logit grid and back, keeps its shape."""
    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width]
    mask = (
        (rows - height / 2) ** 2 / max(height / 3, 0.5) ** 2 + (cols - width / 2) ** 2 / max(width / 3, 0.5) ** 2
    ) < 1
    transform = ImageTransform()
    as_input = transform.prepare(mask.astype(np.uint8) * 255)  # (1, 3, 1024, 1024), same geometry as the image
    low_res = torch.nn.functional.interpolate(as_input[:, :1], size=(256, 256), mode="area")  # what a decoder sees
    logits = transform.logits_to_image(low_res - low_res.mean(), (height, width))
    assert logits.shape == (1, 1, height, width)
    back = threshold_logits(logits[0, 0])
    if min(shape) > 16:
        assert (back == mask).mean() > 0.99
    else:
        assert back.shape == mask.shape


def test_identity_geometry_at_model_size_is_exact():
    logits = torch.randn(1, 6, 256, 256)
    out = ImageTransform().logits_to_image(logits, (1024, 1024))
    expected = torch.nn.functional.interpolate(logits, (1024, 1024), mode="bilinear", align_corners=False)
    assert torch.equal(out, expected)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 3, 4, 5)), "expected a 2D image"),
        (np.zeros((4, 4, 5)), "expected a 2D image"),
        (np.zeros((0, 4)), "empty"),
        (np.array([["a", "b"]]), "unsupported pixel type"),
    ],
)
def test_unsupported_images_are_refused_clearly(bad, message):
    with pytest.raises(ImageError, match=message):
        to_rgb8(bad)


def test_threshold_is_validated_and_applied_to_probability():
    logits = np.array([-0.1, 0.0, 0.1], dtype=np.float32)
    np.testing.assert_array_equal(threshold_logits(logits, 0.5), [False, True, True])
    np.testing.assert_array_equal(threshold_logits(logits, 0.52), [False, False, True])
    with pytest.raises(ValueError, match="threshold"):
        threshold_logits(logits, 1.5)


def test_gray_and_alpha_arrays_are_gray():
    gray = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    with_alpha = np.stack([gray, np.full_like(gray, 65535)], -1)
    np.testing.assert_array_equal(to_rgb8(with_alpha), to_rgb8(gray))


@pytest.mark.parametrize(
    "window, message",
    [
        (400, "a pair .center, width. of numbers"),
        ((40,), "a pair .center, width. of numbers"),
        ((40, 400, 1), "a pair .center, width. of numbers"),
        (("40", "400"), "a pair .center, width. of numbers"),
        ((True, 400), "a pair .center, width. of numbers"),
        ((40, -400), "window width must not be negative"),
        ((40, float("nan")), "must be finite"),
        ((float("inf"), 400), "must be finite"),
    ],
)
def test_bad_windows_are_refused_clearly(window, message):
    image = np.arange(20, dtype=np.int16).reshape(4, 5)
    with pytest.raises(ImageError, match=message):
        to_rgb8(image, window)


def test_windows_of_any_number_types_are_taken():
    image = np.arange(20, dtype=np.int16).reshape(4, 5)
    expected = to_rgb8(image, (10.0, 20.0))
    for window in ([10, 20], np.array([10, 20]), (np.int64(10), np.float32(20))):
        np.testing.assert_array_equal(to_rgb8(image, window), expected)
    assert check_window((3, 0)) == (3.0, 0.0)  # zero width: a threshold at the center, as apply_window does
