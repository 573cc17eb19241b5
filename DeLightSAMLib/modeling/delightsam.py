"""The whole De-LightSAM network: image encoder, self-patch prompt, modality decoder."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from .image_encoder import ImageEncoder
from .mask_decoder import ModalityMaskDecoder
from .prompting import PromptEncoder, binarize_patch_logits, upsample_prompt


class DeLightSAMOutput(NamedTuple):
    """What one forward pass returns (all logits, not probabilities).

    modality_logits: (B, num_modalities, 4h, 4w) low-resolution mask logits, one map per modality index.
    patch_logits: (B, 1, h/2, w/2) self-prompt patch logits.
    image_embeddings: (B, C, h, w) image embedding, before the patch prompt is added.
    """

    modality_logits: torch.Tensor
    patch_logits: torch.Tensor
    image_embeddings: torch.Tensor


class DeLightSAM(nn.Module):
    """(B, 3, S, S) normalised images -> :class:`DeLightSAMOutput`. Attribute names are the checkpoint's."""

    def __init__(
        self,
        *,
        image_encoder: ImageEncoder,
        prompt_encoder: PromptEncoder,
        mask_decoder: ModalityMaskDecoder,
        patch_decoder: nn.Module,
        dense_prompter: nn.Module,
        num_queries: int,
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.SemiTViT = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.patch_decoder = patch_decoder
        self.dense_prompter = dense_prompter
        self.mask_query = nn.Embedding(num_queries, embed_dim)

    def decode(self, image_embeddings: torch.Tensor, self_prompt: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) embedding + (B, 1, h/2, w/2) binary self-prompt -> (B, M, 4h, 4w) modality logits."""
        batch, _, height, width = image_embeddings.shape
        prompt = upsample_prompt(self_prompt.to(image_embeddings.dtype), (height, width))
        source = image_embeddings + self.dense_prompter(prompt)
        image_pe = self.prompt_encoder.dense_pe(height, width).to(source.dtype)
        queries = self.mask_query.weight.to(source.dtype).unsqueeze(0).expand(batch, -1, -1)
        return self.mask_decoder(source, image_pe, queries)

    def forward(self, images: torch.Tensor, self_prompt: Optional[torch.Tensor] = None) -> DeLightSAMOutput:
        """Run the whole network; pass ``self_prompt`` (B, 1, h/2, w/2) to override the generated prompt."""
        return self.forward_from_embeddings(self.SemiTViT(images), self_prompt)

    def forward_from_embeddings(
        self, image_embeddings: torch.Tensor, self_prompt: Optional[torch.Tensor] = None
    ) -> DeLightSAMOutput:
        """Everything after the image encoder, from (B, C, h, w) image embeddings (e.g. a frozen encoder's, cached)."""
        patch_logits = self.patch_decoder(image_embeddings)
        if self_prompt is None:
            self_prompt = binarize_patch_logits(patch_logits)
        return DeLightSAMOutput(self.decode(image_embeddings, self_prompt), patch_logits, image_embeddings)
