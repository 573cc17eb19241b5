"""A cache-blocked CPU forward for the De-LightSAM image encoder: the same function, far less memory traffic.

On a CPU the encoder is bound by memory bandwidth, not arithmetic: the 4x-expanded hidden activations (up to
256 channels x 256² in stage 0) are written to and read back from DRAM by every elementwise op. Here each
stage runs in horizontal bands small enough to stay in cache:

- MBConv: 1x1 expand, depthwise 3x3 and 1x1 project per band of rows; the 3x3's halo rows are carried over.
- Patch embedding and PatchMerging: both convolutions per band of output rows, computing only the rows of
  the first one that the second reads (the full-size intermediates are 32-64 MB each at 1024², large enough
  that the allocator hands them back to the system and every run pays for fresh pages).
- TinyViT block: attention per band of windows (one window row at a time), the normalised tokens partitioned
  into zero-padded windows (the LayerNorm affine is folded into ``qkv``, so a zero token gets exactly the eager
  path's q/k/v), the softmax scale folded into q, windows grouped so the logits stay in cache, queries of
  padding rows skipped, residual added as the band is written back. ``mlp`` and ``med_dah`` read the same
  normalised input, so they run as one Linear(C, 8C) -> GELU -> Linear(8C, C) over bands of tokens.

Weights are derived once from an :class:`ImageEncoder` (BatchNorm folded here if it is not yet); every size is
read from the modules and tensors, so any TinyViT configuration runs: with or without the modality adapters,
either patch embedding (3x3 stride 2 or 1x1 stride 1), any input size. Results equal the eager encoder up to
float32 rounding (see Testing/Lib/test_engines.py and the benchmark).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import EngineError
from ..modeling.common import Conv2dBN, window_partition, window_unpartition
from ..modeling.image_encoder import ConvStage, ImageEncoder, MBConv, PatchMerging, TinyViTBlock, TransformerStage

MBCONV_BAND_ROWS = 8
TOKENS_PER_BAND = 1024
PATCH_EMBED_BAND_PIXELS = 4096
MERGE_BAND_TOKENS = 1024
ATTENTION_LOGITS_BYTES = 2 << 20


class FastMBConv(nn.Module):
    """(B, H, W, C) tokens in and out; the 1x1 convolutions run as Linear layers on channels-last bands.

    The expanded (4C) activations live only in a buffer of band + 2 rows: the depthwise 3x3 reads one row above
    and one below each band, and the two rows the next band needs are carried over rather than recomputed.
    """

    def __init__(self, block: MBConv) -> None:
        super().__init__()
        _register_pointwise(self, "expand", block.conv1)
        self.depthwise = _folded(block.conv2)
        _register_pointwise(self, "project", block.conv3)
        if (self.depthwise.kernel_size, self.depthwise.padding, self.depthwise.stride) != ((3, 3), (1, 1), (1, 1)):
            raise EngineError(
                f"the fast encoder's MBConv needs a 3x3 depthwise convolution of stride 1 and padding 1, "
                f"not {self.depthwise}; use engine 'fused'"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        band = max(2, MBCONV_BAND_ROWS)
        # buffer row i holds expanded image row (top - 1 + i); rows outside the image are the conv's zero padding
        buffer = x.new_empty(batch, band + 2, width, self.expand_weight.shape[0])
        out = torch.empty_like(x)
        for top in range(0, height, band):
            bottom = min(top + band, height)
            if top == 0:
                buffer[:, 0].zero_()
                computed_from = 0
            else:
                buffer[:, :2] = buffer[:, band : band + 2]  # rows top - 1 and top, from the band above
                computed_from = top + 1
            computed_to = min(bottom + 1, height)
            start = computed_from - (top - 1)
            rows = buffer[:, start : start + computed_to - computed_from]
            _linear_into(rows, x[:, computed_from:computed_to], self.expand_weight, self.expand_bias)
            _gelu_(rows)
            if bottom == height:  # the row below the image
                buffer[:, bottom - (top - 1)].zero_()
            hidden = buffer[:, : bottom - top + 2].permute(0, 3, 1, 2)
            hidden = F.conv2d(
                hidden, self.depthwise.weight, self.depthwise.bias, padding=(0, 1), groups=self.depthwise.groups
            )
            hidden = _gelu_(hidden).permute(0, 2, 3, 1)
            _add_linear_into(out[:, top:bottom], x[:, top:bottom], hidden, self.project_weight, self.project_bias)
            _gelu_(out[:, top:bottom])
        return out


def _folded(conv: nn.Module) -> nn.Conv2d:
    """A biased Conv2d: ``conv`` itself, or a :class:`Conv2dBN` with its BatchNorm folded."""
    return conv.fuse() if isinstance(conv, Conv2dBN) else conv


def _register_pointwise(module: nn.Module, name: str, conv: nn.Module) -> None:
    """A 1x1 Conv2d (or Conv2dBN) as ``{name}_weight`` (out, in) and ``{name}_bias`` buffers, for F.linear on tokens."""
    conv = _folded(conv)
    if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
        raise EngineError(f"the fast encoder expected a pointwise convolution here, not {conv}; use engine 'fused'")
    module.register_buffer(f"{name}_weight", conv.weight.detach().flatten(1))
    module.register_buffer(f"{name}_bias", conv.bias.detach())


def _linear_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """``out[...] = F.linear(x, weight, bias)`` written in place (no temporary) where the memory allows."""
    if out.is_contiguous() and x.is_contiguous():
        torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight.t(), out=out.view(-1, out.shape[-1]))
    else:
        out.copy_(F.linear(x, weight, bias))


def _add_linear_into(
    out: torch.Tensor, residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> None:
    """``out[...] = residual + F.linear(x, weight, bias)``; where the memory allows, ``out`` is filled with
    ``residual + bias`` and the GEMM adds into it (no temporary, no separate pass to broadcast the bias)."""
    if out.is_contiguous() and x.is_contiguous():
        torch.add(residual, bias, out=out)
        out.view(-1, out.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), weight.t())
    else:
        torch.add(residual, F.linear(x, weight, bias), out=out)


def _conv_rows(conv: nn.Conv2d, rows_of_input, top: int, bottom: int, height: int) -> torch.Tensor:
    """Rows [top, bottom) of ``conv`` applied to an (B, C, height, W) input of which ``rows_of_input(first, last)``
    returns rows [first, last); the conv's zero padding above and below is added here, left and right by conv2d."""
    stride, padding, kernel = conv.stride[0], conv.padding[0], conv.kernel_size[0]
    first, last = top * stride - padding, (bottom - 1) * stride - padding + kernel
    rows = rows_of_input(max(first, 0), min(last, height))
    if first < 0 or last > height:
        rows = F.pad(rows, (0, 0, max(-first, 0), max(last - height, 0)))
    return F.conv2d(rows, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation, conv.groups)


