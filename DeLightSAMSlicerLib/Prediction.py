"""What the network needs of a run, and nothing of MRML: the options, a view's raw values and display window, a batch
of views, and ``predictMasks``, which turns views into masks with a predictor.

Imports numpy and DeLightSAMLib only (not slicer, vtk or Slicer's translations), so the background worker process
(``Worker``) runs ``predictMasks`` without loading Slicer's libraries, and a front end can call it on any thread.
``MRMLLogic`` reads the views from the scene and writes the masks back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import numpy as np

from DeLightSAMLib.intensity import Window, to_rgb8
from DeLightSAMLib.registry import MODALITIES

if TYPE_CHECKING:
    from DeLightSAMSlicerLib.Geometry import SlicePlane


@dataclass(frozen=True)
class SegmentationOptions:
    """How to segment and write, shared by one slice, all slices and all frames.

    ``box`` chooses the model: None, De-LightSAM segments the whole view for ``modality``; a box (x0, y0, x1, y1) in
    view pixel positions (``Geometry``: x along columns, the image spans 0..cols and 0..rows), LiteMedSAM segments
    what lies inside it. The loop hands the options to ``predictMasks``, the only step that depends on how a mask
    is predicted; writing is the same for every mask.
    """

    modality: Union[str, int] = MODALITIES[0]
    threshold: float = 0.5
    replace: bool = False  # the covered voxels become exactly the prediction (an empty one clears them)
    keepLargestComponent: bool = False
    fillHoles: bool = False
    box: Optional[tuple] = None  # drawn for one run, never stored

    # The Segment Editor effect keeps the options in its parameter node under these names (field -> parameter),
    # declared here once; parameter values are strings, booleans "0"/"1". Every field but the box is a parameter.
    PARAMETER_NAMES = {
        "modality": "Modality",
        "threshold": "Threshold",
        "replace": "Replace",
        "keepLargestComponent": "KeepLargest",
        "fillHoles": "FillHoles",
    }

    def toParameters(self) -> dict[str, str]:
        """Parameter name -> value, as the effect's parameter node stores them."""
        return {name: _parameterText(getattr(self, field)) for field, name in self.PARAMETER_NAMES.items()}

    @classmethod
    def fromParameters(cls, parameters: Mapping[str, str]) -> "SegmentationOptions":
        """Options from parameter values (missing or empty ones keep their defaults)."""
        values = {}
        defaults = {field.name: field.default for field in dataclasses.fields(cls)}
        for field, name in cls.PARAMETER_NAMES.items():
            text = parameters.get(name, "")
            if text in ("", None):
                continue
            default = defaults[field]
            if isinstance(default, bool):
                values[field] = str(text).strip().lower() not in ("0", "false", "")
            elif isinstance(default, float):
                values[field] = float(text)
            else:
                values[field] = str(text)
        return cls(**values)

    @property
    def model(self) -> str:
        """The model these options run: Models.BOX with a box, else Models.AUTOMATIC."""
        from DeLightSAMSlicerLib.Models import AUTOMATIC, BOX  # (Models' translations would import slicer here)

        return AUTOMATIC if self.box is None else BOX

    @classmethod
    def of(cls, options: Union["SegmentationOptions", str, int], **changes) -> "SegmentationOptions":
        """``options`` itself, or a modality name or index as shorthand; keyword arguments replace fields."""
        if not isinstance(options, cls):
            options = cls(modality=options)
        return dataclasses.replace(options, **changes) if changes else options

    def cleanUp(self, mask: np.ndarray) -> np.ndarray:
        """The 2D mask as it is written: holes filled, then only the largest region, when asked for."""
        from DeLightSAMSlicerLib.CleanUp import fillHoles, keepLargestComponent  # vtk: only where masks are written

        if self.fillHoles:
            mask = fillHoles(mask)
        if self.keepLargestComponent:
            mask = keepLargestComponent(mask)
        return mask


def _parameterText(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


@dataclass
class SliceView:
    """What a view shows of the source volume: raw values (rows, cols[, c]), the window that maps them to the 8 bits
    on screen, and the plane they come from. NaN marks samples outside the volume (oblique views)."""

    image: np.ndarray
    window: Window
    plane: SlicePlane  # Geometry.SlicePlane; None in the worker process, which has no scene

    def rgb8(self) -> np.ndarray:
        """(rows, cols, 3) uint8: what the network sees, through the library's one pixel pipeline."""
        return to_rgb8(self.image, self.window)


@dataclass
class RunBatch:
    """The views of one batch of a run, read on the scene's thread: what ``predictMasks`` needs, and nothing of MRML."""

    items: list
    views: list  # SliceView per item
    options: SegmentationOptions


def predictMasks(predictor, views: Sequence[SliceView], options: SegmentationOptions) -> list[np.ndarray]:
    """(rows, cols) bool masks of ``views``. Touches no MRML: safe on any thread or in another process.

    The raw view and its display window go to the predictor, which converts them to 8 bits (one pixel pipeline, the
    library's). One view: ``set_image`` then ``predict``, so the image stays cached in the predictor; several:
    ``predict_batch``, per display window. With a box: LiteMedSAM's mask of the box (its predictor keeps the encoding
    of an unchanged image, ``Models.ReusedEncoding``)."""
    if options.box is not None:
        masks = []
        for view in views:
            predictor.set_image(view.image, view.window)
            masks.append(predictor.predict(np.asarray(options.box, np.float64), threshold=options.threshold).mask)
        return masks
    if len(views) == 1:
        predictor.set_image(views[0].image, views[0].window)
        return [predictor.predict(options.modality, threshold=options.threshold).mask]
    masks: list = [None] * len(views)
    byWindow: dict = {}
    for index, view in enumerate(views):
        byWindow.setdefault(tuple(float(value) for value in view.window), []).append(index)
    for window, indices in byWindow.items():
        results = predictor.predict_batch(
            [views[i].image for i in indices], options.modality, threshold=options.threshold, window=window
        )
        for index, result in zip(indices, results):
            masks[index] = result.mask
    return masks
