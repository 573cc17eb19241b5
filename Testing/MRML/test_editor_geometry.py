"""Writing in the Segment Editor's geometry: segmentations whose lattice is not the source volume's (oversampled,
from another volume), the editable area, the editable intensity range, overwrite modes, the voxels reported, and
one labelmap modification per batch. Expected voxels are computed here from first principles: a segmentation
voxel is written when its centre lies in a source voxel of the shown slice that the model marked."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import QuadrantPredictor, slicer, toArray, vtk
from vtk.util import numpy_support

from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, EditorLogicWriter, SegmentationOptions

SHAPE = (6, 9, 11)  # [k, j, i]
SOURCE = np.array([[-0.8, 0, 0, 10], [0, -0.6, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1.0]])  # flipped, anisotropic
ORIENTATIONS = ["Axial", "Sagittal", "Coronal"]


def _source(mrml, voxels=None):
    voxels = np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(np.int16) if voxels is None else voxels
    return mrml.volume(voxels, SOURCE, name="source")


def _oversample(segmentation, volume, factor):
    """What Slicer's 'Specify geometry' dialog does: the volume's geometry oversampled ``factor`` times, and the
    existing segments resampled into it."""
    logic = slicer.vtkSlicerSegmentationGeometryLogic()
    logic.SetInputSegmentationNode(segmentation)
    logic.SetSourceGeometryNode(volume)
    logic.SetOversamplingFactor(factor)
    logic.CalculateOutputGeometry()
    logic.SetReferenceImageGeometryInSegmentationNode()
    logic.ResampleLabelmapsInSegmentationNode()


def _lattice(segmentation):
    """(imageToWorld 4x4, extent) of the segmentation's reference geometry: the editor's modifier lattice."""
    geometry = segmentation.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    image = slicer.vtkOrientedImageData()
    assert slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, False)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return toArray(matrix), image.GetExtent()


def _expected_in_lattice(segmentation, sourceMarked: np.ndarray) -> dict:
    """{(i, j, k) of the lattice: 1} for every lattice voxel whose centre lies in a marked source voxel."""
    imageToWorld, extent = _lattice(segmentation)
    axes = [np.arange(extent[2 * a], extent[2 * a + 1] + 1) for a in range(3)]
    i, j, k = (grid.ravel() for grid in np.meshgrid(*axes, indexing="ij"))
    centres = imageToWorld @ np.stack([i, j, k, np.ones(i.size)])
    source = np.floor((np.linalg.inv(SOURCE) @ centres)[:3] + 0.5).astype(int)
    inside = np.all((source >= 0) & (source < np.array(SHAPE[::-1])[:, None]), axis=0)
    marked = np.zeros(i.size, bool)
    marked[inside] = sourceMarked[source[2, inside], source[1, inside], source[0, inside]] > 0
    return {(int(a), int(b), int(c)): 1 for a, b, c in zip(i[marked], j[marked], k[marked])}


def _segment_in_lattice(segmentation, segmentId) -> dict:
    """The segment's voxels as {(i, j, k): 1}, checking that they are stored in the reference lattice."""
    labelmap = slicer.vtkOrientedImageData()
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation, segmentId, labelmap, False
    )
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    extent = labelmap.GetExtent()
    if extent[1] < extent[0]:
        return {}
    np.testing.assert_allclose(toArray(matrix), _lattice(segmentation)[0], atol=1e-9)
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
        tuple(np.array(extent[1::2]) - extent[0::2] + 1)[::-1]
    )
    k, j, i = np.nonzero(
        values == segmentation.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    )  # layers are shared
    return {(int(a) + extent[0], int(b) + extent[2], int(c) + extent[4]): 1 for a, b, c in zip(i, j, k)}


def _quadrant_in_source(sliceNode, ijk) -> np.ndarray:
    """[k, j, i] source voxels of the slice through ``ijk`` that the view shows in its top-left quadrant."""
    from test_slice_logic import _expected_quadrant

    expected, _ = _expected_quadrant(SOURCE, sliceNode, ijk)
    return expected


