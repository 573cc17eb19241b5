"""Every inference path gives the eager path's masks on the reference fixture (timings live in benchmarks/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import reference_file
from DeLightSAMLib.build import build_model
from DeLightSAMLib.config import TINY_CONFIG
from DeLightSAMLib.modeling.image_encoder import TinyViTBlock
from DeLightSAMLib.engines import (
    AUTO,
    DELIGHTSAM,
    ENGINES,
    GPUS,
    LITEMEDSAM,
    MODELS,
    build_runner,
    describe_defaults,
    get_engine,
)
from DeLightSAMLib.errors import UnknownNameError
from DeLightSAMLib.engines.fused import fold_batchnorm

# fused/fast reassociate float32 sums (folded BatchNorm and LayerNorm affine): the same function, so the
# reference README's float32 bound applies.
TOLERANCE = 1e-4


def usable(name: str) -> str:
    """``name``, after skipping what this machine cannot run: missing optional packages (the test extra has them)."""
    engine = ENGINES[name]
    for package in engine.requires:
        pytest.importorskip(package, reason=f"optional engine {name}: pip install {' '.join(engine.requires)}")
    return name


def engines_for(model: str) -> list[str]:
    """The registry's engines for ``model`` that this machine runs in a test's time: one that compiles takes minutes
    on a CPU, so it is tested only where a GPU is (benchmarks/benchmark.py times it there); not a skip, which CI
    counts as a failure."""
    gpu = torch.cuda.is_available()
    return [engine.name for engine in ENGINES.values() if model in engine.models and (gpu or not engine.compiles)]


@pytest.fixture(scope="module")
def reference_input():
    return torch.from_numpy(np.load(reference_file("reference_input_seed1234.npy")))[None]


@pytest.mark.parametrize("engine", engines_for(DELIGHTSAM))
def test_engine_reproduces_reference_outputs_and_masks(engine, reference_model, reference_input, reference_outputs):
    runner = build_runner(reference_model, usable(engine))
    with torch.inference_mode():
        output = runner(reference_input)
    for modality in range(6):
        expected = reference_outputs[f"low_res_logits_{modality}"]
        logits = output.modality_logits[0, modality].numpy()
        assert np.abs(logits - expected).max() < TOLERANCE
        agree = (torch.sigmoid(torch.from_numpy(logits)) >= 0.5) == (torch.sigmoid(torch.from_numpy(expected)) >= 0.5)
        assert agree.float().mean() >= 0.9999
    assert np.abs(output.patch_logits[0, 0].numpy() - reference_outputs["patch_logits"]).max() < TOLERANCE


def test_onnx_engine_reproduces_reference_masks_and_caches_the_export(
    reference_model, reference_input, reference_outputs, tmp_path
):
    pytest.importorskip("onnxruntime", reason="optional engine: pip install onnx onnxruntime")
    runner = build_runner(reference_model, "onnx")
    exported = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(exported) == 1 and not list((tmp_path / "cache" / "onnx").glob("*.part"))
    batch = torch.cat([reference_input, reference_input.flip(-1)])  # the export takes any batch size
    output = runner(batch)
    assert output.modality_logits.shape == (2, 6, 256, 256)
    for modality in range(6):
        expected = reference_outputs[f"low_res_logits_{modality}"]
        assert np.abs(output.modality_logits[0, modality].numpy() - expected).max() < TOLERANCE
    mtime = exported[0].stat().st_mtime_ns
    build_runner(reference_model, "onnx")
    assert exported[0].stat().st_mtime_ns == mtime  # the second use reads the cached export


def test_onnx_engine_without_onnxruntime_says_what_to_install(monkeypatch):
    import sys

    from DeLightSAMLib.errors import DeLightSAMError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DeLightSAMError, match="pip install onnx onnxruntime"):
        build_runner(build_model(TINY_CONFIG), "onnx")


@pytest.mark.parametrize("engine", engines_for(DELIGHTSAM))
def test_engines_leave_the_loaded_model_untouched(engine, reference_model):
    before = {k: v.clone() for k, v in reference_model.state_dict().items()}
    build_runner(reference_model, usable(engine))
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
        fast = build_runner(model, "fast")(images)
    torch.testing.assert_close(fast.image_embeddings, eager.image_embeddings, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.modality_logits, eager.modality_logits, atol=1e-4, rtol=1e-4)


def test_batchnorm_folding_is_exact_for_a_conv():
    model = build_model(TINY_CONFIG)
    conv_bn = model.SemiTViT.patch_embed.seq[0]
    conv_bn.bn.running_mean.uniform_(-1, 1)
    conv_bn.bn.running_var.uniform_(0.5, 2)
    conv_bn.bn.weight.data.uniform_(0.5, 1.5)
    conv_bn.bn.bias.data.uniform_(-1, 1)
    x = torch.randn(1, 3, 16, 16)
    with torch.inference_mode():
        expected = conv_bn(x)
        fused = conv_bn.fuse()
        torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)
        folded = fold_batchnorm(torch.nn.Sequential(conv_bn))[0]
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
    assert isinstance(fused, torch.nn.Conv2d) and fused.bias is not None and fused is not conv_bn.c


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
    from DeLightSAMLib.engines import fast_encoder as fe

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
    from DeLightSAMLib.engines.fast_decoder import FastDensePrompter, FastLayerNorm2d, _attend_few_keys
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
            torch.testing.assert_close(
                FastLayerNorm2d(norm)(maps.to(memory_format=layout)), norm(maps), atol=1e-5, rtol=1e-5
            )
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
    from DeLightSAMLib.engines.fast_decoder import FastMaskDecoder

    torch.manual_seed(4)
    model = build_model(TINY_CONFIG).eval()
    decoder = model.mask_decoder
    fast = FastMaskDecoder(decoder)
    channels = decoder.transformer.layers[0].self_attn.q_proj.in_features
    image = torch.randn(2, channels, 8, 8)
    queries = torch.randn(2, model.mask_query.weight.shape[0], channels)
    with torch.inference_mode():
        for image_pe in (
            torch.randn(1, channels, 8, 8),
            torch.randn(1, channels, 8, 8),
            torch.randn(1, channels, 4, 16),
        ):
            image_at_size = image.reshape(2, channels, *image_pe.shape[-2:])
            torch.testing.assert_close(
                fast(image_at_size, image_pe, queries), decoder(image_at_size, image_pe, queries), atol=1e-5, rtol=1e-5
            )


def test_the_registry_is_the_one_list_of_engines(capsys):
    from DeLightSAMLib.cli import main

    assert main(["predict", "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also after hyphens
    assert "{" + ",".join([AUTO, *ENGINES]) + "}" in text
    assert all("".join(f"{engine.name}: {engine.summary}".split()) in text for engine in ENGINES.values())
    assert [engine.name for engine in ENGINES.values() if engine.fixed_batch] == ["compiled"]
    with pytest.raises(UnknownNameError, match="unknown engine 'turbo'; use auto or one of eager, fused, fast"):
        get_engine("turbo")


@pytest.mark.parametrize(
    "model, device, expected",
    [
        (DELIGHTSAM, "cpu", "fast"),
        (DELIGHTSAM, "cuda", "fused"),
        (DELIGHTSAM, "mps", "fused"),
        (LITEMEDSAM, "cpu", "eager"),  # parity with the released pipeline's logits (within 1e-4; fast: 1.3e-4)
        (LITEMEDSAM, "cuda", "fused"),
        (LITEMEDSAM, "mps", "fused"),
    ],
)
def test_auto_is_the_registrys_default_for_the_model_and_device(model, device, expected):
    assert get_engine(AUTO, device, model).name == expected
    assert f"{MODELS[model]}: " in describe_defaults()
    said = describe_defaults().split(f"{MODELS[model]}: ")[1].split(";")[0]
    assert f"{expected} on " in said and device in said.split(f"{expected} on ")[1].split(",")[0]


def test_every_model_and_device_has_one_default_that_runs_the_model():
    for model in MODELS:
        for device in ("cpu", *GPUS):
            chosen = [engine.name for engine in ENGINES.values() if (model, device) in engine.default_for]
            assert len(chosen) == 1, (model, device, chosen)
            assert model in ENGINES[chosen[0]].models


@pytest.mark.parametrize("model", list(MODELS))
def test_an_engine_for_another_model_is_refused_naming_those_that_run_it(model):
    for engine in ENGINES.values():
        if model in engine.models:
            assert get_engine(engine.name, "cpu", model) is engine
            continue
        with pytest.raises(UnknownNameError, match=f"engine '{engine.name}' runs .* only; for {MODELS[model]} use "):
            get_engine(engine.name, "cpu", model)


@pytest.mark.parametrize("size, window", [((7, 7), 7), ((9, 20), 7), ((1, 5), 3), ((16, 13), 4)])
def test_window_partition_round_trip_and_in_place_forms(size, window):
    """The model's (view/pad) and the fast encoder's (into a buffer) forms give the same windows."""
    from DeLightSAMLib.modeling.common import window_partition, window_unpartition

    torch.manual_seed(sum(size))
    tokens = torch.randn(2, *size, 3)
    windows = window_partition(tokens, window)
    rows, cols = -(-size[0] // window), -(-size[1] // window)
    assert windows.shape == (2, rows, cols, window, window, 3)
    padded = torch.nn.functional.pad(tokens, (0, 0, 0, cols * window - size[1], 0, rows * window - size[0]))
    torch.testing.assert_close(windows[:, 1 % rows, cols - 1], padded[:, (1 % rows) * window :][:, :window, -window:])
    buffer = torch.full_like(windows, float("nan"))  # padding must be written, not assumed zero
    torch.testing.assert_close(window_partition(tokens, window, out=buffer), windows, atol=0, rtol=0)
    torch.testing.assert_close(window_unpartition(windows, size), tokens, atol=0, rtol=0)
    residual = torch.randn_like(tokens)
    out = torch.empty_like(tokens)
    window_unpartition(windows, size, out=out, residual=residual)
    torch.testing.assert_close(out, residual + tokens, atol=0, rtol=0)
    torch.testing.assert_close(window_unpartition(windows, size, residual=residual), residual + tokens, atol=0, rtol=0)


@pytest.mark.parametrize("engine", engines_for(LITEMEDSAM))
def test_engines_run_litemedsam_with_the_same_result(engine):
    """LiteMedSAM's encoder (no modality adapters, 1x1 stride-1 patch embedding, 256² input at full size) runs on
    the same engines: the fast encoder reads every size from the modules."""
    from DeLightSAMLib.config import TINY_LITEMEDSAM_CONFIG

    torch.manual_seed(7)
    model = build_model(TINY_LITEMEDSAM_CONFIG)
    _randomize_norms(model)
    images = torch.randn(2, 3, TINY_LITEMEDSAM_CONFIG.image_size, TINY_LITEMEDSAM_CONFIG.image_size)
    boxes = torch.tensor([[3.0, 5.0, 40.0, 50.0], [10.0, 2.0, 60.0, 33.0]])
    runner = build_runner(model, usable(engine))
    with torch.inference_mode():
        expected = model(images, boxes)
        result = runner(images, boxes)
    if engine == "fast":
        assert type(runner.model.image_encoder).__name__ == "FastImageEncoder"
    torch.testing.assert_close(result.low_res_logits, expected.low_res_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.iou, expected.iou, atol=1e-4, rtol=1e-4)


def test_fast_engine_refuses_what_it_cannot_run():
    from DeLightSAMLib.engines.fast_encoder import FastMBConv
    from DeLightSAMLib.errors import EngineError
    from DeLightSAMLib.modeling.common import Conv2dBN
    from DeLightSAMLib.modeling.image_encoder import MBConv

    block = MBConv(8, 4.0)
    block.conv2 = Conv2dBN(32, 32, 5, 1, 2, groups=32)
    with pytest.raises(EngineError, match="3x3 depthwise convolution.*use engine 'fused'"):
        FastMBConv(block)
