"""Every hyperparameter of the networks (De-LightSAM, LiteMedSAM), in one place. Pure Python: importing it does
not import torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SAMConfig:
    """What both networks share: a TinyViT image encoder with SAM's neck, and SAM's two-way transformer."""

    image_size: int = 1024
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    downsample_strides: tuple[int, ...] = (2, 2, 1)
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    encoder_stride: int = 16  # image pixels per embedding cell

    @property
    def embedding_size(self) -> int:
        """Side of the (C, n, n) image embedding: 64 for 1024² input (De-LightSAM) and for 256² (LiteMedSAM)."""
        return self.image_size // self.encoder_stride


@dataclass(frozen=True)
class ModelConfig(SAMConfig):
    """Hyperparameters of one De-LightSAM variant. The defaults are the released checkpoint's."""

    num_modalities: int = 6
    num_queries: int = 7
    patch_hidden_dim: int = 64


DEFAULT_CONFIG = ModelConfig()
# Small sizes with the same structure, for tests and for training experiments on tiny data.
_TINY_SIZES = dict(
    embed_dims=(16, 32, 40, 48),
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 2),
    window_sizes=(7, 7, 7, 7),
    prompt_embed_dim=32,
    decoder_depth=1,
    decoder_heads=2,
    decoder_mlp_dim=64,
)
TINY_CONFIG = ModelConfig(image_size=256, patch_hidden_dim=8, **_TINY_SIZES)


@dataclass(frozen=True)
class LiteMedSAMConfig(SAMConfig):
    """Hyperparameters of LiteMedSAM (box prompts; bowang-lab/MedSAM, branch LiteMedSAM). The defaults are the
    released checkpoint's: TinyViT-5M at 256 x 256 with a full-resolution patch embedding, SAM's prompt encoder and
    SAM's mask decoder (3 + 1 mask tokens, one IoU token)."""

    image_size: int = 256
    encoder_stride: int = 4
    mbconv_expand_ratio: float = 4.0
    patch_kernel_size: int = 1
    patch_stride: int = 1
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


LITEMEDSAM_CONFIG = LiteMedSAMConfig()
TINY_LITEMEDSAM_CONFIG = LiteMedSAMConfig(image_size=64, iou_head_hidden_dim=32, **_TINY_SIZES)