def _view(mrml, orientation, ijk=(4, 5, 2)):
    sliceNode = mrml.sliceNode("Red", orientation)
    sliceNode.JumpSliceByCentering(*(SOURCE @ np.array([*ijk, 1.0]))[:3])
    return sliceNode


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("factor", [2, 3])
def test_oversampled_segmentation_keeps_its_resolution(mrml, orientation, factor):
    volume = _source(mrml)
    segmentation, (target, other) = mrml.segmentation(volume)
    _oversample(segmentation, volume, factor)
    sliceNode = _view(mrml, orientation)
    result = DeLightSAMMRMLLogic(QuadrantPredictor()).segmentSlice(volume, sliceNode, segmentation, target, "xray")
    expected = _expected_in_lattice(segmentation, _quadrant_in_source(sliceNode, (4, 5, 2)))
    assert len(expected) == factor**3 * _quadrant_in_source(sliceNode, (4, 5, 2)).sum()
    assert _segment_in_lattice(segmentation, target) == expected
    assert result.voxelsAdded == len(expected) and result.voxelsRemoved == 0
    assert _segment_in_lattice(segmentation, other) == {}


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_geometry_from_another_volume(mrml, orientation):
    """The reference volume is rotated, isotropic 0.7 mm and offset: the slice lands where its voxels' centres are."""
    volume = _source(mrml)
    # covers the source; the offsets keep lattice centres off source voxel boundaries (no ties to break)
    rotated = np.array([[0, 0.7, 0, 2.33], [0, 0, 0.7, 14.47], [0.7, 0, 0, -31.38], [0, 0, 0, 1.0]])
    reference = mrml.volume(np.zeros((12, 22, 20), np.int16), rotated, name="reference")
    segmentation, (target, _) = mrml.segmentation(reference)
    sliceNode = _view(mrml, orientation)
    result = DeLightSAMMRMLLogic(QuadrantPredictor()).segmentSlice(volume, sliceNode, segmentation, target, "xray")
    expected = _expected_in_lattice(segmentation, _quadrant_in_source(sliceNode, (4, 5, 2)))
    assert len(expected) > 20
    assert _segment_in_lattice(segmentation, target) == expected
    assert result.voxelCount == len(expected)


def _editor(logic, volume, segmentation, target):
    """The logic's own editor node (made on first use by a write), for changing the editor's settings."""
    logic._defaultWriter(volume, segmentation, target)
    return logic.editorLogic.GetSegmentEditorNode()


def _areaInAnotherSegment(mrml, factor, rows):
    """The source volume and a segmentation (oversampled ``factor`` times) whose second segment covers ``rows`` (a
    slice of j) of the shown slice k = 2: (volume, segmentation, target, other, area [k, j, i])."""
    volume = _source(mrml)
    segmentation, (target, other) = mrml.segmentation(volume)
    area = np.zeros(SHAPE, np.uint8)
    area[2, rows, :] = 1
    mrml.setSegment(segmentation, other, area, volume)
    if factor != 1:
        _oversample(segmentation, volume, factor)
    return volume, segmentation, target, other, area


@pytest.mark.parametrize("factor", [1, 2])
def test_editable_area_inside_another_segment(mrml, factor):
    volume, segmentation, target, other, area = _areaInAnotherSegment(mrml, factor, slice(1, 4))  # rows j = 1..3
    sliceNode = _view(mrml, "Axial")
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    editor = _editor(logic, volume, segmentation, target)
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID(other)
    result = logic.segmentSlice(volume, sliceNode, segmentation, target, "xray")
    quadrant = _quadrant_in_source(sliceNode, (4, 5, 2))
    expected = _expected_in_lattice(segmentation, quadrant & area)
    assert 0 < len(expected) < len(_expected_in_lattice(segmentation, quadrant))
    assert _segment_in_lattice(segmentation, target) == expected
    assert result.voxelsAdded == len(expected)
    remaining = _expected_in_lattice(segmentation, area & (1 - quadrant))  # the painted part moved to the target
    assert _segment_in_lattice(segmentation, other) == remaining


@pytest.mark.parametrize("factor", [1, 2])
def test_editable_intensity_range(mrml, factor):
    """Only voxels in the range are written, and the count says so; a range nothing is in writes nothing."""
    voxels = np.zeros(SHAPE, np.int16)
    voxels[:, 2:6, 2:8] = 1000  # an interior block: interpolation into an oversampled lattice keeps it exact
    volume = _source(mrml, voxels)
    segmentation, (target, _) = mrml.segmentation(volume)
    if factor != 1:
        _oversample(segmentation, volume, factor)
    sliceNode = _view(mrml, "Axial")
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    editor = _editor(logic, volume, segmentation, target)
    editor.SetSourceVolumeIntensityMask(True)
    editor.SetSourceVolumeIntensityMaskRange(500, 2000)
    result = logic.segmentSlice(volume, sliceNode, segmentation, target, "xray")
    quadrant = _quadrant_in_source(sliceNode, (4, 5, 2))
    expected = _expected_in_lattice(segmentation, quadrant & (voxels > 500))
    assert 0 < len(expected) < len(_expected_in_lattice(segmentation, quadrant))
    assert _segment_in_lattice(segmentation, target) == expected
    assert result.voxelsAdded == len(expected)

    editor.SetSourceVolumeIntensityMaskRange(5000, 6000)
    logic.editorLogic.Undo()
    result = logic.segmentSlice(volume, sliceNode, segmentation, target, "xray")
    assert result.voxelCount == 0 and _segment_in_lattice(segmentation, target) == {}


