"""Everything between a caller's image and the network's input and output: intensities, geometry, normalisation.

Images are numpy arrays (H, W) gray or (H, W, C) with C in {1, 3, 4}; rows first. The network sees (1, 3, S, S)
float32 with S = ``image_size`` (1024 for the released model).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F

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

    def prepare(self, image: np.ndarray, window: Optional[Window] = None, device: str | torch.device = "cpu") -> torch.Tensor:
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


def threshold_logits(logits: torch.Tensor | np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask ``sigmoid(logits) >= threshold`` computed in float32, as the released evaluation does."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
    logits = torch.as_tensor(logits).float()
    return (torch.sigmoid(logits) >= threshold).cpu().numpy()
