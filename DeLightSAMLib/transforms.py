"""Everything between a caller's image and the network's input and output: intensities, geometry, normalisation.

Images are numpy arrays (H, W) gray or (H, W, C) with C in {1, 3, 4}; rows first. De-LightSAM sees (1, 3, S, S)
float32 with S = ``image_size`` (1024 for the released model), stretched (``ImageTransform``); LiteMedSAM sees the
image with its longest side resized to 256 and padded (``LongestSideTransform``), and boxes scaled with it.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F

from .errors import ArgumentError, BoxError
from .intensity import Window, to_rgb8

# The released data loader's normalisation: x = (rgb - m) / m per channel. A quirk; kept exactly (MODEL.md §1).
PIXEL_MEAN = (123.675, 116.280, 103.530)


def normalize(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float RGB in 0..255 -> the network's normalised input, (rgb - m) / m per channel."""
    mean = torch.tensor(PIXEL_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / mean


def resize_bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) float maps; area-averaging (antialias) along axes that shrink."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False, antialias=True)


class ImageTransform:
    """Resizing between the caller's image (H, W) and the model's square input (S, S), both ways.

    The aspect ratio is not kept: the released model was trained on images stretched to S x S.
    """

    def __init__(self, image_size: int = 1024) -> None:
        self.image_size = image_size

    def prepare(
        self, image: np.ndarray, window: Optional[Window] = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """A 2D image (any supported type) -> (1, 3, S, S) float32 normalised network input."""
        rgb = torch.from_numpy(to_rgb8(image, window)).to(device)
        return self.prepare_rgb8(rgb)

    def prepare_rgb8(self, rgb: torch.Tensor) -> torch.Tensor:
        """(H, W, 3) uint8 tensor -> (1, 3, S, S) float32 normalised network input."""
        pixels = rgb.permute(2, 0, 1).unsqueeze(0).float()
        pixels = resize_bilinear(pixels, (self.image_size, self.image_size))
        return normalize(pixels)

    def logits_to_image(self, low_res_logits: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """(B, M, h, w) low-resolution logits -> (B, M, H, W) logits at the caller's size.

        First the released evaluation's bilinear upsampling to S x S, then the inverse of the input resize.
        """
        full = F.interpolate(
            low_res_logits.float(), size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        return resize_bilinear(full, tuple(original_size))


def check_threshold(threshold: float) -> float:
    """``threshold`` if it is a number strictly between 0 and 1, else ArgumentError."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 < threshold < 1.0:
        raise ArgumentError(f"threshold must be a number between 0 and 1 (exclusive), got {threshold!r}")
    return threshold


def threshold_logits(logits: torch.Tensor | np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask ``sigmoid(logits) >= threshold`` computed in float32, as the released evaluation does."""
    check_threshold(threshold)
    logits = torch.as_tensor(logits).float()
    return (torch.sigmoid(logits) >= threshold).cpu().numpy()


# ------------------------------------------------------------------------------------------------ LiteMedSAM
class LongestSideTransform:
    """LiteMedSAM's geometry (CVPR24_LiteMedSAM_infer.py): longest side to S with area interpolation, min-max
    normalisation, zero padding at the bottom and right to S x S; boxes scaled by S / longest side and truncated to
    whole pixels; logits cropped to the resized image and resized bilinearly back to the caller's size.
    """

    def __init__(self, image_size: int = 256) -> None:
        self.image_size = image_size

    def resized_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image once its longest side is S: each side times S / longest, rounded half up."""
        height, width = original_size
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def prepare(
        self, image: np.ndarray, window: Optional[Window] = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """A 2D image (any supported type) -> (1, 3, S, S) float32 network input."""
        rgb = to_rgb8(image, window)
        resized = resize_area(rgb, self.resized_size(rgb.shape[:2]))
        pixels = torch.from_numpy(resized).to(device).permute(2, 0, 1).float()
        low, high = pixels.min(), pixels.max()
        pixels = (pixels - low) / torch.clamp(high - low, min=1e-8)
        padded = pixels.new_zeros(3, self.image_size, self.image_size)
        padded[:, : pixels.shape[1], : pixels.shape[2]] = pixels
        return padded.unsqueeze(0)

    def boxes_to_input(self, boxes: np.ndarray, original_size: tuple[int, int]) -> torch.Tensor:
        """(N, 4) boxes in the image's pixels -> (N, 4) float32 boxes in the network input's pixels.

        Each coordinate is multiplied by S / longest side and truncated to an integer, as the released pipeline.
        """
        scale = self.image_size / max(original_size)
        scaled = [[float(int(value * scale)) for value in box] for box in np.asarray(boxes, dtype=np.float64)]
        return torch.tensor(scaled, dtype=torch.float32).reshape(-1, 4)

    def logits_to_image(self, low_res_logits: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """(N, M, S, S) logits -> (N, M, H, W): crop the padding, then bilinear (align_corners=False) to (H, W)."""
        height, width = self.resized_size(original_size)
        cropped = low_res_logits[..., :height, :width].float()
        return F.interpolate(cropped, size=tuple(original_size), mode="bilinear", align_corners=False)


def clip_boxes(boxes, image_size: tuple[int, int]) -> np.ndarray:
    """(4,) or (N, 4) boxes (x0, y0, x1, y1) in pixels -> (N, 4) float64 boxes clipped to the image.

    x runs along columns, y along rows; the image spans 0..W and 0..H. A box partly outside is clipped; an empty
    or inverted box (x1 <= x0 or y1 <= y0), a non-finite one, or one wholly outside the image raises BoxError.
    """
    try:
        array = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise BoxError(f"a box must be four numbers x0 y0 x1 y1, got {boxes!r}") from error
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4 or array.shape[0] == 0:
        raise BoxError(f"boxes must be four numbers x0 y0 x1 y1 each (shape (4,) or (N, 4)), got shape {array.shape}")
    height, width = image_size
    clipped = array.copy()
    for number, (x0, y0, x1, y1) in enumerate(array, start=1):
        label = f"box {number} ({_format_box((x0, y0, x1, y1))})"
        if not np.all(np.isfinite([x0, y0, x1, y1])):
            raise BoxError(f"{label} has a coordinate that is not a finite number")
        if x1 <= x0 or y1 <= y0:
            raise BoxError(
                f"{label} is empty or inverted: it needs x0 < x1 and y0 < y1 (x0 y0 is the top-left corner, "
                "x along columns, y along rows, in pixels)"
            )
        clipped[number - 1] = (
            min(max(x0, 0.0), width),
            min(max(y0, 0.0), height),
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
        )
        if clipped[number - 1, 2] <= clipped[number - 1, 0] or clipped[number - 1, 3] <= clipped[number - 1, 1]:
            raise BoxError(
                f"{label} lies wholly outside the image of {width} x {height} pixels (width x height); "
                "give it in the image's pixel coordinates"
            )
    return clipped


def _format_box(box) -> str:
    return " ".join(f"{value:g}" for value in box)


def resize_area(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) or (H, W) uint8 -> ``size`` (h, w) uint8, as OpenCV's ``resize(..., INTER_AREA)`` computes it.

    Shrinking averages the source pixels each output pixel covers, weighted by the covered fraction, in float32
    and in OpenCV's order of summation, then rounds half to even; whole-number factors sum integers (a factor of 2
    on both axes rounds half up, as OpenCV's vectorised path). Enlarging (either axis) is OpenCV's area-mode
    bilinear interpolation in 11-bit fixed point. Checked bit for bit against OpenCV 4.14 and 5.1 on random
    images of many sizes; no OpenCV is needed here.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"resize_area takes uint8 images, got {image.dtype}")
    height, width = image.shape[:2]
    out_height, out_width = size
    if (out_height, out_width) == (height, width):
        return image.copy()
    scale_x, scale_y = 1.0 / (out_width / width), 1.0 / (out_height / height)
    if scale_x >= 1 and scale_y >= 1:
        whole_x, whole_y = round(scale_x), round(scale_y)
        if abs(scale_x - whole_x) < 2.220446049250313e-16 and abs(scale_y - whole_y) < 2.220446049250313e-16:
            return _shrink_whole(image, whole_y, whole_x, out_height, out_width)
        return _shrink_area(image, out_height, out_width)
    return _enlarge_area(image, out_height, out_width)


def _shrink_whole(image: np.ndarray, factor_y: int, factor_x: int, out_height: int, out_width: int) -> np.ndarray:
    blocks = image[: out_height * factor_y, : out_width * factor_x].astype(np.int64)
    blocks = blocks.reshape(out_height, factor_y, out_width, factor_x, *image.shape[2:]).sum(axis=(1, 3))
    area = factor_x * factor_y
    if area == 4:
        return ((blocks + 2) >> 2).astype(np.uint8)
    averaged = blocks.astype(np.float32) * np.float32(1.0 / area)
    return np.clip(np.rint(averaged), 0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def _area_taps(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(target, taps) source indices and float32 weights: the source pixels each output pixel covers, in order."""
    scale = 1.0 / (target / source)
    rows = []
    for out in range(target):
        start = out * scale
        end = start + scale
        cell = min(scale, source - start)
        first, last = math.ceil(start), min(math.floor(end), source - 1)
        first = min(first, last)
        taps = []
        if first - start > 1e-3:
            taps.append((first - 1, (first - start) / cell))
        taps += [(index, 1.0 / cell) for index in range(first, last)]
        if end - last > 1e-3:
            taps.append((last, min(end - last, 1.0, cell) / cell))
        rows.append(taps)
    width = max(len(taps) for taps in rows)
    indices = np.zeros((target, width), np.int64)
    weights = np.zeros((target, width), np.float32)  # padding taps weigh 0: adding 0.0 leaves a sum unchanged
    for out, taps in enumerate(rows):
        for k, (index, weight) in enumerate(taps):
            indices[out, k], weights[out, k] = index, weight
    return indices, weights


def _shrink_area(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    height, width = image.shape[:2]
    channel_axes = (1,) * (image.ndim - 2)
    source = image.astype(np.float32)
    x_index, x_weight = _area_taps(width, out_width)
    y_index, y_weight = _area_taps(height, out_height)
    rows = np.zeros((height, out_width, *image.shape[2:]), np.float32)
    for k in range(x_index.shape[1]):  # horizontal sums, tap by tap in float32 as OpenCV adds them
        rows += source[:, x_index[:, k]] * x_weight[:, k].reshape(1, out_width, *channel_axes)
    result = rows[y_index[:, 0]] * y_weight[:, 0].reshape(out_height, 1, *channel_axes)
    for k in range(1, y_index.shape[1]):
        result += rows[y_index[:, k]] * y_weight[:, k].reshape(out_height, 1, *channel_axes)
    return np.clip(np.rint(result), 0, 255).astype(np.uint8)


@lru_cache(maxsize=64)
def _enlarge_coefficients(source: int, target: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left index, right index and the two 11-bit weights of each output pixel (OpenCV's INTER_AREA upscaling)."""
    inverse = target / source
    scale = 1.0 / inverse
    left = np.zeros(target, np.int64)
    weights = np.zeros((target, 2), np.int64)
    for out in range(target):
        index = math.floor(out * scale)
        fraction = float(np.float32((out + 1) - (index + 1) * inverse))
        fraction = np.float32(0.0 if fraction <= 0 else fraction - math.floor(fraction))
        if index >= source - 1:
            index, fraction = source - 1, np.float32(0.0)
        left[out] = index
        weights[out] = (np.rint((np.float32(1.0) - fraction) * np.float32(2048)), np.rint(fraction * np.float32(2048)))
    return left, np.minimum(left + 1, source - 1), weights


def _enlarge_area(image: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    height, width = image.shape[:2]
    channel_axes = (1,) * (image.ndim - 2)
    source = image.astype(np.int64)
    x_left, x_right, x_weight = _enlarge_coefficients(width, out_width)
    y_top, y_bottom, y_weight = _enlarge_coefficients(height, out_height)
    rows = source[:, x_left] * x_weight[:, 0].reshape(1, out_width, *channel_axes) + source[:, x_right] * x_weight[
        :, 1
    ].reshape(1, out_width, *channel_axes)
    top = y_weight[:, 0].reshape(out_height, 1, *channel_axes)
    bottom = y_weight[:, 1].reshape(out_height, 1, *channel_axes)
    # OpenCV's vectorised vertical pass: drop 4 bits, keep the high 16 bits of each product, round the last 2.
    values = (((top * (rows[y_top] >> 4)) >> 16) + ((bottom * (rows[y_bottom] >> 4)) >> 16) + 2) >> 2
    return np.clip(values, 0, 255).astype(np.uint8)
