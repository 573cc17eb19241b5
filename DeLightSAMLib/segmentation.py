"""Segmenting one loaded image or volume with either model: the loops that ``delightsam predict`` and cohort runs share.

De-LightSAM (``predictor.Predictor``) by modality: a 2D image in one pass, a volume slice by slice along an image
axis, batched through ``Predictor.predict_batch``. LiteMedSAM (``box_predictor.BoxPredictor``) by box: the boxes
apply to the image, or to every slice of a range of a volume. Volumes use one intensity window for all slices.
Arrays are numpy in SimpleITK's order ([k, j, i]); image axis i=0, j=1, k=2 is numpy axis 2, 1, 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .errors import DeLightSAMError
from .imageio import LoadedImage
from .progress import ProgressCallback
from .registry import BOX_CHECKPOINT
from .transforms import Window

logger = logging.getLogger(__name__)


@dataclass
class Segmentation:
    """What one image or volume gave: labels (the input's shape: bool, or 0..N for N boxes), logits (the input's
    shape, or (N, ...) for N boxes; when asked for), boxes as used (clipped), IoU estimates (boxes on a 2D image),
    and the slices that were segmented (boxes on a volume)."""

    labels: np.ndarray
    logits: Optional[np.ndarray] = None
    boxes: Optional[np.ndarray] = None
    iou: Optional[np.ndarray] = None
    slice_range: Optional[tuple[int, int]] = None

    def summary(self) -> str:
        size = self.labels.size
        if self.boxes is None or len(self.boxes) == 1:
            text = f"{int(np.count_nonzero(self.labels))} of {size} pixels in the mask"
        else:
            counts = ", ".join(
                f"label {i}: {int(np.count_nonzero(self.labels == i))}" for i in range(1, len(self.boxes) + 1)
            )
            text = f"pixels of {size} per box: {counts}"
        if self.iou is not None:
            text += "; IoU estimate " + ", ".join(f"{value:.3f}" for value in self.iou)
        return text


def volume_window(loaded: LoadedImage, window: Optional[Window]) -> Optional[Window]:
    """The window a volume's slices all go through: the one given, else the volume's 0.5-99.5 percentile range
    (not one per slice); None for 2D images and 8-bit data, which choose their own."""
    from .intensity import robust_window

    if not loaded.is_2d and window is None and loaded.array.dtype != np.uint8:
        return robust_window(loaded.array)
    return window


def check_model(predictor, boxes, checkpoint: str) -> None:
    """Refuse boxes for De-LightSAM and a modality for LiteMedSAM, saying what to use instead."""
    from .box_predictor import BoxPredictor

    if boxes is not None and not isinstance(predictor, BoxPredictor):
        raise DeLightSAMError(
            f"checkpoint '{checkpoint}' is a De-LightSAM model, which takes no box; use --modality "
            f"NAME with it, or --checkpoint {BOX_CHECKPOINT} (or a LiteMedSAM .pth) for boxes"
        )
    if boxes is None and isinstance(predictor, BoxPredictor):
        raise DeLightSAMError(
            f"checkpoint '{checkpoint}' is LiteMedSAM, a box-prompted model: give --box X0 Y0 X1 Y1 "
            "instead of --modality, or a De-LightSAM checkpoint for --modality"
        )


def check_boxes(
    boxes: np.ndarray, loaded: LoadedImage, axis: int, slices: Optional[tuple[int, int]]
) -> Optional[tuple[int, int]]:
    """Raise on a bad box or slice range before the model is loaded; the slice range (volumes) or None."""
    from .transforms import clip_boxes

    if loaded.is_2d:
        if slices is not None:
            raise DeLightSAMError(f"--slices is for 3D volumes; {loaded.source} is a 2D image")
        _say_clipped(boxes, clip_boxes(boxes, loaded.array.shape[:2]), loaded.array.shape[:2], loaded)
        return None
    numpy_axis = 2 - axis
    count = loaded.array.shape[numpy_axis]
    slice_shape = tuple(size for index, size in enumerate(loaded.array.shape[:3]) if index != numpy_axis)
    _say_clipped(boxes, clip_boxes(boxes, slice_shape), slice_shape, loaded)
    first, last = slices if slices is not None else (0, count - 1)
    if not 0 <= first <= last < count:
        raise DeLightSAMError(
            f"--slices {first} {last} is not a range within 0..{count - 1} (the volume has {count} "
            f"slices along axis {axis}); FIRST must not exceed LAST"
        )
    return first, last


def _say_clipped(boxes: np.ndarray, clipped: np.ndarray, shape: tuple[int, ...], loaded: LoadedImage) -> None:
    """One line per box that reaches outside the image: the box that is segmented instead."""
    for number, (given, inside) in enumerate(zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), clipped), 1):
        if not np.array_equal(given, inside):
            logger.warning(
                "box %d (%s) reaches outside %s (%d x %d pixels, width x height): clipped to %s",
                number,
                " ".join(f"{value:g}" for value in given),
                loaded.source.name,
                shape[1],
                shape[0],
                " ".join(f"{value:g}" for value in inside),
            )


def by_modality(
    predictor,
    loaded: LoadedImage,
    modality,
    *,
    axis: int = 2,
    threshold: float = 0.5,
    window: Optional[Window] = None,
    batch_size: Optional[int] = None,
    return_logits: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> Segmentation:
    """De-LightSAM's mask of ``modality``; a volume's slices are batched (``batch_size`` per network pass).
    ``progress(slices done, slices in all)`` after each pass."""
    if loaded.is_2d:
        predictor.set_image(loaded.array, window)
        prediction = predictor.predict(modality, threshold=threshold, return_logits=return_logits)
        return Segmentation(prediction.mask, prediction.logits)
    volume = loaded.array
    numpy_axis = 2 - axis
    slices = [np.take(volume, index, axis=numpy_axis) for index in range(volume.shape[numpy_axis])]
    results = predictor.predict_batch(
        slices,
        modality,
        threshold=threshold,
        batch_size=batch_size,
        window=window,
        return_logits=return_logits,
        progress=progress,
    )
    mask = np.stack([r.mask for r in results], axis=numpy_axis)
    logits = np.stack([r.logits for r in results], axis=numpy_axis) if return_logits else None
    return Segmentation(mask, logits)


def by_boxes(
    predictor,
    loaded: LoadedImage,
    boxes: np.ndarray,
    slice_range: Optional[tuple[int, int]],
    *,
    axis: int = 2,
    threshold: float = 0.5,
    window: Optional[Window] = None,
    return_logits: bool = False,
    progress: Optional[ProgressCallback] = None,
) -> Segmentation:
    """LiteMedSAM's masks for (N, 4) ``boxes``. 2D: one encoder pass, all boxes decoded together. Volumes: the
    same on every slice of ``slice_range`` (from ``check_boxes``); slices outside it stay 0 (logits -inf there).
    ``progress(slices done, slices in the range)`` after each slice."""
    if loaded.is_2d:
        predictor.set_image(loaded.array, window)
        result = predictor.predict(boxes, threshold=threshold, return_logits=True)
        labels = result.masks[0] if len(boxes) == 1 else result.label_image()
        logits = (result.logits[0] if len(boxes) == 1 else result.logits) if return_logits else None
        return Segmentation(labels, logits, result.boxes, result.iou)
    volume = loaded.array
    numpy_axis = 2 - axis
    shape = volume.shape[:3]
    labels = np.zeros(shape, bool if len(boxes) == 1 else np.uint8)
    logits = np.full((len(boxes), *shape), -np.inf, np.float32) if return_logits else None
    first, last = slice_range
    clipped = None
    for done, index in enumerate(range(first, last + 1), start=1):
        predictor.set_image(np.take(volume, index, axis=numpy_axis), window)
        result = predictor.predict(boxes, threshold=threshold, return_logits=True)
        clipped = result.boxes
        np.moveaxis(labels, numpy_axis, 0)[index] = result.masks[0] if len(boxes) == 1 else result.label_image()
        if logits is not None:
            np.moveaxis(logits, numpy_axis + 1, 1)[:, index] = result.logits
        if progress is not None:
            progress(done, last - first + 1)
    if logits is not None and len(boxes) == 1:
        logits = logits[0]
    return Segmentation(labels, logits, clipped, slice_range=slice_range)
