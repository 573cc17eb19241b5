"""Small building blocks shared by the encoder and the decoders.

Attribute names (``c``, ``bn``, ``fc1``, ``lin1`` ...) are the names the released checkpoints use; they are kept
so that ``load_state_dict(strict=True)`` works. This is said once here and holds for every module in the package.
"""

from __future__ import annotations

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
