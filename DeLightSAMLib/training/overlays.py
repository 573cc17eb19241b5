"""Evaluation overlays: the image, the prediction filled in yellow, the reference outlined in green."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_file

PREDICTION_COLOUR = np.array([255, 220, 0], np.float32)
OUTLINE_COLOUR = (0, 255, 0)


def outline_width(shape: tuple[int, ...]) -> int:
    """Pixels of outline for an image of ``shape``: still at least one screen pixel when the PNG is shown
    400 pixels wide (a thumbnail, a slide), and never thinner than 2 (3 at 1024²)."""
    return max(2, round(max(shape[:2]) / 400))


def reference_outline(reference: np.ndarray, width: int) -> np.ndarray:
    """The band of ``reference`` pixels within ``width`` 4-neighbour steps of the background: a closed outline on
    every side, inside the object. Beyond the image's edge counts as background, so an object that touches the
    edge is closed along it too."""
    inside = np.asarray(reference, bool)
    for _ in range(width):
        padded = np.pad(inside, 1)
        inside = inside & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return np.asarray(reference, bool) & ~inside


def write_overlay(image: np.ndarray, mask: np.ndarray, reference: np.ndarray, path: Path) -> None:
    """Write ``image`` (H, W, 3) uint8 with the predicted ``mask`` (H, W) half-blended in yellow and the outline
    of ``reference`` (H, W) in green as a PNG, atomically."""
    import SimpleITK as sitk

    overlay = image.astype(np.float32)
    overlay[mask] = 0.5 * overlay[mask] + 0.5 * PREDICTION_COLOUR
    overlay[reference_outline(reference, outline_width(reference.shape))] = OUTLINE_COLOUR
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".png") as temporary:
        sitk.WriteImage(sitk.GetImageFromArray(np.rint(overlay).astype(np.uint8), isVector=True), str(temporary))
