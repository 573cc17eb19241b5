"""The predictor: one encoder run per image, every modality from the cache, batches, errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeLightSAMLib.build import build_model
from DeLightSAMLib.config import TINY_CONFIG
from DeLightSAMLib.errors import DeLightSAMError, UnknownNameError
from DeLightSAMLib.device import select_device
from DeLightSAMLib.engines import ENGINES
from DeLightSAMLib.predictor import Predictor
from DeLightSAMLib.registry import resolve_modality


@pytest.fixture(scope="module")
def reference_image(reference_image_path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(reference_image_path)))


@pytest.fixture(scope="module")
def predicted(reference_predictor, reference_image):
    reference_predictor.set_image(reference_image)
    return reference_predictor


def test_mask_and_logits_match_reference_for_modality_0(predicted, reference_outputs):
    prediction = predicted.predict("dermoscopy", return_logits=True, return_probability=True)
    expected_logits = reference_outputs["mask_logits_1024_modality0"]
    assert prediction.mask.shape == (1024, 1024) and prediction.mask.dtype == bool
    difference = np.abs(prediction.logits - expected_logits).max()
    assert difference < 1e-4
    expected_mask = torch.sigmoid(torch.from_numpy(expected_logits)).numpy() >= 0.5
    # A few reference logits sit within float32 rounding of the 0.5 tie (the smallest is -9e-9): any path within
    # `difference` of the reference may put those either side, and every other pixel must agree.
    decided = np.abs(expected_logits) > difference + 1e-6
    assert (~decided).sum() < 100
    np.testing.assert_array_equal(prediction.mask[decided], expected_mask[decided])
    assert 0 < prediction.mask.sum() < prediction.mask.size  # the fixture is chosen so both classes appear
    np.testing.assert_allclose(prediction.probability, 1 / (1 + np.exp(-prediction.logits)), atol=1e-6)
    np.testing.assert_array_equal(prediction.self_prompt, reference_outputs["self_prompt_binary"].astype(bool))


@pytest.mark.parametrize(
    "name, index",
    [
        ("dermoscopy", 0),
        ("xray", 1),
        ("ultrasound", 2),
        ("fundus", 3),
        ("microscopy", 4),
        ("colonoscopy", 5),
        ("Chest X-ray", 1),
        (3, 3),
        ("5", 5),
    ],
)
def test_modalities_by_name_alias_or_index(name, index):
    assert resolve_modality(name) == index


def test_every_modality_reads_its_own_map(predicted, reference_outputs):
    for index in range(6):
        low_res = torch.from_numpy(reference_outputs[f"low_res_logits_{index}"])[None, None]
        expected = torch.nn.functional.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
        prediction = predicted.predict(index, return_logits=True)
        assert prediction.modality == index
        assert np.abs(prediction.logits - expected[0, 0].numpy()).max() < 1e-4


def test_switching_modality_or_threshold_does_not_rerun_the_network(predicted):
    calls = []
    handle = predicted.runner.register_forward_hook(lambda *args: calls.append(1))
    try:
        low = predicted.predict("fundus", threshold=0.2).mask
        high = predicted.predict("fundus", threshold=0.8).mask
        predicted.predict("xray")
        assert calls == []
        with torch.inference_mode():
            predicted.runner(torch.zeros(1, 3, 64, 64))  # control: the hook does see network passes
    finally:
        handle.remove()
    assert calls == [1]
    assert low.sum() >= high.sum() and (high <= low).all()


def test_unknown_modality_names_the_choices():
    with pytest.raises(UnknownNameError, match="unknown modality 'brain'.*dermoscopy, xray"):
        resolve_modality("brain")
    with pytest.raises(UnknownNameError, match="out of range; use 0..5"):
        resolve_modality(6)


def _tiny_predictor() -> Predictor:
    torch.manual_seed(1)
    model = build_model(TINY_CONFIG)
    with torch.no_grad():  # a non-zero self-prompt head, so the masks are not all one class
        model.patch_decoder[3].bias.fill_(0.1)
    return Predictor(model, device="cpu")


def test_out_of_order_use_is_a_runtime_error():
    predictor = _tiny_predictor()
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict("xray")


def test_predict_batch_equals_single_images_of_any_size():
    predictor = _tiny_predictor()
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (40, 70, 3), dtype=np.uint8),
        rng.normal(size=(33, 33)).astype(np.float32),
        rng.integers(0, 4000, (1, 1), dtype=np.uint16),
    ]
    batch = predictor.predict_batch(images, "ultrasound", batch_size=2, return_logits=True)
    for image, result in zip(images, batch):
        predictor.set_image(image)
        single = predictor.predict("ultrasound", return_logits=True)
        assert result.mask.shape == image.shape[:2]
        np.testing.assert_allclose(result.logits, single.logits, atol=1e-5)
        np.testing.assert_array_equal(result.mask, single.mask)


def test_blank_images_run_the_network_once_per_value():
    predictor = _tiny_predictor()
    batch_sizes = []
    handle = predictor.runner.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].shape[0]))
    rng = np.random.default_rng(2)
    blank, other_blank = np.full((20, 30), -1000, np.int16), np.full((20, 30), 40, np.int16)
    images = [blank, rng.integers(0, 255, (20, 30)).astype(np.int16), blank.copy(), other_blank, blank.copy()]
    try:
        results = predictor.predict_batch(images, "xray", batch_size=2, return_logits=True, window=(0, 2000))
    finally:
        handle.remove()
    assert sorted(batch_sizes) == [1, 2]  # three images reach the network: the textured one and two blank values
    np.testing.assert_array_equal(results[0].logits, results[2].logits)
    np.testing.assert_array_equal(results[0].logits, results[4].logits)
    predictor.set_image(blank, (0, 2000))
    np.testing.assert_allclose(predictor.predict("xray", return_logits=True).logits, results[4].logits, atol=1e-5)


def test_compiled_engine_fills_the_last_batch_instead_of_compiling_another_shape():
    predictor = _tiny_predictor()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (24, 24, 3), dtype=np.uint8) for _ in range(5)]
    expected = predictor.predict_batch(images, "fundus", batch_size=2, return_logits=True)
    predictor.engine = ENGINES["compiled"]  # only its batching differs here: the runner stays the eager model
    batch_sizes = []
    handle = predictor.runner.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].shape[0]))
    try:
        results = predictor.predict_batch(images, "fundus", batch_size=2, return_logits=True)
    finally:
        handle.remove()
    assert batch_sizes == [2, 2, 2]
    for mine, theirs in zip(results, expected):
        np.testing.assert_allclose(mine.logits, theirs.logits, atol=1e-5)
        np.testing.assert_array_equal(mine.mask, theirs.mask)


def test_engines_are_checked():
    with pytest.raises(DeLightSAMError, match="unknown engine 'turbo'"):
        Predictor(build_model(TINY_CONFIG), device="cpu", engine="turbo")
    assert Predictor(build_model(TINY_CONFIG), device="cpu").engine.name == "fast"
    assert "cpu float32 fast" == Predictor(build_model(TINY_CONFIG), device="cpu").description


def test_predict_batch_progress_can_cancel():
    predictor = _tiny_predictor()
    images = [np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8) for i in range(5)]
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predictor.predict_batch(images, 0, batch_size=2, progress=progress)
    assert seen == [(2, 5)]


def test_every_progress_callback_of_the_library_is_the_one_type():
    """``progress(done, total)`` is declared once (progress.ProgressCallback), not again per module."""
    import typing

    from DeLightSAMLib import segmentation
    from DeLightSAMLib.progress import ProgressCallback

    for function in (Predictor.predict_batch, segmentation.by_modality, segmentation.by_boxes):
        assert typing.get_type_hints(function)["progress"] == typing.Optional[ProgressCallback], function
    assert not hasattr(segmentation, "SliceProgress")


def test_device_and_dtype_errors_are_clear():
    if not torch.cuda.is_available():
        with pytest.raises(DeLightSAMError, match="no CUDA GPU"):
            select_device("cuda")
    with pytest.raises(DeLightSAMError, match="unknown device"):
        select_device("tpu")
    with pytest.raises(DeLightSAMError, match="needs a GPU"):
        Predictor(build_model(TINY_CONFIG), device="cpu", dtype="float16")
    assert select_device("auto").type in ("cpu", "cuda", "mps")


def test_predictor_arguments_are_checked_with_clear_messages():
    predictor = Predictor(build_model(TINY_CONFIG), device="cpu")
    image = np.random.default_rng(0).integers(0, 4000, (16, 16)).astype(np.uint16)
    with pytest.raises(DeLightSAMError, match=r"a pair \(center, width\) of numbers.*got 400"):
        predictor.set_image(image, window=400)
    with pytest.raises(DeLightSAMError, match="window width must not be negative"):
        predictor.predict_batch([image], 0, window=(2000, -100))
    with pytest.raises(DeLightSAMError, match="batch_size must be a whole number of at least 1"):
        predictor.predict_batch([image], 0, batch_size=0)
    with pytest.raises(DeLightSAMError, match="threshold must be a number between 0 and 1"):
        predictor.predict_batch([image], 0, threshold="0.5")
    predictor.set_image(image)
    with pytest.raises(DeLightSAMError, match="threshold must be a number between 0 and 1"):
        predictor.predict(0, threshold=float("nan"))
    for modality in ("٣", "³", 3.0):
        with pytest.raises(UnknownNameError):
            predictor.predict(modality)
    assert predictor.predict(np.int64(3)).modality == 3


@pytest.mark.parametrize("device", ["cpu:all", "cuda:x", "cuda:", "cpu:1", "cuda:٣", " ", "tpu", 3])
def test_malformed_devices_are_refused_clearly(device):
    with pytest.raises(DeLightSAMError, match="device"):
        select_device(device)


def test_well_formed_devices_are_taken():
    assert select_device(" CPU ") == torch.device("cpu")
    assert select_device("cpu:0").type == "cpu"
    assert select_device(torch.device("cpu")).type == "cpu"