@pytest.mark.parametrize(
    "mode, hidden, erased",
    [
        ("OverwriteAllSegments", False, True),
        ("OverwriteAllSegments", True, True),
        ("OverwriteVisibleSegments", False, True),
        ("OverwriteVisibleSegments", True, False),
        ("OverwriteNone", False, False),
    ],
)
def test_overwrite_modes_in_an_oversampled_segmentation(mrml, mode, hidden, erased):
    volume = _source(mrml)
    segmentation, (target, other) = mrml.segmentation(volume)
    mrml.setSegment(segmentation, other, np.ones(SHAPE, np.uint8), volume)
    _oversample(segmentation, volume, 2)
    segmentation.GetDisplayNode().SetSegmentVisibility(other, not hidden)
    sliceNode = _view(mrml, "Coronal")
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    _editor(logic, volume, segmentation, target).SetOverwriteMode(getattr(slicer.vtkMRMLSegmentEditorNode, mode))
    logic.segmentSlice(volume, sliceNode, segmentation, target, "xray")
    written = _expected_in_lattice(segmentation, _quadrant_in_source(sliceNode, (4, 5, 2)))
    assert _segment_in_lattice(segmentation, target) == written
    everything = _expected_in_lattice(segmentation, np.ones(SHAPE, np.uint8))
    left = {voxel: 1 for voxel in everything if voxel not in written} if erased else everything
    assert _segment_in_lattice(segmentation, other) == left


def test_replace_in_an_oversampled_segmentation_counts_what_changed(mrml):
    volume = _source(mrml)
    segmentation, (target, _) = mrml.segmentation(volume)
    start = np.zeros(SHAPE, np.uint8)
    start[2, 6:9, :] = 1  # bottom rows of the shown slice: outside the predicted quadrant
    start[2, 0:2, 0:2] = 1  # inside it
    start[4, 1:3, 1:3] = 1  # another slice
    mrml.setSegment(segmentation, target, start, volume)
    _oversample(segmentation, volume, 2)
    sliceNode = _view(mrml, "Axial")
    quadrant = _quadrant_in_source(sliceNode, (4, 5, 2))
    result = DeLightSAMMRMLLogic(QuadrantPredictor()).segmentSlice(
        volume, sliceNode, segmentation, target, "xray", replace=True
    )
    after = start.copy()
    after[2] = quadrant[2]
    assert _segment_in_lattice(segmentation, target) == _expected_in_lattice(segmentation, after)
    assert result.voxelsAdded == 8 * int((quadrant & (1 - start)).sum())
    assert result.voxelsRemoved == 8 * int((start[2] & (1 - quadrant[2])).sum())


class RecordingWriter(EditorLogicWriter):
    """The editor-logic writer, counting its labelmap modifications."""

    def __init__(self, writer):
        super().__init__(writer.editorLogic, writer.segmentationNode, writer.segmentId)
        self.calls = []

    def add(self, labelmap):
        self.calls.append("add")
        super().add(labelmap)

    def remove(self, labelmap):
        self.calls.append("remove")
        super().remove(labelmap)


@pytest.mark.parametrize("replace, calls", [(False, ["add"] * 2), (True, ["remove", "add"] * 2)])
def test_all_slices_writes_one_labelmap_per_batch(mrml, replace, calls):
    volume = _source(mrml)
    segmentation, (target, _) = mrml.segmentation(volume)
    _oversample(segmentation, volume, 2)
    sliceNode = _view(mrml, "Axial")
    logic = DeLightSAMMRMLLogic(QuadrantPredictor())
    logic.batchSize = 4
    writer = RecordingWriter(logic._defaultWriter(volume, segmentation, target))
    options = SegmentationOptions(modality="xray", replace=replace)
    result = logic.segmentAllSlices(volume, sliceNode, segmentation, target, options, writer)
    assert writer.calls == calls and result.sliceCount == SHAPE[0]
    marked = np.zeros(SHAPE, np.uint8)
    for k in range(SHAPE[0]):
        marked |= _quadrant_in_source(sliceNode, (4, 5, k))
    assert _segment_in_lattice(segmentation, target) == _expected_in_lattice(segmentation, marked)
    logic.editorLogic.Undo()  # still one undo step for the whole run
    assert _segment_in_lattice(segmentation, target) == {}
