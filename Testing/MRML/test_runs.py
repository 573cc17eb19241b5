"""How runs use the predictor and the scene: the raw view and display window go to the predictor, the logic keeps no
predictor, a scene closed mid-run stops it cleanly, a run that changes nothing leaves no undo step, and Slicer 5.8
(no vtkSlicerSegmentEditorLogic) is told what to do."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from conftest import QuadrantPredictor, slicer

from DeLightSAMSlicerLib.Geometry import SegmentationError
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic

SHAPE = (5, 7, 9)  # [k, j, i]
IJK_TO_RAS = np.array([[-0.9, 0, 0, 4], [0, -0.7, 0, 2], [0, 0, 1.5, -3], [0, 0, 0, 1.0]])


@pytest.fixture()
def scene(mrml):
    voxels = (np.arange(np.prod(SHAPE)) * 7).reshape(SHAPE).astype(np.int16)
    volume = mrml.volume(voxels, IJK_TO_RAS)
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(300, 500)
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    sliceNode.JumpSliceByCentering(*(IJK_TO_RAS @ np.array([4, 3, 2, 1.0]))[:3])
    return dict(volume=volume, voxels=voxels, segmentation=segmentation, target=target, sliceNode=sliceNode, mrml=mrml)


class SingleImagePredictor:
    """A predictor with only set_image and predict (no batches), recording what it was given."""

    def __init__(self):
        self.given = []

    def set_image(self, image, window=None):
        self.given.append((np.array(image), window))
        self.shape = image.shape[:2]

    def predict(self, modality, threshold=0.5, **kwargs):
        import types

        return types.SimpleNamespace(mask=np.ones(self.shape, bool))


def test_one_slice_gives_the_raw_view_and_the_display_window_to_set_image(scene):
    predictor = SingleImagePredictor()
    result = DeLightSAMMRMLLogic(predictor).segmentSlice(
        scene["volume"], scene["sliceNode"], scene["segmentation"], scene["target"], "xray"
    )
    ((image, window),) = predictor.given
    assert image.dtype == np.int16 and window == (500.0, 300.0)  # (level, width) as the user set them
    # axial view of this geometry: rows are j, columns are i, both as stored
    np.testing.assert_array_equal(image, scene["voxels"][2])
    assert result.voxelsAdded == SHAPE[1] * SHAPE[2]


def test_all_slices_give_raw_views_and_one_window_to_predict_batch(scene):
    calls = []

    class BatchPredictor(QuadrantPredictor):
        def predict_batch(self, images, modality, threshold=0.5, window=None, **kwargs):
            calls.append(([np.array(image) for image in images], window))
            return super().predict_batch(images, modality, threshold=threshold, window=window)

    logic = DeLightSAMMRMLLogic(BatchPredictor())
    logic.batchSize = 3
    logic.segmentAllSlices(scene["volume"], scene["sliceNode"], scene["segmentation"], scene["target"], "xray")
    assert [len(images) for images, _ in calls] == [3, 2] and {window for _, window in calls} == {(500.0, 300.0)}
    np.testing.assert_array_equal(np.stack([image for images, _ in calls for image in images]), scene["voxels"])


def test_the_logic_keeps_no_predictor(scene):
    """Each run asks the provider, so a predictor the session replaced (other weights, other device) is used next."""
    current = {"predictor": QuadrantPredictor()}
    logic = DeLightSAMMRMLLogic(lambda model: current["predictor"])
    logic.segmentSlice(scene["volume"], scene["sliceNode"], scene["segmentation"], scene["target"], "xray")
    first = current["predictor"]
    current["predictor"] = QuadrantPredictor()
    logic.segmentSlice(scene["volume"], scene["sliceNode"], scene["segmentation"], scene["target"], "xray")
    assert len(first.images) == 1 and len(current["predictor"].images) == 1
    released = weakref.ref(first)
    del first  # the provider no longer has it: nothing keeps it loaded, the logic least of all
    gc.collect()
    assert released() is None


def test_closing_the_scene_during_all_slices_stops_cleanly(scene):
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    logic.batchSize = 2
    seen = []

    def closeScene(done, total):
        seen.append(done)
        scene["mrml"].scene.Clear(0)

    result = logic.segmentAllSlices(
        scene["volume"], scene["sliceNode"], scene["segmentation"], scene["target"], "xray", progress=closeScene
    )
    assert seen == [2] and result.sceneClosed and result.cancelled and result.sliceCount == 2


def test_a_run_that_changes_nothing_leaves_no_undo_step(scene):
    class EmptyPredictor(QuadrantPredictor):
        @staticmethod
        def _mask(shape):
            return np.zeros(shape, bool)

    logic = DeLightSAMMRMLLogic(EmptyPredictor())
    result = logic.segmentSlice(scene["volume"], scene["sliceNode"], scene["segmentation"], scene["target"], "xray")
    assert result.voxelCount == 0 and not logic.editorLogic.CanUndo()


def test_slicer_5_8_without_the_editor_logic_is_told_to_use_the_effect(scene, monkeypatch):
    monkeypatch.delattr(slicer, "vtkSlicerSegmentEditorLogic")
    with pytest.raises(SegmentationError, match="needs Slicer 5.10 or later .* use the De-LightSAM effect"):
        DeLightSAMMRMLLogic(QuadrantPredictor()).segmentSlice(
            scene["volume"], scene["sliceNode"], scene["segmentation"], scene["target"], "xray"
        )
    assert scene["mrml"].segmentArray(scene["segmentation"], scene["target"], scene["volume"]).sum() == 0


def test_a_slice_between_the_voxels_of_a_coarser_segmentation_is_refused(scene):
    """A reference geometry with 3 mm slices where the volume has 1.5 mm: slice 2's voxels hold no centre of
    the segmentation's voxels, and the user is told how to fix the geometry instead of a silent 'done'."""
    mrml = scene["mrml"]
    coarse = IJK_TO_RAS.copy()
    coarse[2, 2] = 3.0
    coarse[2, 3] = -3 + 0.9  # centres at S = -2.1, 0.9, ...: the slice k = 2 (S within 0 +- 0.75) holds none
    reference = mrml.volume(np.zeros((3, SHAPE[1], SHAPE[2]), np.int16), coarse, name="coarse")
    scene["segmentation"].SetReferenceImageGeometryParameterFromVolumeNode(reference)
    with pytest.raises(SegmentationError, match="covers no voxel of 'segmentation'.*Specify geometry"):
        DeLightSAMMRMLLogic(QuadrantPredictor()).segmentSlice(
            scene["volume"], scene["sliceNode"], scene["segmentation"], scene["target"], "xray"
        )
