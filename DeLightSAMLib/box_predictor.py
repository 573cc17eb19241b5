"""BoxPredictor: encode an image once, then segment any number of boxes with the prompt encoder and decoder only.

It mirrors ``predictor.Predictor`` (``set_image``, ``reset_image``, ``is_image_set``, ``original_size``,
``description``); ``predictor.load_predictor`` returns whichever of the two a checkpoint needs.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from .checkpoint import load_model
from .config import LiteMedSAMConfig
from .device import select_device, select_dtype
from .engines import AUTO, LITEMEDSAM, get_engine
from .errors import CheckpointError
from .modeling import LiteMedSAM
from .registry import BOX_CHECKPOINT
from .transforms import LongestSideTransform, Window, check_threshold, clip_boxes

logger = logging.getLogger(__name__)


@dataclass
class BoxPrediction:
    """Results for N boxes on the current image.

    masks: (N, H, W) bool at the image's size. iou: (N,) float32, the decoder's estimate of each mask's IoU.
    boxes: (N, 4) the boxes as used, clipped to the image (x0, y0, x1, y1 in pixels). logits: (N, H, W) float32
    logits (not probabilities), when asked for.
    """

    masks: np.ndarray
    iou: np.ndarray
    boxes: np.ndarray
    logits: Optional[np.ndarray] = None

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: the union of all boxes' masks (the mask itself for one box)."""
        return self.masks.any(axis=0)

    def label_image(self) -> np.ndarray:
        """(H, W) uint8 (uint16 beyond 255 boxes): 0 background, i where box i (1-based) segmented the pixel.

        Where masks overlap the box whose logit is highest there wins; without logits, the later box does.
        """
        dtype = np.uint8 if len(self.masks) < 256 else np.uint16
        labels = np.zeros(self.masks.shape[1:], dtype)
        if self.logits is not None and len(self.masks) > 1:
            best = np.argmax(np.where(self.masks, self.logits, -np.inf), axis=0)
            labels[self.mask] = (best[self.mask] + 1).astype(dtype)
            return labels
        for index, mask in enumerate(self.masks, start=1):
            labels[mask] = index
        return labels


class BoxPredictor:
    """``set_image`` once, then ``predict(boxes)`` as often as wanted; the image encoder runs once per image.

    Example::

        predictor = BoxPredictor.from_checkpoint("litemedsam", device="auto")
        predictor.set_image(rgb_or_gray_array)
        mask = predictor.predict([x0, y0, x1, y1]).masks[0]           # (H, W) bool
        result = predictor.predict([[10, 20, 90, 80], [100, 40, 160, 120]], return_logits=True)
    """

    def __init__(
        self,
        model: LiteMedSAM,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        engine: str = AUTO,
    ) -> None:
        if not isinstance(model, LiteMedSAM):
            raise CheckpointError(
                f"BoxPredictor needs a LiteMedSAM model, got {type(model).__name__}; use Predictor for De-LightSAM"
            )
        self.device = select_device(device)
        self.dtype = select_dtype(dtype, self.device)
        self.engine = get_engine(engine, self.device.type, LITEMEDSAM)  # auto: the registry's default for LiteMedSAM
        self.model = model.to(self.device).eval()
        # The image encoder is the costly part and runs on the engine (a container, so that engines that swap
        # modules find it as a child); the prompt encoder and decoder run as written, once per box.
        self.encoder = self.engine.build(nn.Sequential(self.model.image_encoder))
        self.transform = LongestSideTransform(model.image_size)
        self.reset_image()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Optional[str] = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        config: Optional[LiteMedSAMConfig] = None,
        engine: str = AUTO,
    ) -> "BoxPredictor":
        """Load a registry checkpoint (default: ``litemedsam``) or a .pth path."""
        model, _ = load_model(BOX_CHECKPOINT if checkpoint is None else checkpoint, config)
        return cls(model, device=device, dtype=dtype, engine=engine)

    @property
    def description(self) -> str:
        """Device, precision and engine, for status lines."""
        return f"{self.device.type} {str(self.dtype).replace('torch.', '')} {self.engine.name}"

    def reset_image(self) -> None:
        self._embedding: Optional[torch.Tensor] = None  # (1, C, h, w) on the model's device
        self.original_size: Optional[tuple[int, int]] = None

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def image_embedding(self) -> torch.Tensor:
        """(1, C, h, w) embedding of the current image (64 x 64 for LiteMedSAM)."""
        if self._embedding is None:
            raise RuntimeError("call set_image(image) before image_embedding")
        return self._embedding

    @torch.inference_mode()
    def set_image(self, image: np.ndarray, window: Optional[Window] = None) -> None:
        """Encode one 2D image (see ``intensity.to_rgb8`` for what is accepted: uint8 as it is, other types
        through ``window`` or the image's 0.5-99.5 percentile range)."""
        self.reset_image()
        net_input = self.transform.prepare(image, window, device=self.device)
        with self._autocast():
            self._embedding = self.encoder(net_input)
        self.original_size = tuple(np.asarray(image).shape[:2])

    @torch.inference_mode()
    def predict(
        self, boxes, *, threshold: float = 0.5, return_logits: bool = False, batch_size: int = 16
    ) -> BoxPrediction:
        """Masks for boxes (x0, y0, x1, y1) in the image's pixel coordinates: x along columns, y along rows,
        shape (4,) or (N, 4). A box partly outside the image is clipped; an empty, inverted, non-finite or wholly
        outside box raises BoxError. Each box costs one prompt-encoder and decoder pass (``batch_size`` at once).
        The mask is ``sigmoid(logits) > threshold``, as the released pipeline."""
        if not self.is_image_set:
            raise RuntimeError("call set_image(image) before predict(boxes)")
        check_threshold(threshold)
        clipped = clip_boxes(boxes, self.original_size)
        input_boxes = self.transform.boxes_to_input(clipped, self.original_size).to(self.device)
        logits, iou = [], []
        for start in range(0, len(input_boxes), batch_size):
            with self._autocast():
                output = self.model.decode(self._embedding, input_boxes[start : start + batch_size])
            logits.append(self.transform.logits_to_image(output.low_res_logits.float(), self.original_size)[:, 0].cpu())
            iou.append(output.iou[:, 0].float().cpu())
        full = torch.cat(logits)
        return BoxPrediction(
            masks=(torch.sigmoid(full) > threshold).numpy(),
            iou=torch.cat(iou).numpy(),
            boxes=clipped,
            logits=full.numpy() if return_logits else None,
        )

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)
