"""Every hyperparameter of the network, in one place. Pure Python: importing it does not import torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one De-LightSAM variant. The defaults are the released checkpoint's."""

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
    num_modalities: int = 6
    num_queries: int = 7
    patch_hidden_dim: int = 64
    encoder_stride: int = 16  # image pixels per embedding cell

    @property
    def embedding_size(self) -> int:
        """Side of the (C, n, n) image embedding: 64 for 1024² input."""
        return self.image_size // self.encoder_stride


DEFAULT_CONFIG = ModelConfig()
# A small variant with the same structure, for tests and for training experiments on tiny data.
TINY_CONFIG = ModelConfig(
    image_size=256,
    embed_dims=(16, 32, 40, 48),
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 2),
    window_sizes=(7, 7, 7, 7),
    prompt_embed_dim=32,
    decoder_depth=1,
    decoder_heads=2,
    decoder_mlp_dim=64,
    patch_hidden_dim=8,
)

# Inference paths over the same network (see optimize.py); "auto" picks per device.
ENGINES = ("eager", "fused", "fast", "onnx", "compiled")
