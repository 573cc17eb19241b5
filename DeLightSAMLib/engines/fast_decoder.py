"""The prompt and modality decoders with fewer passes over memory: the same function as the eager modules.

Used by the ``fast`` engine (see :mod:`.fast`). On a CPU these parts cost 60-100 ms per image when run as
written, much of it in passes over (B, 4096, 256) keys and (B, 64, 256, 256) maps rather than in arithmetic:

- ``LayerNorm2d`` as one ``F.layer_norm`` over the channels of a channels-last map (eager: nine elementwise
  passes).
- The dense prompter reads a binary prompt, so each pixel gets one of two vectors (computed for 0 and 1 by the
  eager layers), selected per pixel instead of a 1x1 conv, LayerNorm and GELU over the whole map.
- The two-way transformer projects the image keys once per layer: the token->image k/v and the image->token q
  are one Linear(256, 384) on the keys, with the projection of the positional encoding (``W pe + b``, constant
  for a grid size) added instead of adding the encoding to the keys before every projection. The image's
  attention over the 7 query tokens (7 keys per head) runs as two GEMMs with block-diagonal key and value
  matrices: batched matmuls and softmax over 7 columns took about four times as long.
- ``output_upscaling`` (two ConvTranspose2d 2x2 stride 2) as two GEMMs on channels-last pixels, the LayerNorm and
  GELUs on contiguous channels, and the six hypernetwork products as one GEMM whose rows are put in image order
  once at the end.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import EngineError
from ..modeling.common import LayerNorm2d
from ..modeling.mask_decoder import ModalityMaskDecoder
from ..modeling.transformer import TwoWayAttentionBlock


class FastLayerNorm2d(nn.Module):
    """:class:`LayerNorm2d` as one fused op; a channels-last input is normalised without a copy."""

    def __init__(self, norm: LayerNorm2d) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.permute(0, 2, 3, 1)
        return F.layer_norm(tokens, (tokens.shape[-1],), self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


def swap_layernorm2d(module: nn.Module) -> nn.Module:
    """Replace every :class:`LayerNorm2d` under ``module`` (in place) by :class:`FastLayerNorm2d`."""
    for name, child in list(module.named_children()):
        if isinstance(child, LayerNorm2d):
            setattr(module, name, FastLayerNorm2d(child))
        else:
            swap_layernorm2d(child)
    return module


class FastDensePrompter(nn.Module):
    """The dense prompter (Conv2d(1, C, 1) -> LayerNorm2d -> GELU) of a binary prompt, per pixel one of two vectors.

    Returns a channels-last (B, C, H, W) map. A prompt with other values than 0 and 1 runs the layers as written.
    """

    def __init__(self, prompter: nn.Sequential) -> None:
        super().__init__()
        self.layers = prompter

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        if not bool(((prompt == 0) | (prompt == 1)).all()):
            return self.layers(prompt)
        levels = torch.tensor([0.0, 1.0], dtype=prompt.dtype, device=prompt.device).view(1, 1, 1, 2)
        values = self.layers(levels)[0, :, 0]  # (C, 2): the output for a 0 pixel, then for a 1 pixel
        selected = torch.where(prompt.permute(0, 2, 3, 1) > 0, values[:, 1], values[:, 0])  # (B, H, W, C)
        return selected.permute(0, 3, 1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention of projected (B, N, D) q and (B, M, D) k, v -> (B, N, D), as the eager Attention."""
    split = lambda x: x.view(x.shape[0], x.shape[1], heads, x.shape[2] // heads).transpose(1, 2)  # noqa: E731
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)


