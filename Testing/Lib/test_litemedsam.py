"""LiteMedSAM against what the upstream code computes with the released weights (../shared/reference/litemedsam),
its geometry (area resize bit for bit as OpenCV, box scaling) and the box predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import reference_file
from DeLightSAMLib.box_predictor import BoxPredictor
from DeLightSAMLib.build import build_model, expected_shapes
from DeLightSAMLib.config import LITEMEDSAM_CONFIG, TINY_LITEMEDSAM_CONFIG
from DeLightSAMLib.errors import ArgumentError, BoxError
from DeLightSAMLib.predictor import Predictor, load_predictor
from DeLightSAMLib.transforms import LongestSideTransform, clip_boxes, resize_area

TOLERANCE = 1e-4  # the bound on the logits; measured here: up to 8.0e-5 on 256² logits of magnitude ~50
CASES = range(3)  # fundus photograph, chest radiograph, synthetic ellipse
_cache: dict = {}


def _upstream_pipeline(model, image, box):
    """The reference README's steps 2-7 through this library's pieces: (low-res logits, logits at (H, W), IoU)."""
    transform = LongestSideTransform(model.image_size)
    net_input = transform.prepare(image)
    with torch.inference_mode():
        embedding = model.encode(net_input)
        output = model.decode(embedding, transform.boxes_to_input(np.asarray(box)[None], image.shape[:2]))
    full = transform.logits_to_image(output.low_res_logits, image.shape[:2])[0, 0]
    return embedding[0], output.low_res_logits[0, 0], full, float(output.iou[0, 0])


@pytest.fixture(scope="module")
def outputs(litemedsam_model, litemedsam_reference):
    if not _cache:
        for case in CASES:
            ref = litemedsam_reference
            _cache[case] = _upstream_pipeline(litemedsam_model, ref[f"image_{case}"], ref[f"box_{case}"])
    return _cache


# ------------------------------------------------------------------------------------------------ structure
def test_parameter_names_and_shapes_are_the_checkpoints():
    keys = json.loads(reference_file("litemedsam/lite_medsam_state_dict_keys.json").read_text())
    assert len(keys) == 435
    assert expected_shapes(LITEMEDSAM_CONFIG) == {key: tuple(shape) for key, shape in keys.items()}


def test_parameter_count_is_the_published_one():
    model = build_model(LITEMEDSAM_CONFIG)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(9.79e6, rel=0.005)


def test_released_weights_load_strictly(litemedsam_weights_path):
    state_dict = torch.load(litemedsam_weights_path, map_location="cpu", weights_only=True)
    result = build_model(LITEMEDSAM_CONFIG).load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys and len(state_dict) == 435


# ------------------------------------------------------------------------------------------------ parity
def test_image_embedding_matches_reference(outputs, litemedsam_reference):
    embedding = outputs[0][0].numpy()
    assert embedding.shape == (256, 64, 64)
    assert np.abs(embedding - litemedsam_reference["embedding_0"]).max() < TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_low_res_logits_match_reference(outputs, litemedsam_reference, case):
    low_res = outputs[case][1].numpy()
    assert low_res.shape == (256, 256)
    assert np.abs(low_res - litemedsam_reference[f"low_res_logits_{case}"]).max() < TOLERANCE


def test_final_logits_of_the_small_case_match_reference(outputs, litemedsam_reference):
    full = outputs[2][2].numpy()
    assert full.shape == (300, 420)
    assert np.abs(full - litemedsam_reference["logits_2"]).max() < TOLERANCE


@pytest.mark.parametrize("case", CASES)
def test_masks_match_reference_where_decided(outputs, litemedsam_reference, case):
    """Pixels whose reference logit (at full size, from the reference low-res logits) lies within the measured
    logit difference of 0 may go either way in float32; every other pixel must agree."""
    ref = litemedsam_reference
    _, low_res, full, _ = outputs[case]
    reference_low_res = torch.from_numpy(ref[f"low_res_logits_{case}"])[None, None]
    reference_full = LongestSideTransform().logits_to_image(reference_low_res, ref[f"image_{case}"].shape[:2])[0, 0]
    margin = float(np.abs(low_res.numpy() - ref[f"low_res_logits_{case}"]).max())
    decided = (reference_full.abs() > margin).numpy()
    mask = (torch.sigmoid(full) > 0.5).numpy()
    assert mask.shape == ref[f"mask_{case}"].shape
    np.testing.assert_array_equal(mask[decided], ref[f"mask_{case}"][decided])
    assert decided.mean() > 0.999
    assert ref[f"mask_{case}"].sum() > 1000  # a real structure, not an empty mask


@pytest.mark.parametrize("case", CASES)
def test_iou_estimates_match_reference(outputs, litemedsam_reference, case):
    assert outputs[case][3] == pytest.approx(float(litemedsam_reference[f"iou_{case}"]), abs=1e-5)


# ------------------------------------------------------------------------------------------------ geometry
def _ramp(height, width):
    return (np.arange(height * width).reshape(height, width) * 37 % 256).astype(np.uint8)


@pytest.mark.parametrize(
    "image, size, expected",
    [
        # values computed by OpenCV 4.14 and 5.1: cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        (_ramp(7, 10), (3, 4), [[89, 119, 128, 100], [130, 131, 118, 119], [149, 121, 130, 160]]),
        # factor 2 on both axes: integer sums rounded half up (0.5 -> 1)
        (np.array([[0, 0, 3, 0], [0, 2, 0, 0], [1, 1, 5, 5], [0, 0, 5, 4]]), (2, 2), [[1, 1], [1, 5]]),
        # factor 4: half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2)
        (
            np.pad(np.array([[8, 0, 0, 0, 24], [0] * 5, [0] * 5, [0] * 5, [40, 0, 0, 0, 7]]), ((0, 3), (0, 3))),
            (2, 2),
            [[0, 2], [2, 0]],
        ),
        # enlarging: OpenCV's area-mode bilinear in fixed point
        (
            np.array([[0, 200], [50, 255], [10, 90]]),
            (7, 5),
            [
                [0, 0, 100, 200, 200],
                [0, 0, 100, 200, 200],
                [33, 33, 135, 236, 236],
                [50, 50, 153, 255, 255],
                [37, 37, 118, 200, 200],
                [10, 10, 50, 90, 90],
                [10, 10, 50, 90, 90],
            ],
        ),
        # one axis enlarged, the other shrunk
        (_ramp(5, 3), (2, 7), [[67, 67, 91, 104, 116, 141, 141], [106, 106, 96, 92, 104, 129, 129]]),
    ],
)
def test_area_resize_is_opencv_inter_area(image, size, expected):
    image = np.asarray(image, np.uint8)
    np.testing.assert_array_equal(resize_area(image, size), expected)
    colour = np.stack([image, 255 - image, image // 2], axis=-1)
    result = resize_area(colour, size)
    np.testing.assert_array_equal(result[..., 0], expected)
    np.testing.assert_array_equal(result[..., 1], resize_area(255 - image, size))


def test_area_resize_of_whole_blocks_is_their_mean():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (9, 12, 3)).astype(np.uint8)
    expected = np.rint(image.reshape(3, 3, 4, 3, 3).astype(np.float64).mean(axis=(1, 3)))
    np.testing.assert_array_equal(resize_area(image, (3, 4)), expected)


def test_longest_side_transform_sizes_boxes_and_padding():
    transform = LongestSideTransform(256)
    assert transform.resized_size((300, 420)) == (183, 256)  # int(300 * 256 / 420 + 0.5)
    assert transform.resized_size((1411, 1411)) == (256, 256)
    assert transform.resized_size((978, 921)) == (256, 241)
    boxes = transform.boxes_to_input(np.array([[150, 70, 350, 215], [0.5, 1.9, 419.9, 299.99]]), (300, 420))
    np.testing.assert_array_equal(boxes.numpy(), [[91, 42, 213, 131], [0, 1, 255, 182]])  # truncated, not rounded
    assert boxes.dtype == torch.float32
    image = np.zeros((300, 420, 3), np.uint8)
    image[100:200, 100:300] = 200
    image[0, 0] = 50
    net_input = transform.prepare(image)[0]
    assert net_input.shape == (3, 256, 256)
    assert float(net_input[:, :183].max()) == 1.0 and float(net_input[:, :183].min()) == 0.0  # min-max over the image
    assert not net_input[:, 183:].any()  # zero padding below the image
    blank = transform.prepare(np.full((10, 20), 7, np.uint8))[0]
    assert not blank.any()  # a constant image normalises to 0 (denominator clipped), no NaN


def test_logits_are_cropped_then_resized_to_the_image():
    transform = LongestSideTransform(256)
    low_res = torch.zeros(1, 1, 256, 256)
    low_res[..., :183, :] = 5.0  # inside the resized image
    low_res[..., 183:, :] = -100.0  # padding: must not reach the image
    full = transform.logits_to_image(low_res, (300, 420))
    assert full.shape == (1, 1, 300, 420) and torch.all(full == 5.0)


@pytest.mark.parametrize(
    "box, message",
    [
        ([10, 10, 10, 20], "empty or inverted"),
        ([30, 10, 20, 20], "empty or inverted"),
        ([0, float("nan"), 5, 5], "not a finite number"),
        ([0, 0, float("inf"), 5], "not a finite number"),
        ([500, 10, 600, 20], "wholly outside"),
        ([-50, -50, 0, 10], "wholly outside"),
        ([1, 2, 3], "four numbers"),
    ],
)
def test_bad_boxes_are_clear_errors(box, message):
    with pytest.raises(BoxError, match=message):
        clip_boxes(box, (100, 200))


def test_boxes_partly_outside_are_clipped_to_the_image():
    clipped = clip_boxes([[-10, -5, 250, 50], [5, 6, 7, 8]], (100, 200))
    np.testing.assert_array_equal(clipped, [[0, 0, 200, 50], [5, 6, 7, 8]])


# ------------------------------------------------------------------------------------------------ predictor
def test_predictor_matches_reference_and_encodes_once(litemedsam_model, litemedsam_reference, monkeypatch):
    ref = litemedsam_reference
    predictor = BoxPredictor(litemedsam_model, device="cpu", engine="eager")  # the faithful path, under 1e-4
    calls = []
    encoder = predictor.encoder
    monkeypatch.setattr(predictor, "encoder", lambda images: calls.append(1) or encoder(images))
    predictor.set_image(ref["image_2"])
    single = predictor.predict(ref["box_2"], return_logits=True)
    several = predictor.predict([ref["box_2"], [10, 10, 120, 90], [-20, 200, 100, 400]], return_logits=True)
    assert len(calls) == 1  # one encoder pass, however many boxes
    assert single.masks.shape == (1, 300, 420) and single.logits.dtype == np.float32
    assert np.abs(single.logits[0] - ref["logits_2"]).max() < TOLERANCE
    assert single.iou[0] == pytest.approx(float(ref["iou_2"]), abs=1e-5)
    np.testing.assert_allclose(several.logits[0], single.logits[0], atol=1e-4)  # batching changes nothing
    np.testing.assert_array_equal(several.boxes[2], [0, 200, 100, 300])  # clipped at the bottom and left
    labels = several.label_image()
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}
    winner = np.argmax(np.where(several.masks, several.logits, -np.inf), axis=0) + 1
    np.testing.assert_array_equal(labels[several.mask], winner[several.mask])


def test_fast_engine_runs_the_same_function_as_eager(litemedsam_model, litemedsam_predictor, litemedsam_reference):
    """The box model's encoder runs on the project's engines: ``fast`` is the same function within float32 rounding
    of logits that reach +-50, with the same masks wherever a mask is decided. The CPU default stays eager (the
    released pipeline's arithmetic, within 1e-4 of its logits)."""
    assert litemedsam_predictor.engine.name == "eager"
    fast = BoxPredictor(litemedsam_model, device="cpu", engine="fast")
    assert "FastImageEncoder" in repr(fast.encoder)
    for case in CASES:
        image, box = litemedsam_reference[f"image_{case}"], litemedsam_reference[f"box_{case}"]
        results = []
        for predictor in (litemedsam_predictor, fast):
            predictor.set_image(image)
            results.append(predictor.predict(box, return_logits=True))
        difference = np.abs(results[1].logits - results[0].logits).max()
        assert difference < 5e-4  # measured: up to 1.3e-4 (|logits| up to ~50)
        decided = np.abs(results[0].logits) > difference + 1e-6
        np.testing.assert_array_equal(results[1].masks[decided], results[0].masks[decided])
        assert results[1].iou == pytest.approx(results[0].iou, abs=1e-5)


def test_box_predictor_refuses_an_engine_written_for_de_lightsam_only(litemedsam_model):
    from DeLightSAMLib.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="runs De-LightSAM only"):
        BoxPredictor(litemedsam_model, device="cpu", engine="onnx")
    with pytest.raises(UnknownNameError, match="unknown engine"):
        BoxPredictor(litemedsam_model, device="cpu", engine="turbo")


