"""The two networks the extension runs, and the reuse of the box model's image encoding.

- ``AUTOMATIC``: De-LightSAM segments the whole slice for a modality, with no prompt (the effect's Apply);
- ``BOX``: LiteMedSAM segments what lies inside a box drawn on the slice (the effect's box mode).

The session owns one predictor of each, loaded on first use; the MRML logic asks its predictor provider for the one a
run needs (``SegmentationOptions.model``). Qt-free and torch-free: the predictors come from the library when loaded.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from DeLightSAMLib.config import LiteMedSAMConfig
from DeLightSAMLib.registry import BOX_CHECKPOINT, OFFICIAL_CHECKPOINT, CheckpointEntry
from DeLightSAMSlicerLib.i18n import tr as _

AUTOMATIC = "automatic"
BOX = "box"
MODELS = (AUTOMATIC, BOX)
DEFAULT_CHECKPOINTS = {AUTOMATIC: OFFICIAL_CHECKPOINT, BOX: BOX_CHECKPOINT}


def modelTitle(model: str) -> str:
    """What the user reads for a model."""
    return {AUTOMATIC: _("De-LightSAM"), BOX: _("LiteMedSAM")}[model]


def isCheckpointFor(model: str, entry: CheckpointEntry) -> bool:
    """Whether a registry checkpoint holds the weights of ``model`` (LiteMedSAM's config marks box models)."""
    return isinstance(entry.config, LiteMedSAMConfig) == (model == BOX)


def loadPredictor(reference: str, model: str, device: str = "auto"):
    """The library's predictor of the checkpoint ``reference`` (registry name or file), refused with what to do when
    it holds the other model's weights. Imports torch (the session and the background worker call it)."""
    from DeLightSAMLib.box_predictor import BoxPredictor
    from DeLightSAMLib.errors import CheckpointError
    from DeLightSAMLib.predictor import load_predictor

    predictor = load_predictor(reference, device=device)
    if isinstance(predictor, BoxPredictor) != (model == BOX):
        raise CheckpointError(
            _(
                "{reference} holds {found} weights, not {model} weights; choose {model} weights for "
                "{purpose} in the De-LightSAM module"
            ).format(
                reference=reference,
                found=modelTitle(BOX if model == AUTOMATIC else AUTOMATIC),
                model=modelTitle(model),
                purpose=_("boxes") if model == BOX else _("Apply"),
            )
        )
    return predictor


class ReusedEncoding:
    """A box predictor that encodes an image only when it differs from the one it encoded last.

    Drawing several boxes on one slice encodes that slice once: ``set_image`` with the same values (compared exactly,
    NaN equal to NaN), shape, type and display window as the previous call keeps the embedding; anything else (another
    slice, an edited volume, a new window/level) encodes again. Everything else is the wrapped predictor's.
    """

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self._image: Optional[np.ndarray] = None
        self._window = None

    def set_image(self, image, window=None) -> None:
        image = np.asarray(image)
        window = None if window is None else tuple(float(value) for value in window)
        if self._isEncoded(image, window):
            return
        self._image = None  # a failed encoding leaves nothing to reuse
        self.predictor.set_image(image, window)
        self._image, self._window = image.copy(), window

    def _isEncoded(self, image: np.ndarray, window) -> bool:
        last = self._image
        if last is None or not getattr(self.predictor, "is_image_set", True):
            return False
        if window != self._window or last.shape != image.shape or last.dtype != image.dtype:
            return False
        return bool(np.array_equal(last, image, equal_nan=image.dtype.kind in "fc"))

    def reset_image(self) -> None:
        self._image = None
        self.predictor.reset_image()

    def __getattr__(self, name):
        return getattr(self.predictor, name)