def _attend_few_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """:func:`_attend` for many queries (the image) and a few keys (the query tokens).

    Per head the logits have only a few columns, which the batched matmuls and softmax handle slowly; here all
    heads' logits come from one GEMM with a block-diagonal key matrix (head h's keys in rows h*d..(h+1)*d and
    its own columns), the softmax is written out per row (max, exp, sum, divide, as torch computes it), and
    the output of every head lands in its own columns from one more GEMM.
    """
    batch, tokens, dim = k.shape
    head_dim = dim // heads
    blocks = (torch.arange(dim, device=k.device) // head_dim)[:, None] == torch.arange(heads, device=k.device)
    blocks = blocks.to(k.dtype)[None, :, :, None]  # (1, D, heads, 1)
    keys = (k.transpose(1, 2)[:, :, None, :] * blocks).flatten(2)  # (B, D, heads * tokens)
    values = (v.transpose(1, 2)[:, :, None, :] * blocks).flatten(2).transpose(1, 2)  # (B, heads * tokens, D)
    logits = torch.matmul(q, keys).mul_(head_dim**-0.5).view(batch, -1, heads, tokens)
    weights = torch.sub(logits, logits.amax(-1, keepdim=True)).exp_()
    weights = weights.div_(weights.sum(-1, keepdim=True))
    return torch.matmul(weights.view(batch, -1, heads * tokens), values)


class FastMaskDecoder(nn.Module):
    """Same call and result as :class:`ModalityMaskDecoder`: image (B, C, H, W), image_pe (1, C, H, W),
    queries (B, Q, C) -> (B, num_modalities, 4H, 4W) logits."""

    def __init__(self, decoder: ModalityMaskDecoder) -> None:
        super().__init__()
        self.decoder = decoder
        self.num_modalities = decoder.num_modalities
        transformer = decoder.transformer
        # Per layer: [image->token q, token->image k, token->image v] projections of the keys, as one weight.
        for index, layer in enumerate(transformer.layers):
            weights = [
                layer.cross_attn_image_to_token.q_proj,
                layer.cross_attn_token_to_image.k_proj,
                layer.cross_attn_token_to_image.v_proj,
            ]
            self.register_buffer(f"keys_weight_{index}", torch.cat([w.weight for w in weights]).detach())
        final = transformer.final_attn_token_to_image
        self.register_buffer("final_keys_weight", torch.cat([final.k_proj.weight, final.v_proj.weight]).detach())
        up1, norm, _, up2, _ = decoder.output_upscaling
        for conv in (up1, up2):
            if not (
                isinstance(conv, nn.ConvTranspose2d)
                and conv.kernel_size == (2, 2)
                and conv.stride == (2, 2)
                and conv.padding == (0, 0)
                and conv.output_padding == (0, 0)
                and conv.groups == 1
            ):
                raise EngineError(
                    f"the fast decoder upscales with 2x2 stride-2 transposed convolutions, not {conv}; "
                    "use engine 'fused'"
                )
        # ConvTranspose2d 2x2 stride 2 as a Linear: weight (in, out, i, j) -> ([i, j, out], in), so that each
        # input pixel yields its 2 x 2 output pixels with contiguous channels.
        self.register_buffer("up1_weight", up1.weight.detach().permute(0, 2, 3, 1).flatten(1).t().contiguous())
        self.register_buffer("up1_bias", up1.bias.detach().repeat(4))
        self.register_buffer("up2_weight", up2.weight.detach().permute(0, 2, 3, 1).flatten(1).t().contiguous())
        self.register_buffer("up2_bias", up2.bias.detach().repeat(4))
        self.up_norm = norm
        self._pe_terms: Optional[tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]] = None

    def _positional_terms(self, key_pe: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``W pe + b`` for each projection of the keys that the eager model applies to ``keys + pe``; cached for
        the last positional encoding seen (it depends only on the grid size)."""
        cached = self._pe_terms
        if (
            cached is not None
            and cached[0].shape == key_pe.shape
            and cached[0].device == key_pe.device
            and cached[0].dtype == key_pe.dtype
            and torch.equal(cached[0], key_pe)
        ):
            return cached[1], cached[2]
        transformer = self.decoder.transformer
        layer_terms = []
        for layer in transformer.layers:
            i2t, t2i = layer.cross_attn_image_to_token, layer.cross_attn_token_to_image
            value_bias = t2i.v_proj.bias.expand(key_pe.shape[1], -1).unsqueeze(0)
            layer_terms.append(torch.cat([i2t.q_proj(key_pe), t2i.k_proj(key_pe), value_bias], -1))
        final = transformer.final_attn_token_to_image
        final_terms = torch.cat([final.k_proj(key_pe), final.v_proj.bias.expand(key_pe.shape[1], -1)[None]], -1)
        self._pe_terms = (key_pe.clone(), layer_terms, final_terms)
        return layer_terms, final_terms

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = image.shape
        transformer = self.decoder.transformer
        keys = image.flatten(2).transpose(1, 2)  # (B, HW, C): a view for a channels-last image
        key_pe = image_pe.flatten(2).transpose(1, 2)
        layer_terms, final_terms = self._positional_terms(key_pe)
        query_pe = queries
        for index, layer in enumerate(transformer.layers):
            queries, keys = self._layer(
                layer, queries, keys, query_pe, getattr(self, f"keys_weight_{index}"), layer_terms[index]
            )
        final = transformer.final_attn_token_to_image
        projected = F.linear(keys, self.final_keys_weight).add_(final_terms)
        k, v = projected.split(final.k_proj.out_features, -1)
        q = final.q_proj(queries + query_pe)
        attended = final.out_proj(_attend(q, k, v, final.num_heads))
        queries = transformer.norm_final_attn(queries + attended)
        return self._masks(keys, queries, height, width)

    @staticmethod
    def _layer(layer: TwoWayAttentionBlock, queries, keys, query_pe, keys_weight, keys_terms):
        self_attn, t2i, i2t = layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        if layer.skip_first_layer_pe:
            queries = self_attn(queries, queries, queries)  # replaces the queries, as in SAM
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries)
        queries = layer.norm1(queries)
        projected = F.linear(keys, keys_weight).add_(keys_terms)
        image_q, k, v = projected.split([i2t.q_proj.out_features, t2i.k_proj.out_features, t2i.v_proj.out_features], -1)
        q = t2i.q_proj(queries + query_pe)
        queries = layer.norm2(queries + t2i.out_proj(_attend(q, k, v, t2i.num_heads)))
        queries = layer.norm3(queries + layer.mlp(queries))
        token_pos = queries + query_pe
        k, v = i2t.k_proj(token_pos), i2t.v_proj(queries)
        attended = i2t.out_proj(_attend_few_keys(image_q, k, v, i2t.num_heads))
        keys = layer.norm4(attended.add_(keys))
        return queries, keys

    def _masks(self, keys: torch.Tensor, queries: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch = keys.shape[0]
        mid = self.up1_weight.shape[0] // 4
        out = self.up2_weight.shape[0] // 4
        up = F.linear(keys, self.up1_weight, self.up1_bias).view(batch, height * width * 4, mid)
        up = torch.ops.aten.gelu_(F.layer_norm(up, (mid,), self.up_norm.weight, self.up_norm.bias, self.up_norm.eps))
        up = torch.ops.aten.gelu_(F.linear(up, self.up2_weight, self.up2_bias)).view(batch, -1, out)
        hyper = self.decoder.output_hypernetworks_mlps[0](queries[:, : self.num_modalities])  # (B, M, out)
        masks = hyper @ up.transpose(1, 2)  # (B, M, pixels) with pixels ordered (h, w, i, j, k, l)
        masks = masks.view(batch, self.num_modalities, height, width, 2, 2, 2, 2)
        # output row 4h + 2i + k, column 4w + 2j + l
        return masks.permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(batch, self.num_modalities, 4 * height, 4 * width)
