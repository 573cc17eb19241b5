"""Slice extraction and write-back on real MRML scenes: exact voxels, orientations, undo, batches, errors."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import QuadrantPredictor, matrix, slicer, toArray, vtk
from vtk.util import numpy_support

from DeLightSAMSlicerLib.Geometry import SegmentationError, slicePlane, viewImage, voxelArray
from DeLightSAMSlicerLib.CleanUp import fillHoles, keepLargestComponent
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, SegmentationCancelled, SegmentationOptions

SHAPE = (6, 9, 11)  # [k, j, i]


def _affine(columns, origin):
    result = np.eye(4)
    result[:3, :3] = np.array(columns, dtype=float).T
    result[:3, 3] = origin
    return result


GEOMETRIES = {
    # LPS-like flips with anisotropic spacing, as DICOM volumes load
    "flipped-anisotropic": _affine([[-0.8, 0, 0], [0, -0.6, 0], [0, 0, 2.5]], [10, 20, -30]),
    # axes permuted: i runs superior, j right, k posterior
    "permuted": _affine([[0, 0, 0.7], [1.1, 0, 0], [0, -1.9, 0]], [-5, 3, 8]),
}
ORIENTATIONS = ["Axial", "Sagittal", "Coronal"]


def _volume(mrml, geometry, dtype=np.int16):
    voxels = np.arange(np.prod(SHAPE), dtype=np.int64).reshape(SHAPE).astype(dtype)
    return mrml.volume(voxels, GEOMETRIES[geometry]), voxels


def _center_on_voxel(sliceNode, ijkToRAS, ijk):
    ras = ijkToRAS @ np.array([*ijk, 1.0])
    sliceNode.JumpSliceByCentering(*ras[:3])


def _expected_quadrant(ijkToRAS, sliceNode, ijk):
    """Voxels of the slice through ``ijk`` that the view shows in its top-left quadrant, from first principles."""
    sliceToRAS = toArray(sliceNode.GetSliceToRAS())
    normal = sliceToRAS[:3, 2]
    axis = int(np.argmax([abs(np.dot(normal, ijkToRAS[:3, a])) for a in range(3)]))
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    inSlice = [i, j, k][axis] == ijk[axis]
    points = np.stack([i[inSlice], j[inSlice], k[inSlice], np.ones(inSlice.sum())])
    ras = (ijkToRAS @ points)[:3]
    x = np.round(sliceToRAS[:3, 0] @ ras, 6)
    y = np.round(sliceToRAS[:3, 1] @ ras, 6)
    xs, ys = np.unique(x), np.unique(-y)
    col, row = np.searchsorted(xs, x), np.searchsorted(ys, -y)  # screen column and row of each voxel
    expected = np.zeros(SHAPE, np.uint8)
    chosen = (row < len(ys) / 2) & (col < len(xs) / 2)
    expected[k[inSlice][chosen], j[inSlice][chosen], i[inSlice][chosen]] = 1
    return expected, (row, col, (k[inSlice], j[inSlice], i[inSlice]), len(ys), len(xs))


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_view_image_is_what_the_view_shows(mrml, geometry, orientation):
    volume, voxels = _volume(mrml, geometry)
    sliceNode = mrml.sliceNode("Red", orientation)
    target = (3, 5, 2)
    _center_on_voxel(sliceNode, GEOMETRIES[geometry], target)
    plane = slicePlane(volume, sliceNode)
    assert plane.aligned
    image = viewImage(voxelArray(volume), plane)
    _, (row, col, (kk, jj, ii), rows, cols) = _expected_quadrant(GEOMETRIES[geometry], sliceNode, target)
    assert image.shape == (rows, cols)
    np.testing.assert_array_equal(image[row, col], voxels[kk, jj, ii])


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_mask_lands_on_exactly_the_voxels_shown(mrml, geometry, orientation):
    volume, _ = _volume(mrml, geometry)
    segmentation, (target, other) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", orientation)
    centre = (2, 7, 4)
    _center_on_voxel(sliceNode, GEOMETRIES[geometry], centre)
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    result = logic.segmentSlice(volume, sliceNode, segmentation, target, "xray")
    expected, _ = _expected_quadrant(GEOMETRIES[geometry], sliceNode, centre)
    written = mrml.segmentArray(segmentation, target, volume)
    np.testing.assert_array_equal(written, expected)
    assert result.voxelCount == expected.sum() > 0
    assert mrml.segmentArray(segmentation, other, volume).sum() == 0


def _prefilled(mrml):
    volume, voxels = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, other) = mrml.segmentation(volume)
    start = np.zeros(SHAPE, np.uint8)
    start[2] = 1  # the whole slice k = 2 (the one the view shows) ...
    start[2, 8, 10] = 0  # ... but for one voxel of the other segment: segments do not overlap
    start[4, 1:3, 1:3] = 1  # something on another slice
    otherStart = np.zeros(SHAPE, np.uint8)
    otherStart[0, :, :] = 1
    otherStart[2, 8, 10] = 1  # bottom-right of the axial view for this geometry: not in the predicted quadrant
    mrml.setSegment(segmentation, target, start, volume)
    mrml.setSegment(segmentation, other, otherStart, volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    _center_on_voxel(sliceNode, GEOMETRIES["flipped-anisotropic"], (5, 5, 2))
    return volume, segmentation, target, other, sliceNode, start, otherStart


def test_add_keeps_the_slice_and_replace_sets_it_and_undo_restores(mrml):
    volume, segmentation, target, other, sliceNode, start, otherStart = _prefilled(mrml)
    expected, _ = _expected_quadrant(GEOMETRIES["flipped-anisotropic"], sliceNode, (5, 5, 2))
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())

    logic.segmentSlice(volume, sliceNode, segmentation, target, "xray", replace=False)
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), start | expected)

    logic.segmentSlice(volume, sliceNode, segmentation, target, "xray", replace=True)
    after = start.copy()
    after[2] = expected[2]
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), after)
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, other, volume), otherStart)

    logic.editorLogic.Undo()
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), start | expected)
    logic.editorLogic.Undo()
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), start)


class EmptyPredictor(QuadrantPredictor):
    @staticmethod
    def _mask(shape):
        return np.zeros(shape, bool)


def test_empty_prediction_clears_the_slice_only_when_replacing(mrml):
    volume, segmentation, target, _, sliceNode, start, _ = _prefilled(mrml)
    logic = DeLightSAMMRMLLogic(EmptyPredictor())
    logic.segmentSlice(volume, sliceNode, segmentation, target, "xray", replace=False)
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), start)
    logic.segmentSlice(volume, sliceNode, segmentation, target, "xray", replace=True)
    cleared = start.copy()
    cleared[2] = 0
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), cleared)


def test_editor_overwrite_setting_is_honoured(mrml):
    volume, segmentation, target, other, sliceNode, _, _ = _prefilled(mrml)
    everywhere = np.ones(SHAPE, np.uint8)
    mrml.setSegment(segmentation, other, everywhere, volume)
    expected, _ = _expected_quadrant(GEOMETRIES["flipped-anisotropic"], sliceNode, (5, 5, 2))
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())

    logic.segmentSlice(volume, sliceNode, segmentation, target, "xray")  # editor default: overwrite all
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, other, volume), everywhere & ~expected.astype(bool))

    logic.editorLogic.Undo()
    logic.editorLogic.GetSegmentEditorNode().SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    logic.segmentSlice(volume, sliceNode, segmentation, target, "xray")
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, other, volume), everywhere)


def test_oblique_view_is_resampled_and_written_as_a_one_voxel_plane(mrml):
    shape = (10, 24, 28)
    ijkToRAS = GEOMETRIES["flipped-anisotropic"].copy()
    ijkToRAS[:3, 2] = [0, 0, 0.9]
    voxels = np.random.default_rng(0).integers(0, 1000, shape).astype(np.int16)
    volume = mrml.volume(voxels, ijkToRAS)
    segmentation, (target, other) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    angle = np.deg2rad(20)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    centre = ijkToRAS @ np.array([14, 12, 5, 1.0])
    sliceToRAS = np.eye(4)
    sliceToRAS[:3, :3] = rotation
    sliceToRAS[:3, 3] = centre[:3]
    sliceNode.GetSliceToRAS().DeepCopy(matrix(sliceToRAS))
    sliceNode.UpdateMatrices()

    predictor = QuadrantPredictor()
    logic = DeLightSAMMRMLLogic(predictor)
    result = logic.segmentSlice(volume, sliceNode, segmentation, target, "ultrasound")
    written = mrml.segmentArray(segmentation, target, volume)
    k, j, i = np.nonzero(written)
    assert len(k) == result.voxelCount > 50

    ras = (ijkToRAS @ np.stack([i, j, k, np.ones(len(k))]))[:3]
    inSlice = np.linalg.inv(sliceToRAS)[:3] @ np.vstack([ras, np.ones(len(k))])
    halfThickness = 0.5 * max(abs(rotation[:, 2] @ ijkToRAS[:3, a]) for a in range(3))
    assert np.abs(inSlice[2]).max() <= halfThickness + 1e-6  # every voxel lies on the plane
    columns = set(zip(i.tolist(), j.tolist()))  # the plane is nearly axial: one voxel per (i, j) column
    assert len(columns) == len(k)

    corners = np.array(
        [[a, b, c, 1.0] for a in (-0.5, shape[2] - 0.5) for b in (-0.5, shape[1] - 0.5) for c in (-0.5, shape[0] - 0.5)]
    )
    footprint = (np.linalg.inv(sliceToRAS) @ ijkToRAS @ corners.T)[:2]
    pixel = 0.6
    xMid = footprint[0].min() + (footprint[0].max() - footprint[0].min()) / 2
    yMid = footprint[1].max() - (footprint[1].max() - footprint[1].min()) / 2
    assert inSlice[0].max() <= xMid + pixel and inSlice[1].min() >= yMid - pixel  # top-left quadrant only
    image = predictor.images[-1]
    assert image.shape[:2] == (
        int(np.ceil((footprint[1].max() - footprint[1].min()) / pixel)),
        int(np.ceil((footprint[0].max() - footprint[0].min()) / pixel)),
    )
    assert mrml.segmentArray(segmentation, other, volume).sum() == 0


def test_rgb_single_slice_image_with_the_reference_model(mrml, reference_image_path, reference_model):
    import SimpleITK as sitk

    from DeLightSAMLib.predictor import Predictor

    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_image_path)))  # (rows, cols, 3)
    lpsToRAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # how Slicer loads a PNG: i to the left, j to posterior
    volume = mrml.volume(rgb[None], lpsToRAS, name="photo")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    sliceNode.JumpSliceByCentering(*(lpsToRAS @ np.array([512, 512, 0, 1.0]))[:3])
    predictor = Predictor(reference_model, device="cpu")
    logic = DeLightSAMMRMLLogic(predictor)
    image, plane = logic.viewImage(volume, sliceNode)
    np.testing.assert_array_equal(image, rgb)  # the photo appears upright, as in Slicer
    logic.segmentSlice(volume, sliceNode, segmentation, target, "dermoscopy")
    predictor.set_image(rgb)
    expected = predictor.predict("dermoscopy").mask
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume)[0], expected)


def test_scalar_slices_go_through_the_display_window(mrml):
    volume, voxels = _volume(mrml, "flipped-anisotropic")
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(100, 250)  # window 100 centred on 250
    sliceNode = mrml.sliceNode("Red", "Axial")
    _center_on_voxel(sliceNode, GEOMETRIES["flipped-anisotropic"], (0, 0, 2))
    image, plane = DeLightSAMMRMLLogic(QuadrantPredictor()).viewImage(volume, sliceNode)
    raw = viewImage(voxels, plane)
    expected = np.clip(np.rint((raw.astype(float) - 200) * 255 / 100), 0, 255)
    np.testing.assert_array_equal(image[..., 0], expected)
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_all_slices_writes_every_slice_as_one_undo_step(mrml):
    volume, _ = _volume(mrml, "permuted")
    voxelArray(volume)[3] = 7  # a blank slice k = 3
    volume.GetImageData().Modified()
    segmentation, (target, other) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Coronal")  # k runs posterior: coronal slices are k slices
    _center_on_voxel(sliceNode, GEOMETRIES["permuted"], (0, 0, 0))
    predictor = QuadrantPredictor()
    logic = DeLightSAMMRMLLogic(predictor)
    logic.batchSize = 4
    seen = []
    result = logic.segmentAllSlices(
        volume, sliceNode, segmentation, target, "xray", progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(4, 6), (6, 6)] and result.sliceCount == 6 and not result.cancelled
    assert (predictor.images[3] == predictor.images[3][0, 0]).all()  # the blank slice, as the view shows it
    written = mrml.segmentArray(segmentation, target, volume)
    for k in range(6):
        expected, _ = _expected_quadrant(GEOMETRIES["permuted"], sliceNode, (0, 0, k))
        np.testing.assert_array_equal(written[k], expected[k])
    logic.editorLogic.Undo()
    assert mrml.segmentArray(segmentation, target, volume).sum() == 0


def test_all_slices_does_not_need_the_view_inside_the_volume(mrml):
    volume, _ = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    sliceNode.SetSliceOffset(1000)  # only the direction of the view matters for 'All slices'
    result = DeLightSAMMRMLLogic(QuadrantPredictor()).segmentAllSlices(volume, sliceNode, segmentation, target, "xray")
    assert result.sliceCount == SHAPE[0]
    assert all(mrml.segmentArray(segmentation, target, volume)[k].sum() == 30 for k in range(SHAPE[0]))


def test_cancelled_batch_keeps_what_was_done(mrml):
    volume, _ = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    _center_on_voxel(sliceNode, GEOMETRIES["flipped-anisotropic"], (0, 0, 0))
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    logic.batchSize = 2

    def cancelAfterFirstBatch(done, total):
        raise SegmentationCancelled()

    result = logic.segmentAllSlices(volume, sliceNode, segmentation, target, "xray", progress=cancelAfterFirstBatch)
    assert result.cancelled and result.sliceCount == 2
    written = mrml.segmentArray(segmentation, target, volume)
    assert written[:2].sum() > 0 and written[2:].sum() == 0


def test_all_slices_refuses_an_oblique_view(mrml):
    volume, _ = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    _center_on_voxel(sliceNode, GEOMETRIES["flipped-anisotropic"], (5, 5, 3))
    tilted = toArray(sliceNode.GetSliceToRAS())
    c, s = np.cos(0.3), np.sin(0.3)
    tilted[:3, :3] = tilted[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    sliceNode.GetSliceToRAS().DeepCopy(matrix(tilted))
    sliceNode.UpdateMatrices()
    with pytest.raises(SegmentationError, match="not aligned with the axes"):
        DeLightSAMMRMLLogic(QuadrantPredictor()).segmentAllSlices(volume, sliceNode, segmentation, target, "xray")


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-volume", "no source volume"),
        ("four-d", "5 values per voxel"),
        ("empty", "has no voxels"),
        ("outside", "does not show any part"),
        ("no-segment", "segment 'nope' is not in"),
    ],
)
def test_errors_leave_the_segmentation_untouched(mrml, case, message):
    volume, _ = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    start = np.zeros(SHAPE, np.uint8)
    start[1, 2:5, 3:7] = 1
    mrml.setSegment(segmentation, target, start, volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    _center_on_voxel(sliceNode, GEOMETRIES["flipped-anisotropic"], (1, 1, 1))
    source, segmentId = volume, target
    if case == "no-volume":
        source = None
    elif case == "four-d":
        source = mrml.volume(np.zeros(SHAPE + (5,), np.float32), GEOMETRIES["flipped-anisotropic"], name="dwi")
    elif case == "empty":
        source = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "blank")
    elif case == "outside":
        sliceNode.SetSliceOffset(sliceNode.GetSliceOffset() + 500)
    elif case == "no-segment":
        segmentId = "nope"
    with pytest.raises(SegmentationError, match=message):
        DeLightSAMMRMLLogic(QuadrantPredictor()).segmentSlice(source, sliceNode, segmentation, segmentId, "xray")
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), start)


def test_post_processing_keeps_the_largest_region_and_fills_holes():
    mask = np.zeros((9, 9), bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a hole
    mask[7:9, 7:9] = True  # a smaller island
    assert keepLargestComponent(mask).sum() == 24 and not keepLargestComponent(mask)[8, 8]
    filled = fillHoles(mask)
    assert filled[3, 3] and filled.sum() == mask.sum() + 1
    both = SegmentationOptions(keepLargestComponent=True, fillHoles=True).cleanUp(mask)
    assert both.sum() == 25
    assert not keepLargestComponent(np.zeros((3, 3), bool)).any()


@pytest.mark.parametrize("segmentationTransformed", [True, False])
def test_volume_under_a_linear_transform(mrml, segmentationTransformed):
    """The view shows the transformed volume: the slice and the written voxels follow the transform."""
    volume, _ = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    rotation = np.eye(4)
    rotation[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 degrees about S
    rotation[:3, 3] = [5, -7, 3]
    transform.SetMatrixTransformToParent(matrix(rotation))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    if segmentationTransformed:
        segmentation.SetAndObserveTransformNodeID(transform.GetID())
    else:  # the segmentation's geometry follows the transformed volume, as when the editor first sets it
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    worldIJKToRAS = rotation @ GEOMETRIES["flipped-anisotropic"]
    _center_on_voxel(sliceNode, worldIJKToRAS, (4, 4, 3))
    DeLightSAMMRMLLogic(QuadrantPredictor()).segmentSlice(volume, sliceNode, segmentation, target, "xray")
    expected, _ = _expected_quadrant(worldIJKToRAS, sliceNode, (4, 4, 3))
    if segmentationTransformed:  # same grid as the volume: voxel for voxel
        np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), expected)
    else:  # the segment lives in world space: its voxels are where the transformed slice is
        ijk = np.argwhere(expected)[:, ::-1]
        world = (worldIJKToRAS @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T
        labelmap = slicer.vtkOrientedImageData()
        assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            segmentation, target, labelmap, False
        )
        imageToWorld = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(imageToWorld)
        inSegment = np.rint((np.linalg.inv(toArray(imageToWorld)) @ np.c_[world, np.ones(len(world))].T)[:3].T).astype(
            int
        )
        values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
            tuple(np.array(labelmap.GetExtent()[1::2]) - labelmap.GetExtent()[0::2] + 1)[::-1]
        )
        low = np.array(labelmap.GetExtent()[0::2])
        assert values.sum() == len(ijk)
        assert all(values[tuple((p - low)[::-1])] for p in inSegment)
