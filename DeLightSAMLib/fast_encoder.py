"""A cache-blocked CPU forward for the De-LightSAM image encoder: the same function, far less memory traffic.

On a CPU the encoder is bound by memory bandwidth, not arithmetic: the 4x-expanded hidden activations (up to
256 channels x 256² in stage 0) are written to and read back from DRAM by every elementwise op. Here each
stage runs in horizontal bands small enough to stay in cache:

- MBConv: 1x1 expand, depthwise 3x3 and 1x1 project per band of rows, with a one-row halo for the 3x3.
- TinyViT block: attention per band of windows (one window row at a time), the LayerNorm affine folded into
  ``qkv`` so padded tokens need no work (a zero token normalises to 0, so its q/k/v are the folded bias), and
  ``proj`` applied after cropping the padding. ``mlp`` and ``med_dah`` read the same normalised input, so they
  run as one Linear(C, 8C) -> GELU -> Linear(8C, C) over bands of tokens.

Weights are derived once from a (BatchNorm-folded) :class:`ImageEncoder`; results equal the eager encoder up to
float32 rounding (see Testing/Lib/test_engines.py and the benchmark).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .modeling.image_encoder import ConvStage, ImageEncoder, MBConv, PatchMerging, TinyViTBlock, TransformerStage

MBCONV_BAND_ROWS = 8
TOKENS_PER_BAND = 256


class FastMBConv(nn.Module):
    """(B, H, W, C) tokens in and out; the 1x1 convolutions run as Linear layers on channels-last bands."""

    def __init__(self, block: MBConv) -> None:
        super().__init__()
        self.register_buffer("expand_weight", block.conv1.weight.detach().flatten(1))
        self.register_buffer("expand_bias", block.conv1.bias.detach())
        self.depthwise = block.conv2  # folded Conv2d
        self.register_buffer("project_weight", block.conv3.weight.detach().flatten(1))
        self.register_buffer("project_bias", block.conv3.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[1]
        out = torch.empty_like(x)
        for top in range(0, height, MBCONV_BAND_ROWS):
            bottom = min(top + MBCONV_BAND_ROWS, height)
            first, last = max(top - 1, 0), min(bottom + 1, height)
            hidden = _gelu_(F.linear(x[:, first:last], self.expand_weight, self.expand_bias)).permute(0, 3, 1, 2)
            # Zero padding is right at the image border; inside, the halo rows' outputs are dropped.
            hidden = F.conv2d(hidden, self.depthwise.weight, self.depthwise.bias, padding=1, groups=self.depthwise.groups)
            hidden = _gelu_(hidden[:, :, top - first : top - first + bottom - top])
            projected = F.linear(hidden.permute(0, 2, 3, 1), self.project_weight, self.project_bias)
            projected += x[:, top:bottom]
            out[:, top:bottom] = _gelu_(projected)
        return out


def _gelu_(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU in place: one less buffer to stream through memory."""
    return torch.ops.aten.gelu_(x)


