"""TinyViT-5M image encoders: De-LightSAM's (MobileSAM's TinyViT with the ``med`` modality adapters) and
LiteMedSAM's (no adapters, a full-resolution patch embedding, 256 x 256 input).

Maps flow between stages as (B, C, H, W); inside a transformer stage tokens are kept as (B, H, W, C) so that no
stage needs to be told its resolution: every size is read from the tensors.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .common import Conv2dBN, NormMLP, sam_neck, window_partition, window_unpartition


class PatchEmbed(nn.Module):
    """Two Conv2dBN with GELU between: (B, 3, H, W) -> (B, dim, H/s², W/s²) for stride s.

    TinyViT's (De-LightSAM) uses 3x3 convolutions of stride 2 (a 1024² image becomes a 256² map); LiteMedSAM's
    uses 1x1 convolutions of stride 1, so its 256² input keeps its resolution.
    """

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.seq = nn.Sequential(
            Conv2dBN(in_channels, embed_dim // 2, kernel_size, stride, padding),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, kernel_size, stride, padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block on (B, C, H, W): 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden, 1)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        y = self.conv3(y)
        return F.gelu(x + y)


class PatchMerging(nn.Module):
    """(B, C, H, W) -> (B, C', H/s, W/s) with a 1x1, a depthwise 3x3 of stride ``s`` and a 1x1 Conv2dBN."""

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(in_dim, out_dim, 1)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


def relative_position_index(window_size: int) -> torch.Tensor:
    """(N, N) index of the offset (|drow|, |dcol|) between two positions of a window, N = window_size**2.

    Numbering the distinct offsets in first-seen order, with both positions running row by row, gives
    ``|drow| * window_size + |dcol|``.
    """
    rows = torch.arange(window_size).repeat_interleave(window_size)
    cols = torch.arange(window_size).repeat(window_size)
    drow = (rows[:, None] - rows[None, :]).abs()
    dcol = (cols[:, None] - cols[None, :]).abs()
    return drow * window_size + dcol


class Attention(nn.Module):
    """Window self-attention with TinyViT's relative-position bias and De-LightSAM's learned modality token.

    Input and output: (B', N, C) tokens of N = window_size**2 positions. One learned token
    (``deep_QKV_embeddings_med``, (heads, 1, key_dim)) is appended to the keys and the values; its logit gets the
    scalar bias ``med_attention_biases``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, modality_token: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        # The De-LightSAM modality token; absent in plain TinyViT (MobileSAM, used as a distillation teacher).
        self.med_attention_biases = nn.Parameter(torch.zeros(1)) if modality_token else None
        self.deep_QKV_embeddings_med = nn.Parameter(torch.zeros(num_heads, 1, self.key_dim)) if modality_token else None
        # Geometry, not a parameter: safe to keep; non-persistent so the checkpoint keys stay the official ones.
        self.register_buffer("attention_bias_idxs", relative_position_index(window_size), persistent=False)
        self.fused = False  # use F.scaled_dot_product_attention (same function, see set_fused_attention)

    def attention_bias(self) -> torch.Tensor:
        """(heads, N, N + 1) additive logit bias, rebuilt from the parameters at every call (never stale)."""
        spatial = self.attention_biases[:, self.attention_bias_idxs]
        if self.med_attention_biases is None:
            return spatial
        modality = self.med_attention_biases.expand(self.num_heads, spatial.shape[1], 1)
        return torch.cat([spatial, modality], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.key_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.key_dim, dim=-1)
        if self.deep_QKV_embeddings_med is not None:
            extra = self.deep_QKV_embeddings_med.to(k.dtype).expand(batch, -1, -1, -1)
            k = torch.cat([k, extra], dim=2)
            v = torch.cat([v, extra], dim=2)
        bias = self.attention_bias().to(q.dtype)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            logits = (q @ k.transpose(-2, -1)) * self.scale + bias
            out = logits.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TinyViTBlock(nn.Module):
    """Window attention, depthwise local conv (replaces x), then MLP and modality adapter in parallel.

    Tokens in and out as (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, adapters: bool = True) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size, modality_token=adapters)
        self.mlp = NormMLP(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=dim)
        self.med_dah = NormMLP(dim, int(dim * mlp_ratio)) if adapters else None

    def window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` + attention on non-overlapping windows; zero padding (bottom/right) takes part as keys and values."""
        windows = window_partition(x, self.window_size)
        attended = self.attn(windows.flatten(3, 4).flatten(0, 2)).view(windows.shape)
        return window_unpartition(attended, x.shape[1:3], residual=x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.window_attention(x)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.med_dah is None:
            return x + self.mlp(x)
        return x + self.mlp(x) + self.med_dah(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks then PatchMerging, on (B, C, H, W) maps."""

    def __init__(self, dim: int, depth: int, out_dim: int, stride: int, expand_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class TransformerStage(nn.Module):
    """TinyViT blocks, then an optional PatchMerging; (B, C, H, W) in and out."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        out_dim: int | None,
        stride: int,
        adapters: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, adapters) for _ in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim, stride) if out_dim is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class ImageEncoder(nn.Module):
    """TinyViT-5M + adapters + SAM neck: (B, 3, S, S) normalised image -> (B, out_chans, S/16, S/16) embedding.

    ``norm_head`` and ``head`` (an ImageNet classifier) exist only because the checkpoints store them
    (``classifier_head=False`` leaves them out). With ``modality_adapters=False`` it is MobileSAM's plain TinyViT
    encoder; with also ``patch_kernel_size=1, patch_stride=1`` it is LiteMedSAM's, whose (B, 3, 256, 256) input
    gives a (B, out_chans, 64, 64) embedding.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        downsample_strides: Sequence[int] = (2, 2, 1),
        out_chans: int = 256,
        num_classes: int = 1000,
        modality_adapters: bool = True,
        patch_kernel_size: int = 3,
        patch_stride: int = 2,
        classifier_head: bool = True,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(in_channels, embed_dims[0], patch_kernel_size, patch_stride)
        stages: list[nn.Module] = [
            ConvStage(embed_dims[0], depths[0], embed_dims[1], downsample_strides[0], mbconv_expand_ratio)
        ]
        for i in range(1, len(embed_dims)):
            last = i == len(embed_dims) - 1
            stages.append(
                TransformerStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    out_dim=None if last else embed_dims[i + 1],
                    stride=1 if last else downsample_strides[i],
                    adapters=modality_adapters,
                )
            )
        self.layers = nn.ModuleList(stages)
        if classifier_head:
            self.norm_head = nn.LayerNorm(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = sam_neck(embed_dims[-1], out_chans)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        for stage in self.layers:
            x = stage(x)
        return self.neck(x)
