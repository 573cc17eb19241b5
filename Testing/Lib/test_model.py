"""The network against the published implementation's outputs, and its structure against the checkpoint keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import reference_file
from DeLightSAMLib.build import build_model, expected_shapes
from DeLightSAMLib.config import DEFAULT_CONFIG, TINY_CONFIG
from DeLightSAMLib.modeling import binarize_patch_logits, upsample_logits

TOLERANCE = 1e-4  # the reference README's bound for a float32 CPU implementation


def test_parameter_names_and_shapes_are_the_official_ones():
    official = json.loads(reference_file("official_state_dict_keys.json").read_text())
    assert expected_shapes(DEFAULT_CONFIG) == {key: tuple(shape) for key, shape in official.items()}


def test_parameter_count_matches_the_paper():
    model = build_model()
    total = sum(p.numel() for p in model.parameters())
    adapters = sum(p.numel() for name, p in model.named_parameters() if "med" in name)
    assert total == pytest.approx(12.79e6, rel=0.01)
    assert adapters == pytest.approx(3.14e6, rel=0.01)


def test_image_embedding_and_patch_logits_match_reference(reference_forward, reference_outputs):
    embedding = reference_forward.image_embeddings[0].numpy()
    patch_logits = reference_forward.patch_logits[0, 0].numpy()
    assert embedding.shape == (256, 64, 64)
    assert np.abs(embedding - reference_outputs["image_embeddings"]).max() < TOLERANCE
    assert np.abs(patch_logits - reference_outputs["patch_logits"]).max() < TOLERANCE
    prompt = binarize_patch_logits(reference_forward.patch_logits)[0, 0].numpy()
    np.testing.assert_array_equal(prompt, reference_outputs["self_prompt_binary"])


@pytest.mark.parametrize("modality", range(6))
def test_low_res_logits_match_reference_for_every_modality(reference_forward, reference_outputs, modality):
    logits = reference_forward.modality_logits[0, modality].numpy()
    assert logits.shape == (256, 256)
    assert np.abs(logits - reference_outputs[f"low_res_logits_{modality}"]).max() < TOLERANCE


def test_modality_maps_differ_from_each_other(reference_forward):
    maps = reference_forward.modality_logits[0]
    for a in range(6):
        for b in range(a + 1, 6):
            assert not torch.allclose(maps[a], maps[b], atol=1e-3)


def test_final_logits_match_reference(reference_forward, reference_outputs):
    full = upsample_logits(reference_forward.modality_logits[:, :1], (1024, 1024))[0, 0].numpy()
    assert np.abs(full - reference_outputs["mask_logits_1024_modality0"]).max() < TOLERANCE


def test_decoder_alone_with_reference_self_prompt(reference_model, reference_outputs):
    embedding = torch.from_numpy(reference_outputs["image_embeddings"])[None]
    prompt = torch.from_numpy(reference_outputs["self_prompt_binary"]).float()[None, None]
    with torch.inference_mode():
        logits = reference_model.decode(embedding, prompt)[0].numpy()
    for modality in range(6):
        assert np.abs(logits[modality] - reference_outputs[f"low_res_logits_{modality}"]).max() < TOLERANCE


def test_self_prompt_threshold_is_on_the_float32_probability():
    tiny = torch.tensor([-1e-9, 0.0, -1e-3, 1e-9])
    np.testing.assert_array_equal(binarize_patch_logits(tiny).numpy(), [1.0, 1.0, 0.0, 1.0])


def test_loading_weights_after_eval_leaves_no_stale_bias():
    model = build_model(TINY_CONFIG)
    images = torch.randn(1, 3, TINY_CONFIG.image_size, TINY_CONFIG.image_size)
    with torch.inference_mode():
        before = model(images).modality_logits
    state = model.state_dict()
    for key in state:
        if key.endswith("attention_biases"):
            state[key] = state[key] + 1.0
    model.load_state_dict(state)
    with torch.inference_mode():
        after = model(images).modality_logits
    assert not torch.allclose(before, after)


def test_batched_forward_equals_one_image_at_a_time():
    torch.manual_seed(0)
    model = build_model(TINY_CONFIG)
    for module in model.modules():  # give BatchNorm non-trivial statistics so every path matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    images = torch.randn(3, 3, TINY_CONFIG.image_size, TINY_CONFIG.image_size)
    with torch.inference_mode():
        batched = model(images)
        singles = [model(images[i : i + 1]) for i in range(3)]
    size = TINY_CONFIG.embedding_size
    assert batched.modality_logits.shape == (3, 6, 4 * size, 4 * size)
    assert batched.patch_logits.shape == (3, 1, size // 2, size // 2)
    assert batched.image_embeddings.shape == (3, TINY_CONFIG.prompt_embed_dim, size, size)
    for i, single in enumerate(singles):
        torch.testing.assert_close(batched.modality_logits[i], single.modality_logits[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched.modality_logits).all()
