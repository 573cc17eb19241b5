"""Building the network from a :class:`~DeLightSAMLib.config.ModelConfig`."""

from __future__ import annotations

import torch

from .config import DEFAULT_CONFIG, ModelConfig
from .modeling import DeLightSAM, ImageEncoder, ModalityMaskDecoder, PromptEncoder, TwoWayTransformer
from .modeling.prompting import dense_prompter, patch_decoder


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
