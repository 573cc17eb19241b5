"""Frozen teacher image encoders for modality-decoupled distillation, in their published key formats.

A teacher maps the student's normalised input (B, 3, S, S) to an embedding of the student's shape
(B, 256, 64, 64 for the released configuration). Registered teachers:

- ``mobilesam``: MobileSAM's TinyViT-5M (keys ``image_encoder.*`` of ``mobile_sam.pt``; no modality adapters).
- ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``: SAM's ViT image encoders (keys ``image_encoder.*`` of
  ``sam_vit_*.pth``), written from the architecture description: windowed attention with decomposed relative
  position, global attention at four blocks, the same neck.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoint import read_state_dict
from ..errors import CheckpointError
from ..modeling.common import sam_neck, window_partition, window_unpartition
from ..modeling.image_encoder import ImageEncoder


class ViTImageEncoder(nn.Module):
    """SAM's ViT encoder: 16-pixel patches, absolute position embedding, windowed/global blocks, neck."""

    def __init__(
        self,
        *,
        image_size: int = 1024,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        global_blocks: Sequence[int] = (2, 5, 8, 11),
        window_size: int = 14,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        grid = image_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, 0 if i in global_blocks else window_size, grid) for i in range(depth)
        )
        self.neck = sam_neck(embed_dim, out_chans)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(images).permute(0, 2, 3, 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int, grid: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, num_heads, window_size or grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.lin1, self.mlp.lin2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            windows = window_partition(x, self.window_size)
            x = window_unpartition(
                self.attn(windows.flatten(0, 2)).view(windows.shape), x.shape[1:3], residual=shortcut
            )
        else:
            x = shortcut + self.attn(x)
        return x + self.mlp.lin2(F.gelu(self.mlp.lin1(self.norm2(x))))


class RelPosAttention(nn.Module):
    """Attention on (B, h, w, C) with decomposed relative-position terms along rows and columns."""

    def __init__(self, dim: int, num_heads: int, size: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, height * width, self.head_dim).unbind(0)
        logits = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        rel_h = _relative_table(self.rel_pos_h, height)  # (h, h, d)
        rel_w = _relative_table(self.rel_pos_w, width)
        grid_q = q.reshape(-1, height, width, self.head_dim)
        bias_h = torch.einsum("bhwc,hkc->bhwk", grid_q, rel_h)
        bias_w = torch.einsum("bhwc,wkc->bhwk", grid_q, rel_w)
        logits = logits.view(-1, height, width, height, width) + bias_h[..., :, None] + bias_w[..., None, :]
        attn = logits.view(-1, height * width, height * width).softmax(dim=-1)
        out = (attn @ v).view(batch, self.num_heads, height, width, self.head_dim).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, height, width, -1))


def _relative_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size, d): the embedding of offset (query - key) for every pair along one axis."""
    if table.shape[0] != 2 * size - 1:
        table = F.interpolate(table.T[None], size=2 * size - 1, mode="linear")[0].T
    offsets = torch.arange(size)[:, None] - torch.arange(size)[None, :] + (size - 1)
    return table[offsets]


@dataclass(frozen=True)
class Teacher:
    build: Callable[[], nn.Module]
    prefix: str = "image_encoder."
    ignored_keys: tuple = ()  # buffers some published checkpoints store and the module recomputes


TEACHERS: dict[str, Teacher] = {
    "mobilesam": Teacher(lambda: ImageEncoder(modality_adapters=False), ignored_keys=("attention_bias_idxs",)),
    "sam_vit_b": Teacher(lambda: ViTImageEncoder(embed_dim=768, depth=12, num_heads=12, global_blocks=(2, 5, 8, 11))),
    "sam_vit_l": Teacher(
        lambda: ViTImageEncoder(embed_dim=1024, depth=24, num_heads=16, global_blocks=(5, 11, 17, 23))
    ),
    "sam_vit_h": Teacher(
        lambda: ViTImageEncoder(embed_dim=1280, depth=32, num_heads=16, global_blocks=(7, 15, 23, 31))
    ),
}


def load_teacher(name: str, checkpoint: str, teacher: Teacher | None = None) -> nn.Module:
    """A frozen, eval-mode teacher encoder loaded strictly from a published checkpoint."""
    if teacher is None:
        if name not in TEACHERS:
            raise CheckpointError(f"unknown teacher '{name}'; choose one of {', '.join(TEACHERS)}")
        teacher = TEACHERS[name]
    encoder = teacher.build()
    state = read_state_dict(checkpoint)
    if any(key.startswith(teacher.prefix) for key in state):
        state = {key[len(teacher.prefix) :]: value for key, value in state.items() if key.startswith(teacher.prefix)}
    state = {key: value for key, value in state.items() if key.rsplit(".", 1)[-1] not in teacher.ignored_keys}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint} is not a '{name}' checkpoint: {len(missing)} missing keys (e.g. {', '.join(missing[:3])}), "
            f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})"
        )
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return encoder.eval()
