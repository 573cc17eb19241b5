"""Every hyperparameter of the network, in one place, and the function that builds it."""

from __future__ import annotations

from dataclasses import dataclass, field, asdict

import torch

from .modeling import DeLightSAM, ImageEncoder, ModalityMaskDecoder, PromptEncoder, TwoWayTransformer
from .modeling.prompting import dense_prompter, patch_decoder


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

    def to_dict(self) -> dict:
        return asdict(self)


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


def build_model(config: ModelConfig = DEFAULT_CONFIG, device: torch.device | str = "cpu") -> DeLightSAM:
    """A freshly initialised network for ``config`` on ``device`` (``"meta"`` builds it without memory)."""
    with torch.device(device):
        model = DeLightSAM(
            image_encoder=ImageEncoder(
                embed_dims=config.embed_dims,
                depths=config.depths,
                num_heads=config.num_heads,
                window_sizes=config.window_sizes,
                mlp_ratio=config.mlp_ratio,
                downsample_strides=config.downsample_strides,
                out_chans=config.prompt_embed_dim,
            ),
            prompt_encoder=PromptEncoder(embed_dim=config.prompt_embed_dim),
            mask_decoder=ModalityMaskDecoder(
                transformer_dim=config.prompt_embed_dim,
                num_modalities=config.num_modalities,
                transformer=TwoWayTransformer(
                    depth=config.decoder_depth,
                    embedding_dim=config.prompt_embed_dim,
                    num_heads=config.decoder_heads,
                    mlp_dim=config.decoder_mlp_dim,
                ),
            ),
            patch_decoder=patch_decoder(config.prompt_embed_dim, config.patch_hidden_dim),
            dense_prompter=dense_prompter(config.prompt_embed_dim),
            num_queries=config.num_queries,
            embed_dim=config.prompt_embed_dim,
        )
    model.config = config  # lets predictors and exporters read the input size without guessing
    return model.eval()


def expected_shapes(config: ModelConfig = DEFAULT_CONFIG) -> dict[str, tuple[int, ...]]:
    """The state_dict key -> shape a checkpoint for ``config`` must have (built on the meta device: no memory)."""
    return {key: tuple(value.shape) for key, value in build_model(config, "meta").state_dict().items()}
