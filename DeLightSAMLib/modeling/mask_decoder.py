"""The query-decoupled modality decoder: one query token per modality, all modality maps in one pass."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class ModalityMaskDecoder(nn.Module):
    """Queries (B, Q, C) + image (B, C, H, W) -> (B, num_modalities, 4H, 4W) low-resolution mask logits.

    The first ``num_modalities`` output tokens each give one map through one shared hypernetwork MLP
    (``output_hypernetworks_mlps.0``); the remaining query tokens only take part in attention.
    """

    def __init__(self, *, transformer_dim: int = 256, num_modalities: int = 6, transformer: TwoWayTransformer) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.transformer = transformer
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            [MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)]
        )

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = image.shape
        tokens, keys = self.transformer(image, image_pe, queries)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(batch, channels, height, width))
        hyper = self.output_hypernetworks_mlps[0](tokens[:, : self.num_modalities])  # (B, M, C/8)
        _, up_channels, up_height, up_width = upscaled.shape
        masks = hyper @ upscaled.flatten(2)
        return masks.view(batch, self.num_modalities, up_height, up_width)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, M, h, w) logits to ``size``, as the released evaluation."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
