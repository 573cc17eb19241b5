"""Mask decoders over SAM's two-way transformer.

``ModalityMaskDecoder`` (De-LightSAM): one query token per modality, all modality maps in one pass.
``PromptMaskDecoder`` (LiteMedSAM): SAM's decoder, mask tokens and an IoU token attend to prompt tokens (a box).
"""

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
        self.output_upscaling = output_upscaling(transformer_dim)
        self.output_hypernetworks_mlps = nn.ModuleList([MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)])

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = image.shape
        tokens, keys = self.transformer(image, image_pe, queries)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(batch, channels, height, width))
        hyper = self.output_hypernetworks_mlps[0](tokens[:, : self.num_modalities])  # (B, M, C/8)
        _, up_channels, up_height, up_width = upscaled.shape
        masks = hyper @ upscaled.flatten(2)
        return masks.view(batch, self.num_modalities, up_height, up_width)


class PromptMaskDecoder(nn.Module):
    """SAM's mask decoder: image (1 or N, C, H, W) + prompt tokens (N, T, C) -> masks and IoU estimates.

    The output tokens are the IoU token then ``num_multimask_outputs + 1`` mask tokens; each mask token has its own
    hypernetwork MLP. With ``multimask_output=False`` only the first mask (the one trained for a single,
    unambiguous prompt such as a box) is returned: logits (N, 1, 4H, 4W) and IoU estimates (N, 1).
    """

    def __init__(
        self,
        *,
        transformer_dim: int = 256,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.num_mask_tokens = num_multimask_outputs + 1
        self.transformer = transformer
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = output_upscaling(transformer_dim)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompts: torch.Tensor,
        dense_prompts: torch.Tensor,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image: (1 or N, C, H, W) embedding (shared by all N prompts when 1); image_pe: (1, C, H, W);
        sparse_prompts: (N, T, C); dense_prompts: (N, C, H, W). Returns (logits, iou): (N, M, 4H, 4W), (N, M)
        with M = 1, or the other ``num_multimask_outputs`` masks when ``multimask_output``."""
        count = sparse_prompts.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).to(sparse_prompts.dtype)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(count, -1, -1), sparse_prompts], dim=1)
        source = image.expand(count, -1, -1, -1) + dense_prompts
        _, channels, height, width = source.shape
        tokens, keys = self.transformer(source, image_pe, tokens)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(count, channels, height, width))
        mask_tokens = tokens[:, 1 : 1 + self.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        _, _, up_height, up_width = upscaled.shape
        masks = (hyper @ upscaled.flatten(2)).view(count, self.num_mask_tokens, up_height, up_width)
        iou = self.iou_prediction_head(tokens[:, 0])
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou[:, chosen]


def output_upscaling(transformer_dim: int) -> nn.Sequential:
    """SAM's mask upscaling: (B, C, H, W) -> (B, C/8, 4H, 4W) with two stride-2 transposed convolutions."""
    return nn.Sequential(
        nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
        LayerNorm2d(transformer_dim // 4),
        nn.GELU(),
        nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
        nn.GELU(),
    )


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, M, h, w) logits to ``size``, as the released evaluation."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