def test_predictor_order_and_threshold(litemedsam_predictor, litemedsam_reference):
    predictor = BoxPredictor(litemedsam_predictor.model, device="cpu")
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict([0, 0, 10, 10])
    predictor.set_image(litemedsam_reference["image_2"][..., 0])  # gray works too
    loose = predictor.predict(litemedsam_reference["box_2"], threshold=0.1).masks
    strict = predictor.predict(litemedsam_reference["box_2"], threshold=0.9).masks
    assert strict.sum() < loose.sum() and not (strict & ~loose).any()
    with pytest.raises(BoxError, match="empty or inverted"):
        predictor.predict([50, 50, 40, 60])
    for threshold in (0.0, 1.0, 1.5, True):
        with pytest.raises(ArgumentError, match="threshold must be a number between 0 and 1"):
            predictor.predict(litemedsam_reference["box_2"], threshold=threshold)


def test_factory_picks_the_predictor_from_the_checkpoint(litemedsam_weights_path, reference_weights_path):
    assert isinstance(load_predictor(str(litemedsam_weights_path), device="cpu"), BoxPredictor)
    assert isinstance(load_predictor(str(reference_weights_path), device="cpu", engine="eager"), Predictor)


def test_tiny_model_decodes_boxes_in_batches():
    torch.manual_seed(0)
    model = build_model(TINY_LITEMEDSAM_CONFIG)
    predictor = BoxPredictor(model, device="cpu")
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (40, 70, 3)).astype(np.uint8))
    boxes = [[5, 5, 30, 30], [10, 0, 69, 39], [0, 0, 70, 40]]
    together = predictor.predict(boxes, return_logits=True, batch_size=2)
    alone = [predictor.predict(box, return_logits=True).logits[0] for box in boxes]
    assert together.logits.shape == (3, 40, 70)
    for index in range(3):
        np.testing.assert_allclose(together.logits[index], alone[index], atol=1e-5)
    assert not np.allclose(alone[0], alone[1])  # the box matters


def test_modality_predictor_refuses_litemedsam_clearly(litemedsam_weights_path):
    from DeLightSAMLib.errors import DeLightSAMError

    with pytest.raises(DeLightSAMError, match="is LiteMedSAM, a box-prompted model"):
        Predictor.from_checkpoint(str(litemedsam_weights_path), device="cpu")
