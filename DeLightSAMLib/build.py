"""Building a network from its config: :class:`~DeLightSAMLib.config.ModelConfig` (De-LightSAM) or
:class:`~DeLightSAMLib.config.LiteMedSAMConfig` (LiteMedSAM)."""

from __future__ import annotations

from typing import Union

import torch

from .config import DEFAULT_CONFIG, LiteMedSAMConfig, ModelConfig
from .modeling import (
    DeLightSAM,
    ImageEncoder,
    LiteMedSAM,
    ModalityMaskDecoder,
    PromptEncoder,
    PromptMaskDecoder,
    TwoWayTransformer,
)
from .modeling.prompting import dense_prompter, patch_decoder

AnyConfig = Union[ModelConfig, LiteMedSAMConfig]


def build_model(config: AnyConfig = DEFAULT_CONFIG, device: torch.device | str = "cpu") -> DeLightSAM | LiteMedSAM:
    """A freshly initialised network for ``config`` on ``device`` (``"meta"`` builds it without memory)."""
    if isinstance(config, LiteMedSAMConfig):
        return build_litemedsam(config, device)
    with torch.device(device):
        model = DeLightSAM(
            image_encoder=_image_encoder(config),
            prompt_encoder=PromptEncoder(embed_dim=config.prompt_embed_dim),
            mask_decoder=ModalityMaskDecoder(
                transformer_dim=config.prompt_embed_dim,
                num_modalities=config.num_modalities,
                transformer=_two_way_transformer(config),
            ),
            patch_decoder=patch_decoder(config.prompt_embed_dim, config.patch_hidden_dim),
            dense_prompter=dense_prompter(config.prompt_embed_dim),
            num_queries=config.num_queries,
            embed_dim=config.prompt_embed_dim,
        )
    model.config = config  # lets predictors and exporters read the input size without guessing
    return model.eval()


def build_litemedsam(config: LiteMedSAMConfig, device: torch.device | str = "cpu") -> LiteMedSAM:
    """A freshly initialised LiteMedSAM for ``config`` on ``device``."""
    with torch.device(device):
        model = LiteMedSAM(
            image_encoder=_image_encoder(
                config,
                mbconv_expand_ratio=config.mbconv_expand_ratio,
                modality_adapters=False,
                patch_kernel_size=config.patch_kernel_size,
                patch_stride=config.patch_stride,
                classifier_head=False,
            ),
            prompt_encoder=PromptEncoder(embed_dim=config.prompt_embed_dim, mask_in_chans=config.mask_in_chans),
            mask_decoder=PromptMaskDecoder(
                transformer_dim=config.prompt_embed_dim,
                transformer=_two_way_transformer(config),
                num_multimask_outputs=config.num_multimask_outputs,
                iou_head_depth=config.iou_head_depth,
                iou_head_hidden_dim=config.iou_head_hidden_dim,
            ),
            image_size=config.image_size,
        )
    model.config = config
    return model.eval()


def _image_encoder(config: AnyConfig, **variant) -> ImageEncoder:
    """The TinyViT encoder of ``config``; ``variant`` holds what only one of the two networks sets."""
    return ImageEncoder(
        embed_dims=config.embed_dims,
        depths=config.depths,
        num_heads=config.num_heads,
        window_sizes=config.window_sizes,
        mlp_ratio=config.mlp_ratio,
        downsample_strides=config.downsample_strides,
        out_chans=config.prompt_embed_dim,
        **variant,
    )


def _two_way_transformer(config: AnyConfig) -> TwoWayTransformer:
    return TwoWayTransformer(
        depth=config.decoder_depth,
        embedding_dim=config.prompt_embed_dim,
        num_heads=config.decoder_heads,
        mlp_dim=config.decoder_mlp_dim,
    )


def expected_shapes(config: AnyConfig = DEFAULT_CONFIG) -> dict[str, tuple[int, ...]]:
    """The state_dict key -> shape a checkpoint for ``config`` must have (built on the meta device: no memory)."""
    return {key: tuple(value.shape) for key, value in build_model(config, "meta").state_dict().items()}