class FastTinyViTBlock(nn.Module):
    """(B, H, W, C) tokens in and out, as :class:`TinyViTBlock`."""


    def __init__(self, block: TinyViTBlock) -> None:
        super().__init__()
        attn = block.attn
        self.window = block.window_size
        self.heads, self.key_dim, self.scale = attn.num_heads, attn.key_dim, attn.scale
        self.eps = attn.norm.eps
        self.attn = attn  # for the bias tables and the modality token, read at every call
        qkv_weight, qkv_bias = _fold_layernorm(attn.norm, attn.qkv)
        self.register_buffer("qkv_weight", qkv_weight)
        self.register_buffer("qkv_bias", qkv_bias)
        self.proj = attn.proj
        self.local_conv = block.local_conv  # folded Conv2d
        assert block.mlp.norm.eps == block.med_dah.norm.eps
        mlp_w1, mlp_b1 = _fold_layernorm(block.mlp.norm, block.mlp.fc1)
        med_w1, med_b1 = _fold_layernorm(block.med_dah.norm, block.med_dah.fc1)
        self.register_buffer("fc1_weight", torch.cat([mlp_w1, med_w1]))
        self.register_buffer("fc1_bias", torch.cat([mlp_b1, med_b1]))
        self.register_buffer("fc2_weight", torch.cat([block.mlp.fc2.weight, block.med_dah.fc2.weight], 1).detach())
        self.register_buffer("fc2_bias", (block.mlp.fc2.bias + block.med_dah.fc2.bias).detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()
        return x + self._mlps(x)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        w = self.window
        cols = -(-width // w)
        padded_width = cols * w
        bias = self.attn.attention_bias().to(x.dtype)
        extra = self.attn.deep_QKV_embeddings_med.to(x.dtype)
        out = torch.empty_like(x)
        for top in range(0, height, w):
            rows = min(w, height - top)
            normed = F.layer_norm(x[:, top : top + rows], (channels,), None, None, self.eps)
            qkv = self.qkv_bias.expand(batch, w, padded_width, -1).clone()  # padding: q/k/v of a zero token
            qkv[:, :rows, :width] = F.linear(normed, self.qkv_weight, self.qkv_bias)
            windows = qkv.view(batch, w, cols, w, self.heads, 3 * self.key_dim).permute(0, 2, 4, 1, 3, 5)
            windows = windows.reshape(batch * cols, self.heads, w * w, 3 * self.key_dim)
            q, k, v = windows.split(self.key_dim, dim=-1)
            k = torch.cat([k, extra.expand(batch * cols, -1, -1, -1)], dim=2)
            v = torch.cat([v, extra.expand(batch * cols, -1, -1, -1)], dim=2)
            logits = q @ k.transpose(-2, -1)
            attended = logits.mul_(self.scale).add_(bias).softmax(dim=-1) @ v
            merged = attended.view(batch, cols, self.heads, w, w, self.key_dim).permute(0, 3, 1, 4, 2, 5)
            merged = merged.reshape(batch, w, padded_width, channels)[:, :rows, :width]
            out[:, top : top + rows] = self.proj(merged)
        return out

    def _mlps(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        band = max(1, TOKENS_PER_BAND // width)
        out = torch.empty_like(x)
        for top in range(0, height, band):
            normed = F.layer_norm(x[:, top : top + band], (channels,), None, None, self.eps)
            hidden = _gelu_(F.linear(normed, self.fc1_weight, self.fc1_bias))
            out[:, top : top + band] = F.linear(hidden, self.fc2_weight, self.fc2_bias)
        return out


def _fold_layernorm(norm: nn.LayerNorm, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``linear(norm(x))`` as a Linear on the un-scaled normalised input."""
    weight = linear.weight * norm.weight
    bias = linear.weight @ norm.bias + linear.bias
    return weight.detach(), bias.detach()


class FastImageEncoder(nn.Module):
    """Same input and output as :class:`ImageEncoder` ((B, 3, S, S) -> (B, C, S/16, S/16))."""

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.patch_embed = encoder.patch_embed
        self.neck = encoder.neck
        self.stages = nn.ModuleList()
        for stage in encoder.layers:
            if isinstance(stage, ConvStage):
                blocks = nn.ModuleList(FastMBConv(block) for block in stage.blocks)
            else:
                assert isinstance(stage, TransformerStage)
                blocks = nn.ModuleList(FastTinyViTBlock(block) for block in stage.blocks)
            self.stages.append(nn.ModuleDict({"blocks": blocks, **({"downsample": stage.downsample} if stage.downsample else {})}))
        assert all(isinstance(s.downsample, (PatchMerging, type(None))) for s in encoder.layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        for stage in self.stages:
            x = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C): free when x is already channels-last
            for block in stage["blocks"]:
                x = block(x)
            x = x.permute(0, 3, 1, 2)
            if "downsample" in stage:
                x = stage["downsample"](x)
        return self.neck(x)
