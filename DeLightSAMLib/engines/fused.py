"""The ``eager``, ``fused`` and ``compiled`` engines: the network as written, and the same function with
BatchNorm folded into the convolutions, attention through ``F.scaled_dot_product_attention`` and channels-last
memory (inference only: BatchNorm uses its running statistics)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..modeling.common import Conv2dBN
from ..modeling.image_encoder import Attention as WindowAttention
from ..modeling.transformer import Attention as TokenAttention


def eager_model(model: nn.Module) -> nn.Module:
    """The model itself."""
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every :class:`Conv2dBN` under ``model`` (in place) by its :meth:`Conv2dBN.fuse` convolution."""
    for name, child in list(model.named_children()):
        if isinstance(child, Conv2dBN):
            setattr(model, name, child.fuse())
        else:
            fold_batchnorm(child)
    return model


def set_fused_attention(model: nn.Module, enabled: bool = True) -> nn.Module:
    for module in model.modules():
        if isinstance(module, (WindowAttention, TokenAttention)):
            module.fused = enabled
    return model


def fused_model(model: nn.Module) -> nn.Module:
    """A copy with folded BatchNorm, fused attention and channels-last layout."""
    fused = fold_batchnorm(copy.deepcopy(model).eval())
    set_fused_attention(fused, True)
    return fused.to(memory_format=torch.channels_last)


def compiled_model(model: nn.Module) -> nn.Module:
    """``fused_model`` through torch.compile; on CUDA with CUDA graphs ("reduce-overhead": launch overhead
    dominates batch 1, and it compiles in a minute or two where "max-autotune" takes many minutes per shape)."""
    on_cuda = next(model.parameters()).is_cuda
    return torch.compile(
        fused_model(model), mode="reduce-overhead" if on_cuda else "max-autotune-no-cudagraphs", dynamic=False
    )
