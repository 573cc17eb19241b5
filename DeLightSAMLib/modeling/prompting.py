"""The self-patch prompt generator and SAM's prompt encoder.

De-LightSAM uses only the encoder's dense positional encoding; LiteMedSAM also embeds a box (two corners) and,
having no mask prompt, adds the learned ``no_mask_embed`` everywhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .common import LayerNorm2d


def patch_decoder(embed_dim: int, hidden_dim: int = 64) -> nn.Sequential:
    """(B, embed_dim, H, W) image embedding -> (B, 1, H/2, W/2) patch logits (logits, not probabilities)."""
    return nn.Sequential(
        nn.Conv2d(embed_dim, hidden_dim, kernel_size=2, stride=2),
        LayerNorm2d(hidden_dim),
        nn.GELU(),
        nn.Conv2d(hidden_dim, 1, kernel_size=1),
    )


def dense_prompter(embed_dim: int) -> nn.Sequential:
    """(B, 1, H, W) binary patch prompt at embedding resolution -> (B, embed_dim, H, W) dense prompt embedding."""
    return nn.Sequential(nn.Conv2d(1, embed_dim, kernel_size=1), LayerNorm2d(embed_dim), nn.GELU())


def binarize_patch_logits(patch_logits: torch.Tensor) -> torch.Tensor:
    """Self-prompt: 1 where float32 ``sigmoid(logit) >= 0.5``, else 0; same shape and dtype as the input.

    Not ``logit >= 0``: float32 sigmoid rounds to exactly 0.5 for |logit| below ~3e-8, and the released model
    thresholds the probability.
    """
    return (torch.sigmoid(patch_logits.float()) >= 0.5).to(patch_logits.dtype)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) grid positions (SAM)."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) positions (x, y) normalised to [0, 1] -> (..., C) features, C = 2 * num_pos_feats, sin first."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix * (2 * math.pi)
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """(C, height, width) encoding of cell centres."""
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(height, device=matrix.device, dtype=matrix.dtype) + 0.5) / height
        xs = (torch.arange(width, device=matrix.device, dtype=matrix.dtype) + 0.5) / width
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
        return self.encode(coords).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """SAM's prompt encoder, kept whole so checkpoints load strictly.

    De-LightSAM uses only ``dense_pe``; LiteMedSAM also ``embed_boxes`` and ``no_mask_embedding``. Point
    prompts and mask prompts are not used by either model (their weights load but do not act).
    """

    def __init__(self, *, embed_dim: int = 256, mask_in_chans: int = 16) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self, height: int, width: int) -> torch.Tensor:
        """(1, embed_dim, height, width) positional encoding of the image-embedding grid."""
        return self.pe_layer(height, width).unsqueeze(0)

    def embed_boxes(self, boxes: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """(N, 4) boxes (x0, y0, x1, y1) in the network input's pixels -> (N, 2, embed_dim) corner embeddings.

        Coordinates are pixel indices: +0.5 moves them to the pixel centre before normalising by the input size
        (height, width). The two corners get the learned ``point_embeddings.2`` and ``.3``.
        """
        corners = (boxes.reshape(-1, 2, 2) + 0.5) / boxes.new_tensor([input_size[1], input_size[0]])
        embedding = self.pe_layer.encode(corners)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])  # (2, C)
        return embedding + corner_types

    def no_mask_embedding(self, batch: int, height: int, width: int) -> torch.Tensor:
        """(batch, embed_dim, height, width) dense prompt when no mask is given: ``no_mask_embed`` everywhere."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)


def upsample_prompt(prompt: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling of the (B, 1, h, w) binary prompt to the embedding grid ``size``."""
    return F.interpolate(prompt, size=size, mode="nearest")
