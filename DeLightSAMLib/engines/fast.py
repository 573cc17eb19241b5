"""The ``fast`` engine (the CPU default): ``fused`` with the cache-blocked image encoder of :mod:`.fast_encoder`,
the leaner decoders of :mod:`.fast_decoder`, and a thread count that follows how busy the CPUs are
(:mod:`.threads`). Same function as the eager network within float32 rounding."""

from __future__ import annotations

from torch import nn

from ..modeling import DeLightSAM, ImageEncoder, ModalityMaskDecoder
from .fast_decoder import FastDensePrompter, FastMaskDecoder, swap_layernorm2d
from .fast_encoder import FastImageEncoder
from .fused import fused_model
from .threads import ThreadGovernor


class FastRunner(nn.Module):
    """Called like the model it was built from, with the same result; ``model`` is the rebuilt network (the
    one given is left as it is)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.threads = ThreadGovernor()
        self.model = _swap_fast_modules(swap_layernorm2d(fused_model(model)), self.threads.checkpoint)
        if isinstance(self.model, DeLightSAM):
            self.model.dense_prompter = FastDensePrompter(self.model.dense_prompter)

    def forward(self, *args, **kwargs):
        with self.threads.running():
            return self.model(*args, **kwargs)


def fast_model(model: nn.Module) -> FastRunner:
    return FastRunner(model)


def _swap_fast_modules(module: nn.Module, between_blocks) -> nn.Module:
    """Replace (in place) every TinyViT image encoder and modality decoder under ``module`` by its fast version."""
    for name, child in list(module.named_children()):
        if isinstance(child, ImageEncoder):
            setattr(module, name, FastImageEncoder(child, between_blocks))
        elif isinstance(child, ModalityMaskDecoder):
            setattr(module, name, FastMaskDecoder(child))
        else:
            _swap_fast_modules(child, between_blocks)
    return module
