"""A picture to check a segmentation by eye: the image (8-bit, as the model saw it), each label a semi-transparent
colour with a solid outline, and the prompt boxes drawn on top. numpy only."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# Label i takes colour (i - 1) % len(PALETTE); boxes are drawn in BOX_COLOUR.
PALETTE = (
    (255, 64, 64),
    (64, 160, 255),
    (64, 220, 96),
    (255, 160, 32),
    (200, 96, 255),
    (0, 220, 220),
    (255, 96, 200),
    (180, 220, 40),
)
BOX_COLOUR = (255, 230, 0)
FILL_OPACITY = 0.4


def render_overlay(
    rgb: np.ndarray, labels: np.ndarray, boxes: Optional[Sequence[Sequence[float]]] = None
) -> np.ndarray:
    """(H, W, 3) uint8 image + (H, W) labels (bool or 0..N) + boxes (x0, y0, x1, y1 in pixels) -> (H, W, 3) uint8.

    Lines are about 1/400 of the longer side thick (at least one pixel), so they stay visible on large images.
    """
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    height, width = labels.shape
    thickness = line_thickness(labels.shape)
    picture = rgb.astype(np.float32)
    for label in np.unique(labels[labels > 0]):
        colour = np.array(PALETTE[(int(label) - 1) % len(PALETTE)], np.float32)
        region = labels == label
        picture[region] = (1 - FILL_OPACITY) * picture[region] + FILL_OPACITY * colour
        picture[outline(region, thickness)] = colour
    for x0, y0, x1, y1 in boxes if boxes is not None else ():
        left, right = _pixel(x0, width), _pixel(x1, width)
        top, bottom = _pixel(y0, height), _pixel(y1, height)
        picture[top : bottom + 1, left : min(left + thickness, right + 1)] = BOX_COLOUR
        picture[top : bottom + 1, max(right + 1 - thickness, left) : right + 1] = BOX_COLOUR
        picture[top : min(top + thickness, bottom + 1), left : right + 1] = BOX_COLOUR
        picture[max(bottom + 1 - thickness, top) : bottom + 1, left : right + 1] = BOX_COLOUR
    return np.clip(np.rint(picture), 0, 255).astype(np.uint8)


def line_thickness(shape: Sequence[int]) -> int:
    """Pixels of a drawn line for an image of ``shape``: about 1/400 of the longer side, at least one."""
    return max(1, round(max(shape[:2]) / 400))


def outline(region: np.ndarray, thickness: int) -> np.ndarray:
    """The pixels of ``region`` within ``thickness`` 4-neighbour steps of its outside: closed on every side."""
    return region & ~_eroded(region, thickness)


def _pixel(coordinate: float, size: int) -> int:
    return int(min(max(round(coordinate), 0), size - 1))


def _eroded(region: np.ndarray, steps: int) -> np.ndarray:
    """``region`` shrunk by ``steps`` pixels (4-neighbourhood); the image border counts as outside."""
    inner = region.copy()
    for _ in range(steps):
        padded = np.pad(inner, 1)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inner
