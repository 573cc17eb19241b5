"""Intensities to 8-bit display values, as a viewer's window/level does. numpy only: no torch at import."""

from __future__ import annotations

import numbers
from typing import Optional, Sequence

import numpy as np

from .errors import ImageError

# Default robust window for non-8-bit data: this percentile range of the values maps to 0..255.
DEFAULT_PERCENTILES = (0.5, 99.5)

Window = tuple[float, float]  # (center, width), as in Slicer's window/level


def robust_window(values: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Window:
    """(center, width) spanning the given percentiles of the finite values (width >= tiny when constant)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    if finite.size > 4_000_000:  # a strided sample is plenty for two percentiles of a large volume
        finite = finite[:: finite.size // 4_000_000 + 1]
    low, high = np.percentile(finite, percentiles)
    return (low + high) / 2.0, float(high - low)


def check_window(window: object) -> Window:
    """``window`` as a (center, width) pair of finite numbers with width >= 0 (0: a threshold at the center), or
    ImageError saying what is wrong."""
    pair = tuple(window) if isinstance(window, (tuple, list, np.ndarray)) else None
    if (
        pair is None
        or len(pair) != 2
        or not all(isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) for value in pair)
    ):
        raise ImageError(f"a window is a pair (center, width) of numbers, as in Slicer's window/level; got {window!r}")
    center, width = float(pair[0]), float(pair[1])
    if not (np.isfinite(center) and np.isfinite(width)):
        raise ImageError(f"window center and width must be finite numbers; got ({pair[0]}, {pair[1]})")
    if width < 0:
        raise ImageError(f"window width must not be negative; got {pair[1]} (center {pair[0]})")
    return center, width


def apply_window(image: np.ndarray, window: Window) -> np.ndarray:
    """Map ``center - width/2 .. center + width/2`` linearly to 0..255, clip and round to uint8."""
    center, width = window
    low = center - width / 2.0
    if width <= 0:
        return np.where(np.asarray(image, dtype=np.float64) > center, 255, 0).astype(np.uint8)
    scaled = (np.asarray(image, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / width)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb8(image: np.ndarray, window: Optional[Window] = None) -> np.ndarray:
    """Any supported 2D image -> (H, W, 3) uint8 RGB.

    uint8 data is taken as it is (8-bit display values) unless ``window`` is given; any other type goes through
    ``window`` or, by default, the robust percentile window of the image. Alpha is dropped (gray + alpha gives
    gray); gray is copied to three channels.
    """
    if window is not None:
        window = check_window(window)
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4):
        channels = image.shape[-1]
    elif image.ndim == 2:
        channels = 0
    else:
        raise ImageError(
            f"expected a 2D image (H, W) or (H, W, 1|2|3|4), found an array of shape {image.shape}; "
            "pass one slice or frame at a time"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"the image is empty (shape {image.shape})")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if not (np.issubdtype(image.dtype, np.number)):
        raise ImageError(f"unsupported pixel type {image.dtype}; expected integer or floating-point pixels")
    if np.iscomplexobj(image):
        raise ImageError("complex-valued images are not supported; pass the magnitude")
    if channels == 4:
        image = image[..., :3]
    elif channels in (1, 2):  # gray, or gray + alpha
        image = image[..., 0]
    if image.dtype != np.uint8 or window is not None:
        image = apply_window(image, window if window is not None else robust_window(image))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image)
