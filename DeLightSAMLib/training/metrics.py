"""Segmentation metrics on binary 2D masks, with the empty-mask cases defined.

Conventions (also in the README): when both masks are empty every overlap metric is 1 and the 95% Hausdorff
distance is 0; when exactly one is empty the overlap metrics are 0 and HD95 is undefined (NaN, left out of
means and counted). Precision with no predicted pixels is 1 if the reference is empty too, else 0; recall with
an empty reference likewise. HD95 is in pixels unless a spacing is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass
class Scores:
    dice: float
    iou: float
    hd95: float
    precision: float
    recall: float


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return numerator / denominator


def score(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> Scores:
    """Dice, IoU, HD95, precision and recall of a predicted mask against a reference mask of the same shape."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"mask shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    both_empty = not prediction.any() and not reference.any()
    tp = int(np.logical_and(prediction, reference).sum())
    fp = int(np.logical_and(prediction, ~reference).sum())
    fn = int(np.logical_and(~prediction, reference).sum())
    return Scores(
        dice=_ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        iou=_ratio(tp, tp + fp + fn, both_empty),
        hd95=hausdorff95(prediction, reference, spacing),
        precision=_ratio(tp, tp + fp, both_empty),
        recall=_ratio(tp, tp + fn, both_empty),
    )


def hausdorff95(prediction: np.ndarray, reference: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """Symmetric 95th-percentile distance between the two masks' boundary pixels (0 if both empty, NaN if one)."""
    has_prediction, has_reference = prediction.any(), reference.any()
    if not has_prediction and not has_reference:
        return 0.0
    if has_prediction != has_reference:
        return math.nan
    a_boundary, a_distance = _boundary_and_distance(prediction, spacing)
    b_boundary, b_distance = _boundary_and_distance(reference, spacing)
    return float(max(np.percentile(b_distance[a_boundary], 95), np.percentile(a_distance[b_boundary], 95)))


def _boundary_and_distance(mask: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """The mask's boundary pixels, and every pixel's distance to that boundary (in spacing units)."""
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # numpy (row, col) -> ITK (x, y)
    boundary = sitk.BinaryContour(image, fullyConnected=True)
    distance = sitk.SignedMaurerDistanceMap(
        boundary, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return sitk.GetArrayFromImage(boundary).astype(bool), np.abs(sitk.GetArrayFromImage(distance))


def summarize(rows: list[Scores]) -> dict:
    """Mean, standard deviation and median of each metric; HD95's undefined cases are counted, not averaged."""
    summary = {"images": len(rows)}
    for name in ("dice", "iou", "hd95", "precision", "recall"):
        values = np.array([getattr(row, name) for row in rows], dtype=float)
        defined = values[~np.isnan(values)]
        summary[name] = {
            "mean": float(defined.mean()) if defined.size else math.nan,
            "std": float(defined.std()) if defined.size else math.nan,
            "median": float(np.median(defined)) if defined.size else math.nan,
        }
        if name == "hd95":
            summary[name]["undefined"] = int(np.isnan(values).sum())
    return summary
