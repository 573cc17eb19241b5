"""Every inference path gives the eager path's masks on the reference fixture (timings live in benchmarks/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import reference_file
from DeLightSAMLib.build import build_model
from DeLightSAMLib.config import TINY_CONFIG
from DeLightSAMLib.modeling.image_encoder import TinyViTBlock
from DeLightSAMLib.optimize import fold_batchnorm, prepare

# fused/fast reassociate float32 sums (folded BatchNorm and LayerNorm affine): the same function, so the
# reference README's float32 bound applies.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference_input():
    return torch.from_numpy(np.load(reference_file("reference_input_seed1234.npy")))[None]


@pytest.mark.parametrize("engine", ["fused", "fast"])
def test_engine_reproduces_reference_outputs_and_masks(engine, reference_model, reference_input, reference_outputs):
    runner = prepare(reference_model, engine)
    with torch.inference_mode():
        output = runner(reference_input)
    for modality in range(6):
        expected = reference_outputs[f"low_res_logits_{modality}"]
        logits = output.modality_logits[0, modality].numpy()
        assert np.abs(logits - expected).max() < TOLERANCE
        agree = (torch.sigmoid(torch.from_numpy(logits)) >= 0.5) == (torch.sigmoid(torch.from_numpy(expected)) >= 0.5)
        assert agree.float().mean() >= 0.9999
    assert np.abs(output.patch_logits[0, 0].numpy() - reference_outputs["patch_logits"]).max() < TOLERANCE


def test_onnx_engine_reproduces_reference_masks_and_caches_the_export(reference_model, reference_input, reference_outputs, tmp_path):
    pytest.importorskip("onnxruntime", reason="optional engine: pip install onnx onnxruntime")
    runner = prepare(reference_model, "onnx")
    exported = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(exported) == 1 and not list((tmp_path / "cache" / "onnx").glob("*.part"))
    batch = torch.cat([reference_input, reference_input.flip(-1)])  # the export takes any batch size
    output = runner(batch)
    assert output.modality_logits.shape == (2, 6, 256, 256)
    for modality in range(6):
        expected = reference_outputs[f"low_res_logits_{modality}"]
        assert np.abs(output.modality_logits[0, modality].numpy() - expected).max() < TOLERANCE
    mtime = exported[0].stat().st_mtime_ns
    prepare(reference_model, "onnx")
    assert exported[0].stat().st_mtime_ns == mtime  # the second use reads the cached export


def test_onnx_engine_without_onnxruntime_says_what_to_install(monkeypatch):
    import sys

    from DeLightSAMLib.errors import DeLightSAMError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DeLightSAMError, match="pip install onnx onnxruntime"):
        prepare(build_model(TINY_CONFIG), "onnx")


def test_engines_leave_the_loaded_model_untouched(reference_model):
    before = {k: v.clone() for k, v in reference_model.state_dict().items()}
    prepare(reference_model, "fast")
    after = reference_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("size", [64, 96, 256])
def test_fast_encoder_matches_eager_on_other_sizes_and_batches(size):
    """Other input sizes exercise other paddings and band remainders."""
    torch.manual_seed(size)
    model = build_model(TINY_CONFIG)
    _randomize_norms(model)
    images = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        eager = model(images)
        fast = prepare(model, "fast")(images)
    torch.testing.assert_close(fast.image_embeddings, eager.image_embeddings, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.modality_logits, eager.modality_logits, atol=1e-4, rtol=1e-4)


def test_batchnorm_folding_is_exact_for_a_conv():
    model = build_model(TINY_CONFIG)
    conv_bn = model.SemiTViT.patch_embed.seq[0]
    conv_bn.bn.running_mean.uniform_(-1, 1)
    conv_bn.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        expected = conv_bn(x)
        folded = fold_batchnorm(torch.nn.Sequential(conv_bn))[0]
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(folded, torch.nn.Conv2d) and folded.bias is not None


def _randomize_norms(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
        if isinstance(module, torch.nn.LayerNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("height, width", [(17, 11), (9, 20), (8, 8), (1, 5)])
def test_fast_blocks_match_eager_blocks_on_band_remainders(height, width):
    """Heights that leave 1, 0 or several rows for the last band; odd widths need column padding."""
    from DeLightSAMLib import fast_encoder as fe

    torch.manual_seed(height * 100 + width)
    model = build_model(TINY_CONFIG)
    _randomize_norms(model)
    encoder = fold_batchnorm(model.eval()).SemiTViT
    conv_stage, vit_stage = encoder.layers[0], encoder.layers[1]
    plain_block = TinyViTBlock(vit_stage.blocks[0].attn.qkv.in_features, 2, 3, 4.0, adapters=False).eval()
    _randomize_norms(plain_block)  # MobileSAM's block: no modality token, no adapter
    plain_block = fold_batchnorm(plain_block)
    tokens = torch.randn(2, height, width, conv_stage.blocks[0].conv1.weight.shape[1])
    vit_tokens = torch.randn(2, height, width, vit_stage.blocks[0].attn.qkv.in_features)
    images = torch.randn(2, 3, 4 * height + 1, 4 * width + 3)
    with torch.inference_mode():
        mbconv = conv_stage.blocks[0]
        expected = mbconv(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(fe.FastMBConv(mbconv)(tokens), expected, atol=1e-5, rtol=1e-5)
        merging = conv_stage.downsample
        expected = merging(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        torch.testing.assert_close(fe.FastPatchMerging(merging)(tokens), expected, atol=1e-5, rtol=1e-5)
        expected = encoder.patch_embed(images).permute(0, 2, 3, 1)
        torch.testing.assert_close(fe.FastPatchEmbed(encoder.patch_embed)(images), expected, atol=1e-5, rtol=1e-5)
        for block in (vit_stage.blocks[0], plain_block):
            torch.testing.assert_close(fe.FastTinyViTBlock(block)(vit_tokens), block(vit_tokens), atol=1e-5, rtol=1e-5)


def test_fast_decoder_parts_match_the_eager_modules():
    """LayerNorm2d on either memory layout, the dense prompter on binary and non-binary prompts, and the
    few-keys attention against the eager Attention."""
    from DeLightSAMLib.fast_decoder import FastDensePrompter, FastLayerNorm2d, _attend_few_keys
    from DeLightSAMLib.modeling.common import LayerNorm2d
    from DeLightSAMLib.modeling.transformer import Attention

    torch.manual_seed(3)
    norm = LayerNorm2d(8)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-0.5, 0.5)
    maps = torch.randn(2, 8, 5, 7) * 3 + 1
    model = build_model(TINY_CONFIG)
    _randomize_norms(model)
    prompter = model.dense_prompter
    for module in prompter.modules():
        if isinstance(module, LayerNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    binary = (torch.rand(2, 1, 6, 5) > 0.5).float()
    attention = Attention(16, 4, downsample_rate=2).eval()
    image, tokens = torch.randn(2, 50, 16), torch.randn(2, 3, 16)
    with torch.inference_mode():
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.testing.assert_close(FastLayerNorm2d(norm)(maps.to(memory_format=layout)), norm(maps), atol=1e-5, rtol=1e-5)
        fast_prompter = FastDensePrompter(prompter)
        torch.testing.assert_close(fast_prompter(binary), prompter(binary), atol=1e-5, rtol=1e-5)
        soft = binary * 0.7
        torch.testing.assert_close(fast_prompter(soft), prompter(soft), atol=1e-5, rtol=1e-5)
        expected = attention(image, tokens, tokens)
        q = attention.q_proj(image)
        k, v = attention.k_proj(tokens), attention.v_proj(tokens)
        attended = attention.out_proj(_attend_few_keys(q, k, v, attention.num_heads))
        torch.testing.assert_close(attended, expected, atol=1e-5, rtol=1e-5)


def test_fast_decoder_recomputes_its_positional_terms_when_the_encoding_changes():
    """The projections of the positional encoding are cached; another encoding of the same shape must not
    reuse them."""
    from DeLightSAMLib.fast_decoder import FastMaskDecoder

    torch.manual_seed(4)
    model = build_model(TINY_CONFIG).eval()
    decoder = model.mask_decoder
    fast = FastMaskDecoder(decoder)
    channels = decoder.transformer.layers[0].self_attn.q_proj.in_features
    image = torch.randn(2, channels, 8, 8)
    queries = torch.randn(2, model.mask_query.weight.shape[0], channels)
    with torch.inference_mode():
        for image_pe in (torch.randn(1, channels, 8, 8), torch.randn(1, channels, 8, 8), torch.randn(1, channels, 4, 16)):
            image_at_size = image.reshape(2, channels, *image_pe.shape[-2:])
            torch.testing.assert_close(fast(image_at_size, image_pe, queries), decoder(image_at_size, image_pe, queries),
                                       atol=1e-5, rtol=1e-5)
