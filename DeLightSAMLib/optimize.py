"""Faster inference paths over the same network, each computing the eager model's function.

- ``eager``: the model as built (the reference path every other one is measured against).
- ``fused``: BatchNorm folded into the preceding convolutions (inference only: BN uses running statistics),
  attention through ``F.scaled_dot_product_attention`` with the same additive bias, channels-last memory.
- ``fast``: ``fused`` with the cache-blocked CPU encoder of :mod:`fast_encoder` and the leaner decoders of
  :mod:`fast_decoder` (the CPU default).
- ``onnx``: ``fused`` exported to ONNX (once per checkpoint, cached) and run by onnxruntime on the CPU, when the
  ``onnx`` and ``onnxruntime`` packages are installed. About as fast as ``fast`` on the benchmark machine, at the
  cost of an export on first use and two more packages, so it is opt-in.
- ``compiled``: ``fused`` through ``torch.compile`` (for GPUs; on a CPU the first call compiles for minutes
  and ran no faster than ``fast``).

Rejected after measurement (benchmarks/README.md): dynamic int8 quantisation of the Linear layers (the masks
changed on 6.7% of the pixels of the benchmark images).

Each function returns a new module; the model passed in is left as it is (its state_dict keeps the official
names).
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from .config import ENGINES
from .errors import DeLightSAMError
from .modeling.common import Conv2dBN
from .modeling.image_encoder import Attention as WindowAttention
from .modeling.transformer import Attention as TokenAttention

logger = logging.getLogger(__name__)



def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias computing ``bn(conv(x))`` in eval mode."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every Conv2dBN (in place) by the equivalent biased Conv2d."""
    for name, child in list(model.named_children()):
        if isinstance(child, Conv2dBN):
            setattr(model, name, fold_conv_bn(child.c, child.bn))
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


def fast_model(model: nn.Module) -> nn.Module:
    """``fused_model`` with the cache-blocked encoder and the leaner decoders (CPU)."""
    from .fast_decoder import FastDensePrompter, FastMaskDecoder, swap_layernorm2d
    from .fast_encoder import FastImageEncoder

    fast = swap_layernorm2d(fused_model(model))
    fast.SemiTViT = FastImageEncoder(fast.SemiTViT)
    fast.dense_prompter = FastDensePrompter(fast.dense_prompter)
    fast.mask_decoder = FastMaskDecoder(fast.mask_decoder)
    return fast


def default_engine(device: torch.device) -> str:
    """The fastest path measured for a device type: ``fast`` on CPUs, ``fused`` elsewhere."""
    return "fast" if device.type == "cpu" else "fused"


def compiled_model(model: nn.Module) -> nn.Module:
    """``fused_model`` through torch.compile; on CUDA with CUDA graphs ("reduce-overhead": launch overhead
    dominates batch 1, and it compiles in a minute or two where "max-autotune" takes many minutes per shape)."""
    on_cuda = next(model.parameters()).is_cuda
    return torch.compile(fused_model(model), mode="reduce-overhead" if on_cuda else "max-autotune-no-cudagraphs",
                         dynamic=False)


def prepare(model: nn.Module, engine: str) -> nn.Module:
    """The module that runs ``engine`` for ``model``."""
    if engine == "eager":
        return model
    if engine == "fused":
        return fused_model(model)
    if engine == "fast":
        return fast_model(model)
    if engine == "onnx":
        return OnnxRunner(model)
    if engine == "compiled":
        return compiled_model(model)
    raise ValueError(f"unknown engine '{engine}'; use one of {', '.join(ENGINES)}")


class OnnxRunner:
    """``fused`` exported to ONNX and run by onnxruntime; called like the model, returns DeLightSAMOutput
    (without the image embedding). The export is cached per checkpoint under the checkpoint cache folder."""

    def __init__(self, model: nn.Module) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise DeLightSAMError("the 'onnx' engine needs: pip install onnx onnxruntime (or use engine 'fast')") from error
        path = self._export(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _export(model: nn.Module):
        import hashlib

        from .atomic import atomic_file
        from .checkpoint import cache_dir

        digest = hashlib.sha256(torch.__version__.encode())
        for key, value in model.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        config = getattr(model, "config", None)
        size = config.image_size if config is not None else 1024
        folder = cache_dir() / "onnx"
        path = folder / f"delightsam-{digest.hexdigest()[:16]}-{size}.onnx"
        if path.is_file():
            return path
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as temporary:
            sample = torch.zeros(1, 3, size, size)
            torch.onnx.export(_Outputs(fused_model(model).cpu().float()), (sample,), str(temporary), input_names=["images"],
                              output_names=["modality_logits", "patch_logits"], dynamo=False, opset_version=17,
                              dynamic_axes={name: {0: "batch"} for name in ("images", "modality_logits", "patch_logits")})
        logger.info("exported %s", path)
        return path

    def __call__(self, images: torch.Tensor):
        from .modeling import DeLightSAMOutput

        modality_logits, patch_logits = self.session.run(None, {"images": images.detach().cpu().float().numpy()})
        return DeLightSAMOutput(torch.from_numpy(modality_logits), torch.from_numpy(patch_logits), None)


class _Outputs(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        output = self.model(images)
        return output.modality_logits, output.patch_logits
