"""Runs split into steps, as a front end schedules them (the web app's event loop, Slicer's worker): views read and
masks written on the scene's thread, ``predictMasks`` anywhere in between. Written voxels equal the one-call path;
a mask goes to the slice its view came from even when the view has moved on; cancel, a closed scene and a deleted
segment end a run cleanly."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import QuadrantPredictor

from DeLightSAMSlicerLib.Geometry import SegmentationError
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, predictMasks

SHAPE = (6, 8, 10)  # [k, j, i]
IJK_TO_RAS = np.array([[-0.9, 0, 0, 4], [0, -0.7, 0, 2], [0, 0, 1.5, -3], [0, 0, 0, 1.0]])


@pytest.fixture()
def scene(mrml):
    voxels = (np.arange(np.prod(SHAPE)) % 251).reshape(SHAPE).astype(np.int16)
    volume = mrml.volume(voxels, IJK_TO_RAS)
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    return dict(volume=volume, segmentation=segmentation, target=target, sliceNode=sliceNode, mrml=mrml)


def _showSlice(scene, k):
    scene["sliceNode"].JumpSliceByCentering(*(IJK_TO_RAS @ np.array([4, 3, k, 1.0]))[:3])


def _segment(scene):
    return scene["mrml"].segmentArray(scene["segmentation"], scene["target"], scene["volume"])


def _targets(scene):
    return scene["volume"], scene["sliceNode"], scene["segmentation"], scene["target"]


def test_stepwise_slice_with_the_network_on_another_thread_equals_the_one_call_path(scene, mrml):
    _showSlice(scene, 2)
    DeLightSAMMRMLLogic(QuadrantPredictor()).segmentSlice(*_targets(scene), "xray")
    expected = _segment(scene)
    assert expected[2].sum() == 4 * 5 and expected.sum() == expected[2].sum()
    mrml.setSegment(scene["segmentation"], scene["target"], np.zeros(SHAPE), scene["volume"])

    run = DeLightSAMMRMLLogic(QuadrantPredictor()).startSlice(*_targets(scene), "xray")
    assert (run.model, run.total, run.done) == ("automatic", 1, 0)
    batch = run.nextBatch()
    masks = {}
    worker = threading.Thread(
        target=lambda: masks.update(m=predictMasks(QuadrantPredictor(), batch.views, batch.options))
    )
    worker.start()
    worker.join()
    run.write(batch, masks["m"])
    assert run.nextBatch() is None
    result = run.finish()
    np.testing.assert_array_equal(_segment(scene), expected)
    assert (result.voxelsAdded, result.sliceCount, result.cancelled) == (20, 1, False)


def test_a_mask_goes_to_the_slice_it_came_from_after_the_view_moved(scene):
    _showSlice(scene, 1)
    run = DeLightSAMMRMLLogic(QuadrantPredictor()).startSlice(*_targets(scene), "xray")
    batch = run.nextBatch()
    _showSlice(scene, 4)  # the user scrolled while the network ran
    run.write(batch, predictMasks(QuadrantPredictor(), batch.views, batch.options))
    run.finish()
    written = _segment(scene)
    assert written[1].sum() == 20 and written.sum() == 20


def test_cancel_between_batches_keeps_what_was_written(scene):
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    logic.batchSize = 2
    run = logic.startAllSlices(*_targets(scene), "xray")
    assert run.total == SHAPE[0]
    batch = run.nextBatch()
    run.write(batch, predictMasks(QuadrantPredictor(), batch.views, batch.options))
    run.cancel()
    assert run.nextBatch() is None
    result = run.finish()
    written = _segment(scene)
    assert result.cancelled and result.sliceCount == 2
    assert [int(written[k].sum()) for k in range(SHAPE[0])] == [20, 20, 0, 0, 0, 0]


def test_a_scene_closed_while_the_network_runs_is_not_written_to(scene, mrml):
    run = DeLightSAMMRMLLogic(QuadrantPredictor()).startSlice(*_targets(scene), "xray")
    batch = run.nextBatch()
    masks = predictMasks(QuadrantPredictor(), batch.views, batch.options)
    mrml.scene.Clear(0)
    run.write(batch, masks)  # no error, no write into a closing scene
    result = run.finish()
    assert result.sceneClosed and result.sliceCount == 0


def test_a_segment_deleted_while_the_network_runs_is_refused_in_one_message(scene):
    run = DeLightSAMMRMLLogic(QuadrantPredictor()).startSlice(*_targets(scene), "xray")
    batch = run.nextBatch()
    masks = predictMasks(QuadrantPredictor(), batch.views, batch.options)
    scene["segmentation"].GetSegmentation().RemoveSegment(scene["target"])
    with pytest.raises(SegmentationError, match="select a segment"):
        run.write(batch, masks)
    assert run.finish().sliceCount == 0


def test_starting_a_run_changes_nothing_in_the_scene(scene, mrml):
    nodes = mrml.scene.GetNumberOfNodes()
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    run = logic.startAllSlices(*_targets(scene), "xray")
    assert mrml.scene.GetNumberOfNodes() == nodes  # no editor node until the first write
    run.finish()
    assert mrml.scene.GetNumberOfNodes() == nodes
