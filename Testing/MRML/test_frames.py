"""All frames of a sequence: each frame's mask into its own segmentation item, cancel, and undo of the run."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import QuadrantPredictor, slicer, vtk

from DeLightSAMSlicerLib.Geometry import SegmentationError
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, SegmentationCancelled

FRAME_SHAPE = (1, 6, 8)  # a 2D cine frame: [k, j, i]
IJK_TO_RAS = np.diag([-0.5, -0.5, 1.0, 1.0])


@pytest.fixture()
def clip(mrml):
    """A three-frame sequence, its browser and proxies, and a segmentation synchronised with it."""
    from vtk.util import numpy_support

    scene = mrml.scene
    sequencesLogic = slicer.vtkSlicerSequencesLogic()
    sequencesLogic.SetMRMLScene(scene)
    frames = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "frames")
    for t in range(3):
        volume = slicer.vtkMRMLScalarVolumeNode()
        image = vtk.vtkImageData()
        image.SetDimensions(FRAME_SHAPE[2], FRAME_SHAPE[1], FRAME_SHAPE[0])
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = 100 * t + np.arange(48)
        volume.SetAndObserveImageData(image)
        volume.SetIJKToRASMatrix(_matrix(IJK_TO_RAS))
        frames.SetDataNodeAtValue(volume, str(t))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "browser")
    browser.SetAndObserveMasterSequenceNodeID(frames.GetID())
    sequencesLogic.UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(frames)
    proxy.CreateDefaultDisplayNodes()
    segmentation, ids = mrml.segmentation(proxy)
    segmentations = sequencesLogic.AddSynchronizedNode(None, segmentation, browser)
    browser.SetSaveChanges(segmentations, True)
    # frame 0 already has something drawn; frames 1 and 2 have no item yet
    browser.SetSelectedItemNumber(0)
    drawn = np.zeros(FRAME_SHAPE, np.uint8)
    drawn[0, 5, 7] = 1
    mrml.setSegment(segmentation, ids[0], drawn, proxy)
    for index in (2, 1):
        segmentations.RemoveDataNodeAtValue(str(index))
    sliceNode = mrml.sliceNode("Red", "Axial")
    sliceNode.JumpSliceByCentering(*(IJK_TO_RAS @ np.array([4, 3, 0, 1.0]))[:3])
    return dict(
        browser=browser,
        proxy=proxy,
        segmentation=segmentation,
        ids=ids,
        sequence=segmentations,
        sliceNode=sliceNode,
        drawn=drawn,
        logic=sequencesLogic,
    )


def _matrix(array):
    result = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            result.SetElement(r, c, array[r, c])
    return result


def _frame_masks(mrml, clip):
    masks = []
    for item in range(3):
        clip["browser"].SetSelectedItemNumber(item)
        masks.append(mrml.segmentArray(clip["segmentation"], clip["ids"][0], clip["proxy"]))
    return masks


def _quadrant():
    expected = np.zeros(FRAME_SHAPE, np.uint8)
    expected[0, :3, :4] = 1  # rows j < 3, columns i < 4: i runs to the screen's right, j downwards
    return expected


def test_every_frame_gets_its_own_mask(mrml, clip):
    predictor = QuadrantPredictor()
    logic = DeLightSAMMRMLLogic(predictor)
    logic.batchSize = 2
    result = logic.segmentAllFrames(
        clip["browser"], clip["proxy"], clip["sliceNode"], clip["segmentation"], clip["ids"][0], "ultrasound"
    )
    assert result.sliceCount == 3 and not result.cancelled
    assert clip["browser"].GetSelectedItemNumber() == 0  # the user's frame is shown again
    assert [int(image[0, 0, 0] != predictor.images[0][0, 0, 0]) for image in predictor.images] == [0, 1, 1]
    masks = _frame_masks(mrml, clip)
    np.testing.assert_array_equal(masks[0], _quadrant() | clip["drawn"])
    np.testing.assert_array_equal(masks[1], _quadrant())
    np.testing.assert_array_equal(masks[2], _quadrant())

    assert logic.undoLastFrames()
    masks = _frame_masks(mrml, clip)
    np.testing.assert_array_equal(masks[0], clip["drawn"])
    assert masks[1].sum() == masks[2].sum() == 0
    assert not logic.undoLastFrames()


def test_cancel_keeps_the_frames_already_done(mrml, clip):
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    logic.batchSize = 2

    def stop(done, total):
        raise SegmentationCancelled()

    result = logic.segmentAllFrames(
        clip["browser"],
        clip["proxy"],
        clip["sliceNode"],
        clip["segmentation"],
        clip["ids"][0],
        "ultrasound",
        replace=True,
        progress=stop,
    )
    assert result.cancelled and result.sliceCount == 2
    masks = _frame_masks(mrml, clip)
    np.testing.assert_array_equal(masks[0], _quadrant())  # replace: the drawn voxel outside the mask is gone
    np.testing.assert_array_equal(masks[1], _quadrant())
    assert masks[2].sum() == 0


def test_segmentation_must_be_synchronised(mrml, clip):
    loose, ids = mrml.segmentation(clip["proxy"])
    with pytest.raises(SegmentationError, match="not synchronised"):
        DeLightSAMMRMLLogic(QuadrantPredictor()).segmentAllFrames(
            clip["browser"], clip["proxy"], clip["sliceNode"], loose, ids[0], "ultrasound"
        )
    with pytest.raises(SegmentationError, match="no sequence browser"):
        DeLightSAMMRMLLogic(QuadrantPredictor()).segmentAllFrames(
            None, clip["proxy"], clip["sliceNode"], loose, ids[0], "ultrasound"
        )


def test_all_frames_is_undone_by_undo_all_frames_and_not_by_the_editor_undo(mrml, clip):
    """What the effect's help says: Slicer clears the editor's undo history when the shown frame changes, so Ctrl+Z
    cannot take an all-frames run back (nor put an older state into the frame on screen); 'Undo all frames' does."""
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    logic.segmentAllFrames(
        clip["browser"], clip["proxy"], clip["sliceNode"], clip["segmentation"], clip["ids"][0], "ultrasound"
    )
    assert not logic.editorLogic.CanUndo()
    logic.editorLogic.Undo()
    masks = _frame_masks(mrml, clip)
    np.testing.assert_array_equal(masks[0], _quadrant() | clip["drawn"])
    np.testing.assert_array_equal(masks[1], _quadrant())
    assert logic.undoLastFrames()
    masks = _frame_masks(mrml, clip)
    np.testing.assert_array_equal(masks[0], clip["drawn"])
    assert masks[1].sum() == masks[2].sum() == 0


@pytest.mark.parametrize("whenClosed", ["during the run", "after the run"])
def test_closing_the_scene_stops_the_run_and_drops_the_frames_snapshot(mrml, clip, whenClosed):
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    logic.batchSize = 2
    calls = []

    def closeScene(done, total):
        calls.append(done)
        if whenClosed == "during the run":
            mrml.scene.Clear(0)  # as if the user closed the scene while the progress dialog processed events

    result = logic.segmentAllFrames(
        clip["browser"],
        clip["proxy"],
        clip["sliceNode"],
        clip["segmentation"],
        clip["ids"][0],
        "ultrasound",
        progress=closeScene,
    )
    if whenClosed == "during the run":
        assert calls == [2] and result.sceneClosed and result.cancelled and result.sliceCount == 2
    else:
        assert calls == [2, 3] and not result.sceneClosed and logic.framesSnapshot is not None
        mrml.scene.Clear(0)
    assert logic.framesSnapshot is None and not logic.undoLastFrames()
