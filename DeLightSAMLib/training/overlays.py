"""Evaluation overlays: the image, the prediction filled in yellow, the reference outlined in green."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_file
from ..overlay import line_thickness, outline

PREDICTION_COLOUR = np.array([255, 220, 0], np.float32)
OUTLINE_COLOUR = (0, 255, 0)


def write_overlay(image: np.ndarray, mask: np.ndarray, reference: np.ndarray, path: Path) -> None:
    """Write ``image`` (H, W, 3) uint8 with the predicted ``mask`` (H, W) half-blended in yellow and the outline
    of ``reference`` (H, W) in green as a PNG, atomically. The outline is closed on every side (an object touching
    the image's edge is closed along it) and 1/400 of the longer side wide (3 pixels at 1024²), so it stays visible
    when the PNG is shown 400 pixels wide."""
    import SimpleITK as sitk

    overlay = image.astype(np.float32)
    overlay[mask] = 0.5 * overlay[mask] + 0.5 * PREDICTION_COLOUR
    reference = np.asarray(reference, bool)
    overlay[outline(reference, line_thickness(reference.shape))] = OUTLINE_COLOUR
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".png") as temporary:
        sitk.WriteImage(sitk.GetImageFromArray(np.rint(overlay).astype(np.uint8), isVector=True), str(temporary))
