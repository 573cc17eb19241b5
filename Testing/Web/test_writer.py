"""The MRML logic's writer over trame-slicer's segment editor, without a browser: the editor's masking settings hold
for the model's writes, and a run is one undo step."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from conftest import write_volume


class EverythingPredictor:
    """A predictor whose mask covers the whole view: what gets written is decided by the editor's settings alone."""

    is_image_set = True

    def set_image(self, image, window=None):
        self.shape = np.asarray(image).shape[:2]

    def predict(self, *_args, **_kwargs):
        return SimpleNamespace(mask=np.ones(self.shape, bool))


@pytest.fixture
def editor_scene(tmp_path):
    import slicer
    from trame_slicer.core import SlicerApp
    from undo_stack import UndoStack

    from DeLightSAMLib.imageio import read_image
    from DeLightSAMWeb import loading

    app = SlicerApp()
    image = read_image(write_volume(tmp_path / "ct.nrrd"))
    volume = loading.volume_node(app.scene, image, "ct")
    editor = app.segmentation_editor
    editor.set_undo_stack(UndoStack(undo_limit=5))
    segmentation = editor.create_empty_segmentation_node()
    editor.set_active_segmentation(segmentation, volume)
    segmentId = editor.add_empty_segment(segment_name="target")
    otherId = editor.add_empty_segment(segment_name="other")
    editor.set_active_segment_id(segmentId)
    sliceLogic = slicer.vtkMRMLSliceLogic()
    sliceLogic.SetMRMLScene(app.scene)
    sliceNode = sliceLogic.AddSliceNode("Test")
    sliceNode.SetOrientation("Axial")
    sliceNode.SetSliceOffset(float(loading.ijk_to_ras(image)[2] @ [0, 0, 2, 1]))  # slice k = 2
    yield SimpleNamespace(
        app=app,
        image=image,
        volume=volume,
        editor=editor,
        segmentation=segmentation,
        segmentId=segmentId,
        otherId=otherId,
        sliceNode=sliceNode,
    )
    sliceLogic.SetMRMLScene(None)


def run_slice(scene) -> object:
    from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic
    from DeLightSAMWeb.writer import SegmentEditorWriter, UndoGroup

    logic = DeLightSAMMRMLLogic(EverythingPredictor())
    group = UndoGroup(scene.editor, "De-LightSAM").open()
    try:
        run = logic.startSlice(
            scene.volume,
            scene.sliceNode,
            scene.segmentation,
            scene.segmentId,
            "dermoscopy",
            writer=SegmentEditorWriter(scene.editor, scene.segmentId),
        )
        return logic.execute(run)
    finally:
        group.close()


def labels(scene, segmentId) -> np.ndarray:
    from DeLightSAMWeb import saving

    return saving.segment_labels(
        scene.app.scene, scene.app.segmentations_logic, scene.segmentation, scene.volume, [segmentId]
    )


def test_intensity_range_holds_for_the_model_and_the_run_is_one_undo_step(editor_scene):
    modifier = editor_scene.editor.active_segment_modifier
    modifier.set_source_volume_intensity_mask_enabled(True)
    modifier.set_source_volume_intensity_mask_range(200.0, 10000.0)
    stack = editor_scene.editor.undo_stack
    steps = stack.index()
    result = run_slice(editor_scene)
    assert stack.index() == steps + 1 and stack.undo_text() == "De-LightSAM"  # the whole run is one step

    written = labels(editor_scene, editor_scene.segmentId)
    expected = np.zeros_like(written)
    expected[2] = editor_scene.image.array[2] >= 200  # the bright block only: the range masks the rest
    np.testing.assert_array_equal(written, expected)
    assert result.voxelsAdded == int(expected.sum())

    stack.undo()
    assert not labels(editor_scene, editor_scene.segmentId).any()
    stack.redo()
    np.testing.assert_array_equal(labels(editor_scene, editor_scene.segmentId), expected)


def test_editable_area_and_overwrite_hold_for_the_model(editor_scene):
    from trame_slicer.segmentation import SegmentationEditableAreaMode, SegmentationOverwriteMode

    editor = editor_scene.editor
    other = np.zeros(editor_scene.image.array.shape, np.uint8)
    other[2, :, :40] = 1  # the left half of slice 2 belongs to "other"
    editor.active_segment_modifier.set_segment_labelmap(editor_scene.otherId, other)
    editor.set_editable_area(SegmentationEditableAreaMode.OUTSIDE_ALL_SEGMENTS)
    editor.set_overwrite_mode(SegmentationOverwriteMode.ALLOW_OVERLAP)
    run_slice(editor_scene)

    written = labels(editor_scene, editor_scene.segmentId)
    expected = np.zeros_like(written)
    expected[2, :, 40:] = 1  # only outside "other"
    np.testing.assert_array_equal(written, expected)
    np.testing.assert_array_equal(labels(editor_scene, editor_scene.otherId), other)
