"""LiteMedSAM: a TinyViT image encoder at 256 x 256, SAM's prompt encoder and SAM's mask decoder (box prompts)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .image_encoder import ImageEncoder
from .mask_decoder import PromptMaskDecoder
from .prompting import PromptEncoder


class BoxDecoderOutput(NamedTuple):
    """What decoding N boxes returns.

    low_res_logits: (N, 1, 4h, 4w) mask logits (not probabilities) on the padded network input's grid
    (256 x 256 for LiteMedSAM's 64 x 64 embedding).
    iou: (N, 1) the decoder's estimate of each mask's IoU with the true structure.
    """

    low_res_logits: torch.Tensor
    iou: torch.Tensor


class LiteMedSAM(nn.Module):
    """(B, 3, S, S) min-max normalised, padded images + boxes in input pixels -> mask logits and IoU estimates.

    Attribute names are the released checkpoint's. ``encode`` runs once per image; ``decode`` then costs only the
    prompt encoder and the mask decoder, for any number of boxes.
    """

    def __init__(
        self,
        *,
        image_encoder: ImageEncoder,
        prompt_encoder: PromptEncoder,
        mask_decoder: PromptMaskDecoder,
        image_size: int,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = image_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) network input -> (B, C, h, w) image embedding (64 x 64 for S = 256)."""
        return self.image_encoder(images)

    def decode(self, image_embedding: torch.Tensor, boxes: torch.Tensor) -> BoxDecoderOutput:
        """(1 or N, C, h, w) embedding + (N, 4) boxes (x0, y0, x1, y1) in network-input pixels -> N masks.

        One embedding is shared by all boxes (the image is encoded once); N embeddings pair with N boxes.
        """
        _, _, height, width = image_embedding.shape
        sparse = self.prompt_encoder.embed_boxes(boxes.to(image_embedding.dtype), (self.image_size, self.image_size))
        dense = self.prompt_encoder.no_mask_embedding(sparse.shape[0], height, width).to(image_embedding.dtype)
        image_pe = self.prompt_encoder.dense_pe(height, width).to(image_embedding.dtype)
        logits, iou = self.mask_decoder(image_embedding, image_pe, sparse, dense)
        return BoxDecoderOutput(logits, iou)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> BoxDecoderOutput:
        """(B, 3, S, S) images and (B, 4) boxes, one box per image."""
        return self.decode(self.encode(images), boxes)
