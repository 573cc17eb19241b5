"""Small building blocks shared by the encoder and the decoders.

Attribute names (``c``, ``bn``, ``fc1``, ``lin1`` ...) are the names the released checkpoints use; they are kept
so that ``load_state_dict(strict=True)`` works. This is said once here and holds for every module in the package.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


class Conv2dBN(nn.Sequential):
    """A bias-free ``Conv2d`` (key ``c``) followed by ``BatchNorm2d`` (key ``bn``); (B, C, H, W) -> (B, C', H', W')."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_channels))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """A biased ``Conv2d`` computing this module in eval mode (BatchNorm with its running statistics folded
        into the weights); a new module, this one is left as it is."""
        conv, bn = self.c, self.bn
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=True,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        return fused


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map, at every pixel (eps 1e-6, as in SAM)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def sam_neck(in_channels: int, out_channels: int = 256) -> nn.Sequential:
    """SAM's encoder neck, (B, in_channels, h, w) -> (B, out_channels, h, w): bias-free 1x1 conv, LayerNorm2d,
    bias-free 3x3 conv, LayerNorm2d (keys ``neck.0`` .. ``neck.3``; TinyViT and ViT encoders alike)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        LayerNorm2d(out_channels),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        LayerNorm2d(out_channels),
    )


def window_partition(tokens: torch.Tensor, window: int, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, H, W, C) tokens -> (B, rows, cols, window, window, C) non-overlapping windows, zero-padded at the bottom
    and right (rows = ceil(H / window), cols = ceil(W / window)); token (y, x) lands in window
    (y // window, x // window) at (y % window, x % window).

    ``out``, when given, receives the windows without intermediate copies (inference: the fast encoder); without
    it only view, pad and copy operations are used, which autograd, tracing and ONNX export follow.
    """
    batch, height, width, channels = tokens.shape
    rows, cols = (height + window - 1) // window, (width + window - 1) // window  # (ONNX division truncates)
    pad_h, pad_w = rows * window - height, cols * window - width
    if out is None:
        if pad_h or pad_w:
            tokens = F.pad(tokens, (0, 0, 0, pad_w, 0, pad_h))
        return tokens.view(batch, rows, window, cols, window, channels).transpose(2, 3).contiguous()
    grid = out.permute(0, 1, 3, 2, 4, 5)  # (B, rows, window, cols, window, C): a view in token order
    if pad_h:
        grid[:, -1, window - pad_h :] = 0
    if pad_w:
        grid[:, :, :, -1, window - pad_w :] = 0
    for top, bottom, row_windows, window_rows in _window_spans(height, window):
        for left, right, col_windows, window_cols in _window_spans(width, window):
            first_row, first_col = top // window, left // window
            grid[
                :, first_row : first_row + row_windows, :window_rows, first_col : first_col + col_windows, :window_cols
            ] = (
                tokens[:, top:bottom, left:right]
                .unflatten(1, (row_windows, window_rows))
                .unflatten(3, (col_windows, window_cols))
            )
    return out


def window_unpartition(
    windows: torch.Tensor,
    size: tuple[int, int],
    out: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The inverse of :func:`window_partition`: (B, rows, cols, window_h, window_w, C) windows -> (B, H, W, C)
    tokens of ``size`` (H, W), the padding cropped; with ``residual`` (B, H, W, C), ``residual + tokens``.

    ``out``, when given, receives the result (it may be a view; inference only, as ``out=`` arguments take no
    gradients).
    """
    batch, rows, cols, window_h, window_w, channels = windows.shape
    height, width = size
    if out is None:
        tokens = windows.transpose(2, 3).reshape(batch, rows * window_h, cols * window_w, channels)[:, :height, :width]
        return tokens if residual is None else residual + tokens
    grid = windows.permute(0, 1, 3, 2, 4, 5)  # (B, rows, window_h, cols, window_w, C)
    for top, bottom, row_windows, window_rows in _window_spans(height, window_h):
        for left, right, col_windows, window_cols in _window_spans(width, window_w):
            first_row, first_col = top // window_h, left // window_w
            source = grid[
                :, first_row : first_row + row_windows, :window_rows, first_col : first_col + col_windows, :window_cols
            ]
            target = (
                out[:, top:bottom, left:right]
                .unflatten(1, (row_windows, window_rows))
                .unflatten(3, (col_windows, window_cols))
            )
            if residual is None:
                target.copy_(source)
            else:
                part = (
                    residual[:, top:bottom, left:right]
                    .unflatten(1, (row_windows, window_rows))
                    .unflatten(3, (col_windows, window_cols))
                )
                torch.add(part, source, out=target)
    return out


def _window_spans(size: int, window: int) -> list[tuple[int, int, int, int]]:
    """Along one axis of ``size`` tokens: (start, stop, windows, tokens per window) for the run of whole windows,
    then for the last, partial window (when there is one)."""
    whole = size // window
    spans = [(0, whole * window, whole, window)] if whole else []
    if size > whole * window:
        spans.append((whole * window, size, 1, size - whole * window))
    return spans


class NormMLP(nn.Module):
    """LayerNorm -> Linear(C, hidden) -> GELU -> Linear(hidden, C) on tokens (..., C).

    Used for the TinyViT block MLP (``mlp``) and for the De-LightSAM modality adapter (``med_dah``).
    """

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class MLP(nn.Module):
    """SAM's hypernetwork MLP: ``num_layers`` Linear layers (key ``layers.i``) with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x