def _conv_size(conv: nn.Conv2d, size: int, axis: int) -> int:
    return (size + 2 * conv.padding[axis] - conv.dilation[axis] * (conv.kernel_size[axis] - 1) - 1) // conv.stride[
        axis
    ] + 1


class FastPatchEmbed(nn.Module):
    """(B, 3, S, S) images -> (B, h, w, C) tokens, both convolutions (3x3 stride 2, or 1x1 stride 1) per band of
    output rows."""

    def __init__(self, patch_embed: nn.Module) -> None:
        super().__init__()
        conv1, gelu, conv2 = patch_embed.seq
        if not isinstance(gelu, nn.GELU) or gelu.approximate != "none":
            raise EngineError(
                f"the fast encoder's patch embedding expects convolution, exact GELU, convolution; found {gelu}"
            )
        self.conv1, self.conv2 = _folded(conv1), _folded(conv2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        mid_height, mid_width = _conv_size(self.conv1, height, 0), _conv_size(self.conv1, width, 1)
        out_height, out_width = _conv_size(self.conv2, mid_height, 0), _conv_size(self.conv2, mid_width, 1)
        out = images.new_empty(batch, out_height, out_width, self.conv2.out_channels)
        band = max(1, PATCH_EMBED_BAND_PIXELS // out_width)

        def hidden_rows(first: int, last: int) -> torch.Tensor:
            return _gelu_(_conv_rows(self.conv1, lambda a, b: images[:, :, a:b], first, last, height))

        for top in range(0, out_height, band):
            bottom = min(top + band, out_height)
            out[:, top:bottom] = _conv_rows(self.conv2, hidden_rows, top, bottom, mid_height).permute(0, 2, 3, 1)
        return out


class FastPatchMerging(nn.Module):
    """(B, H, W, C) tokens -> (B, H', W', C') tokens, as :class:`PatchMerging`, per band of output rows."""

    def __init__(self, merging: PatchMerging) -> None:
        super().__init__()
        _register_pointwise(self, "expand", merging.conv1)
        self.depthwise = _folded(merging.conv2)
        _register_pointwise(self, "project", merging.conv3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        out_height, out_width = _conv_size(self.depthwise, height, 0), _conv_size(self.depthwise, width, 1)
        out = x.new_empty(batch, out_height, out_width, self.project_weight.shape[0])
        band = max(1, MERGE_BAND_TOKENS // out_width)

        def hidden_rows(first: int, last: int) -> torch.Tensor:
            return _gelu_(F.linear(x[:, first:last], self.expand_weight, self.expand_bias)).permute(0, 3, 1, 2)

        for top in range(0, out_height, band):
            bottom = min(top + band, out_height)
            hidden = _gelu_(_conv_rows(self.depthwise, hidden_rows, top, bottom, height)).permute(0, 2, 3, 1)
            _linear_into(out[:, top:bottom], hidden, self.project_weight, self.project_bias)
        return out


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU in place: one less buffer to stream through memory."""
    return torch.ops.aten.gelu_(x)


class FastTinyViTBlock(nn.Module):
    """(B, H, W, C) tokens in and out, as :class:`TinyViTBlock` (with or without the modality adapters)."""

    def __init__(self, block: TinyViTBlock) -> None:
        super().__init__()
        attn = block.attn
        self.window = block.window_size
        self.heads, self.key_dim = attn.num_heads, attn.key_dim
        self.eps = attn.norm.eps
        # Like every weight below, the bias table and the modality token are a snapshot of the block given.
        self.register_buffer("bias", attn.attention_bias().detach().clone())
        extra = attn.deep_QKV_embeddings_med
        self.register_buffer("extra", extra.detach().clone() if extra is not None else None)
        qkv_weight, qkv_bias = _fold_layernorm(attn.norm, attn.qkv)
        # The softmax scale applied to q (its rows within each head's [q, k, v]) instead of to every logit.
        is_query = (torch.arange(qkv_weight.shape[0], device=qkv_weight.device) % (3 * self.key_dim)) < self.key_dim
        scale = torch.where(is_query, attn.scale, 1.0).to(qkv_weight.dtype)
        self.register_buffer("qkv_weight", qkv_weight * scale[:, None])
        self.register_buffer("qkv_bias", qkv_bias * scale)
        self.proj = attn.proj
        self.local_conv = _folded(block.local_conv)
        mlps = [block.mlp] + ([block.med_dah] if block.med_dah is not None else [])
        if any(mlp.norm.eps != self.eps for mlp in mlps):
            raise EngineError(
                "the fast encoder runs the MLP and the adapter on one normalised input: their "
                "LayerNorms need the attention's eps; use engine 'fused'"
            )
        folded = [_fold_layernorm(mlp.norm, mlp.fc1) for mlp in mlps]
        self.register_buffer("fc1_weight", torch.cat([weight for weight, _ in folded]))
        self.register_buffer("fc1_bias", torch.cat([bias for _, bias in folded]))
        self.register_buffer("fc2_weight", torch.cat([mlp.fc2.weight for mlp in mlps], 1).detach())
        self.register_buffer("fc2_bias", sum(mlp.fc2.bias for mlp in mlps).detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._attention(x)  # includes the residual
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()
        return self._mlps(x)  # includes the residual

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        w, heads, key_dim = self.window, self.heads, self.key_dim
        cols = -(-width // w)
        bias, extra = self.bias.to(x.dtype), self.extra
        # Windows per attention call: enough to keep both cores busy, few enough that the logits stay in cache.
        group = max(1, ATTENTION_LOGITS_BYTES // (heads * w * w * bias.shape[-1] * x.element_size()))
        # One band of windows in window order, zero-padded (a zero token normalises to zero, and the LayerNorm
        # affine is folded into qkv, so padded tokens get exactly the eager path's q/k/v).
        windows = x.new_empty(batch, 1, cols, w, w, channels)
        out = torch.empty_like(x)
        for top in range(0, height, w):
            rows = min(w, height - top)
            normed = F.layer_norm(x[:, top : top + rows], (channels,), None, None, self.eps)
            window_partition(normed, w, out=windows)
            qkv = F.linear(windows.view(batch * cols, w * w, channels), self.qkv_weight, self.qkv_bias)
            q, k, v = qkv.view(batch * cols, w * w, heads, 3 * key_dim).transpose(1, 2).split(key_dim, dim=-1)
            q = q[:, :, : rows * w]  # queries of padding rows are cropped anyway
            if extra is not None:
                extra_token = extra.to(x.dtype).expand(batch * cols, -1, -1, -1)
                k, v = torch.cat([k, extra_token], dim=2), torch.cat([v, extra_token], dim=2)
            attended = q.new_empty(batch * cols, rows * w, heads, key_dim)
            for first in range(0, batch * cols, group):
                last = first + group
                logits = torch.matmul(q[first:last], k[first:last].transpose(-2, -1)).add_(bias[:, : rows * w])
                attended[first:last] = torch.matmul(logits.softmax(dim=-1), v[first:last]).transpose(1, 2)
            projected = self.proj(attended.view(batch * cols, rows * w, heads * key_dim))
            window_unpartition(
                projected.view(batch, 1, cols, rows, w, channels),
                (rows, width),
                out=out[:, top : top + rows],
                residual=x[:, top : top + rows],
            )
        return out

    def _mlps(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        band = max(1, TOKENS_PER_BAND // width)
        out = torch.empty_like(x)
        # One hidden buffer for every band (no allocation per band).
        buffer = x.new_empty(batch, band, width, self.fc1_weight.shape[0])
        for top in range(0, height, band):
            rows = min(band, height - top)
            normed = F.layer_norm(x[:, top : top + rows], (channels,), None, None, self.eps)
            hidden = buffer[:, :rows]
            _linear_into(hidden, normed, self.fc1_weight, self.fc1_bias)
            _add_linear_into(
                out[:, top : top + rows], x[:, top : top + rows], _gelu_(hidden), self.fc2_weight, self.fc2_bias
            )
        return out


def _fold_layernorm(norm: nn.LayerNorm, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``linear(norm(x))`` as a Linear on the un-scaled normalised input."""
    weight = linear.weight * norm.weight
    bias = linear.weight @ norm.bias + linear.bias
    return weight.detach(), bias.detach()


class FastImageEncoder(nn.Module):
    """Same input and output as :class:`ImageEncoder` ((B, 3, S, S) -> (B, C, h, w)); the output is in
    channels-last memory. ``between_blocks``, when given, is called after the patch embedding and after every
    block and PatchMerging (the fast engine adjusts its thread count there)."""

    def __init__(self, encoder: ImageEncoder, between_blocks: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self.patch_embed = FastPatchEmbed(encoder.patch_embed)
        self.neck = encoder.neck
        self.between_blocks = between_blocks
        self.stages = nn.ModuleList()
        for stage in encoder.layers:
            if isinstance(stage, ConvStage):
                blocks = nn.ModuleList(FastMBConv(block) for block in stage.blocks)
            elif isinstance(stage, TransformerStage):
                blocks = nn.ModuleList(FastTinyViTBlock(block) for block in stage.blocks)
            else:
                raise EngineError(
                    f"the fast encoder runs TinyViT conv and transformer stages, not {type(stage).__name__}"
                )
            if not isinstance(stage.downsample, (PatchMerging, type(None))):
                raise EngineError(
                    f"the fast encoder downsamples with PatchMerging, not {type(stage.downsample).__name__}"
                )
            downsample = {"downsample": FastPatchMerging(stage.downsample)} if stage.downsample is not None else {}
            self.stages.append(nn.ModuleDict({"blocks": blocks, **downsample}))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._step(self.patch_embed, images)  # (B, H, W, C) from here to the neck
        for stage in self.stages:
            for block in stage["blocks"]:
                x = self._step(block, x)
            if "downsample" in stage:
                x = self._step(stage["downsample"], x)
        return self.neck(x.permute(0, 3, 1, 2))

    def _step(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = module(x)
        if self.between_blocks is not None:
            self.between_blocks()
        return x
