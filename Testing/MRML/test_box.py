"""Box mode on real MRML scenes: a rectangle drawn on a view (two corners in RAS, as Slicer's xyToRas gives them)
becomes a box in the pixels of the image the model sees, for axial, sagittal, coronal and oblique views of flipped,
anisotropic and permuted volumes; it is written through the same writer as Apply (undo, editable area, overwrite);
"Box from segment" boxes the segment's pixels on the view; the box model's encoding is reused for an unchanged image.

Expected values come from elsewhere than the code under test: pixel positions from the view image of the volume's
own RAS coordinates (each pixel shows where it is), written voxels from the corners' position on the screen."""

from __future__ import annotations

import types

import numpy as np
import pytest

from conftest import QuadrantPredictor, matrix, slicer, toArray
from test_editor_geometry import SOURCE, _areaInAnotherSegment, _expected_in_lattice, _oversample, _segment_in_lattice
from test_slice_logic import GEOMETRIES, SHAPE, _expected_quadrant

from DeLightSAMSlicerLib.Geometry import SegmentationError, slicePlane, viewBox, viewImage, voxelArray
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, SegmentationOptions
from DeLightSAMSlicerLib.Models import AUTOMATIC, BOX, ReusedEncoding

ORIENTATIONS = ["Axial", "Sagittal", "Coronal", "Oblique"]
CENTRE = (5, 4, 2)  # the voxel (i, j, k) the view is centred on


class BoxAsMask:
    """Stand-in box model: the mask is the pixels whose centre lies in the box; it records the boxes and counts the
    images it encodes."""

    description = "box stand-in"

    def __init__(self):
        self.boxes = []
        self.encoded = 0
        self.is_image_set = False

    def set_image(self, image, window=None):
        self.encoded += 1
        self.shape = np.asarray(image).shape[:2]
        self.is_image_set = True

    def predict(self, boxes, threshold=0.5, **kwargs):
        x0, y0, x1, y1 = np.asarray(boxes, float).reshape(4)
        self.boxes.append((x0, y0, x1, y1))
        rows, cols = np.mgrid[0 : self.shape[0], 0 : self.shape[1]] + 0.5
        mask = (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)
        return types.SimpleNamespace(mask=mask, masks=mask[None])


def _view(mrml, orientation, ijkToRAS, centre=CENTRE):
    """A view 20 x 16 mm on 200 x 160 screen pixels centred on voxel ``centre``; 'Oblique' is the axial view tilted
    20 degrees about R and turned 30 degrees in plane."""
    sliceNode = mrml.sliceNode("Red", "Axial" if orientation == "Oblique" else orientation)
    sliceNode.SetFieldOfView(20, 16, 1)
    sliceNode.SetDimensions(200, 160, 1)
    sliceNode.JumpSliceByCentering(*(ijkToRAS @ np.array([*centre, 1.0]))[:3])
    if orientation == "Oblique":
        tilt, turn = np.deg2rad(20), np.deg2rad(30)
        aboutR = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
        inPlane = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
        sliceToRAS = toArray(sliceNode.GetSliceToRAS())
        sliceToRAS[:3, :3] = aboutR @ sliceToRAS[:3, :3] @ inPlane
        sliceNode.GetSliceToRAS().DeepCopy(matrix(sliceToRAS))
    sliceNode.UpdateMatrices()
    return sliceNode


def _xyToRAS(sliceNode, xy):
    """What Slicer's effects do with a mouse position (qSlicerSegmentEditorAbstractEffect::xyToRas): XYToRAS at z 0."""
    return (toArray(sliceNode.GetXYToRAS()) @ np.array([xy[0], xy[1], 0.0, 1.0]))[:3]


def _pixelOfRAS(plane, ijkToRAS, ras):
    """The view pixel position of a RAS point, from the view image of the volume's RAS coordinates: fit the affine
    map from pixel centres (col + 0.5, row + 0.5) to the RAS they show, and invert it at ``ras``."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in (SHAPE[2], SHAPE[1], SHAPE[0])], indexing="ij")
    coordinates = np.moveaxis(np.tensordot(ijkToRAS[:3, :3], np.stack([i, j, k]), axes=1), 0, -1) + ijkToRAS[:3, 3]
    image = viewImage(np.ascontiguousarray(coordinates.transpose(2, 1, 0, 3)), plane)  # [k, j, i, 3] -> (rows, cols, 3)
    rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    usable = np.isfinite(image).all(axis=-1)
    if not plane.aligned:  # trilinear samples are linear only a voxel away from the border (clamping there)
        for _ in range(4):
            usable[1:-1, 1:-1] &= usable[:-2, 1:-1] & usable[2:, 1:-1] & usable[1:-1, :-2] & usable[1:-1, 2:]
            usable[[0, -1], :] = usable[:, [0, -1]] = False
    design = np.stack([cols[usable] + 0.5, rows[usable] + 0.5, np.ones(usable.sum())], axis=1)
    affine, *_ = np.linalg.lstsq(design, image[usable], rcond=None)  # (3, 3): (x, y, 1) -> RAS
    residual = design @ affine - image[usable]
    assert np.abs(residual).max() < 1e-9
    position, *_ = np.linalg.lstsq(affine[:2].T, np.asarray(ras) - affine[2], rcond=None)
    return position


def _volume(mrml, geometry):
    voxels = (np.arange(np.prod(SHAPE)) % 97).reshape(SHAPE).astype(np.int16)
    return mrml.volume(voxels, GEOMETRIES[geometry])


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize(
    "corners",
    [((70, 55), (131.5, 97)), ((150, 30), (88, 122)), ((-400, 300), (110, 90))],
    ids=["inside", "drawn-backwards", "clipped"],
)
def test_box_corners_map_to_the_view_pixels_they_show(mrml, geometry, orientation, corners):
    volume = _volume(mrml, geometry)
    sliceNode = _view(mrml, orientation, GEOMETRIES[geometry])
    plane = slicePlane(volume, sliceNode)
    assert plane.aligned == (orientation != "Oblique")
    ras = [_xyToRAS(sliceNode, xy) for xy in corners]
    expected = np.array([_pixelOfRAS(plane, GEOMETRIES[geometry], point) for point in ras])
    low, high = expected.min(axis=0), expected.max(axis=0)
    rows, cols = plane.shape
    expectedBox = [max(low[0], 0), max(low[1], 0), min(high[0], cols), min(high[1], rows)]
    assert expectedBox[2] > expectedBox[0] + 1 and expectedBox[3] > expectedBox[1] + 1
    np.testing.assert_allclose(viewBox(plane, ras), expectedBox, atol=1e-6)


def test_axial_box_by_hand(mrml):
    """Flipped, anisotropic axial view: i runs rightwards (R falls), j downwards (A falls), 0.8 x 0.6 mm voxels."""
    volume = _volume(mrml, "flipped-anisotropic")
    sliceNode = _view(mrml, "Axial", GEOMETRIES["flipped-anisotropic"])
    plane = slicePlane(volume, sliceNode)
    ijkToRAS = GEOMETRIES["flipped-anisotropic"]
    corners = [
        ijkToRAS @ np.array([2.1, 3.4, 2, 1.0]),
        ijkToRAS @ np.array([6.3, 1.2, 2, 1.0]),
    ]  # voxel centres at integers
    np.testing.assert_allclose(viewBox(plane, [c[:3] for c in corners]), [2.6, 1.7, 6.8, 3.9], atol=1e-9)


def _rectangleVoxels(sliceNode, ijkToRAS, corners):
    """[k, j, i] voxels of the shown slice (through CENTRE) whose centre lies, on the screen, in the rectangle spanned
    by ``corners`` (screen XY): what a box drawn there covers."""
    rasToXY = np.linalg.inv(toArray(sliceNode.GetXYToRAS()))
    _, (row, col, (kk, jj, ii), _, _) = _expected_quadrant(ijkToRAS, sliceNode, CENTRE)
    xy = rasToXY @ ijkToRAS @ np.stack([ii, jj, kk, np.ones(len(ii))])
    (x0, y0), (x1, y1) = np.min(corners, axis=0), np.max(corners, axis=0)
    inside = (xy[0] >= x0) & (xy[0] <= x1) & (xy[1] >= y0) & (xy[1] <= y1)
    expected = np.zeros(SHAPE, np.uint8)
    expected[kk[inside], jj[inside], ii[inside]] = 1
    return expected


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("orientation", ORIENTATIONS[:3])
def test_box_mode_writes_the_voxels_inside_the_drawn_rectangle_and_undoes(mrml, geometry, orientation):
    volume = _volume(mrml, geometry)
    segmentation, (target, other) = mrml.segmentation(volume)
    sliceNode = _view(mrml, orientation, GEOMETRIES[geometry])
    corners = [(71.3, 58.9), (128.2, 103.7)]
    logic = DeLightSAMMRMLLogic(BoxAsMask())
    result = logic.segmentBox(
        volume, sliceNode, segmentation, target, SegmentationOptions(), [_xyToRAS(sliceNode, xy) for xy in corners]
    )
    expected = _rectangleVoxels(sliceNode, GEOMETRIES[geometry], corners)
    assert 4 <= expected.sum() < expected.size
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), expected)
    assert result.voxelsAdded == expected.sum() and result.voxelsRemoved == 0
    assert result.description.startswith("box of ") and mrml.segmentArray(segmentation, other, volume).sum() == 0
    logic.editorLogic.Undo()
    assert mrml.segmentArray(segmentation, target, volume).sum() == 0


def test_oblique_box_writes_the_plane_inside_the_rectangle(mrml):
    volume = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = _view(mrml, "Oblique", GEOMETRIES["flipped-anisotropic"])
    corners = [(80, 60), (125, 100)]
    result = DeLightSAMMRMLLogic(BoxAsMask()).segmentBox(
        volume, sliceNode, segmentation, target, SegmentationOptions(), [_xyToRAS(sliceNode, xy) for xy in corners]
    )
    k, j, i = np.nonzero(mrml.segmentArray(segmentation, target, volume))
    assert len(k) == result.voxelsAdded > 5
    rasToXY = np.linalg.inv(toArray(sliceNode.GetXYToRAS()))
    xy = rasToXY @ GEOMETRIES["flipped-anisotropic"] @ np.stack([i, j, k, np.ones(len(k))])
    pixelInScreen = 10 * 0.6  # one view pixel (the finest spacing, 0.6 mm) in screen pixels (0.1 mm each)
    slack = pixelInScreen + 10 * 0.5 * 2.5  # and half the thickest voxel: the written plane is one voxel thick
    assert xy[0].min() >= 80 - slack and xy[0].max() <= 125 + slack
    assert xy[1].min() >= 60 - slack and xy[1].max() <= 100 + slack
    assert np.abs(xy[2]).max() <= 0.5 * 2.5 / 1.0 + 1e-6  # on the slice plane (screen z in mm: XYToRAS keeps z)


CORNERS = [(71.3, 58.9), (128.2, 103.7)]  # on the axial view of SOURCE: voxels i = 2..8, j = 1..7 of slice k = 2


def _source(mrml):
    return mrml.volume(np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(np.int16), SOURCE, name="source")


@pytest.mark.parametrize("factor", [1, 2])
def test_box_mode_honours_the_editable_area_and_overwrite(mrml, factor):
    """The same writer as Apply: in an oversampled segmentation too, only the editable area (inside another segment)
    is written, and what is written is taken from the other segment."""
    volume, segmentation, target, other, area = _areaInAnotherSegment(mrml, factor, slice(1, 5))  # rows j = 1..4
    sliceNode = _view(mrml, "Axial", SOURCE)
    logic = DeLightSAMMRMLLogic(BoxAsMask())
    logic._defaultWriter(volume, segmentation, target)
    editor = logic.editorLogic.GetSegmentEditorNode()
    editor.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    editor.SetMaskSegmentID(other)
    result = logic.segmentBox(
        volume, sliceNode, segmentation, target, "xray", [_xyToRAS(sliceNode, xy) for xy in CORNERS]
    )
    box = _rectangleVoxels(sliceNode, SOURCE, CORNERS)
    assert box[2, 1:8, 2:9].all() and box.sum() == 7 * 7 and 0 < (box & area).sum() < box.sum()
    assert _segment_in_lattice(segmentation, target) == _expected_in_lattice(segmentation, box & area)
    assert _segment_in_lattice(segmentation, other) == _expected_in_lattice(segmentation, area & (1 - box))
    assert result.voxelsAdded == factor**3 * (box & area).sum()
    logic.editorLogic.Undo()
    assert _segment_in_lattice(segmentation, target) == {}


@pytest.mark.parametrize("factor", [1, 2])
def test_box_mode_replace_sets_the_slice_to_the_box(mrml, factor):
    volume = _source(mrml)
    segmentation, (target, _) = mrml.segmentation(volume)
    start = np.zeros(SHAPE, np.uint8)
    start[2, 0, :] = 1  # a row of the shown slice above the box
    start[2, 3:5, 0:2] = 1  # left of the box
    start[2, 4:6, 4:6] = 1  # inside it
    start[4, 1:3, 1:3] = 1  # another slice
    mrml.setSegment(segmentation, target, start, volume)
    if factor != 1:
        _oversample(segmentation, volume, factor)
    sliceNode = _view(mrml, "Axial", SOURCE)
    logic = DeLightSAMMRMLLogic(BoxAsMask())
    result = logic.segmentBox(
        volume,
        sliceNode,
        segmentation,
        target,
        SegmentationOptions(replace=True),
        [_xyToRAS(sliceNode, xy) for xy in CORNERS],
    )
    box = _rectangleVoxels(sliceNode, SOURCE, CORNERS)
    after = start.copy()
    after[2] = box[2]
    assert _segment_in_lattice(segmentation, target) == _expected_in_lattice(segmentation, after)
    assert result.voxelsRemoved == factor**3 * (start[2] & (1 - box[2])).sum()
    assert result.voxelsAdded == factor**3 * (box[2] & (1 - start[2])).sum()
    logic.editorLogic.Undo()
    assert _segment_in_lattice(segmentation, target) == _expected_in_lattice(segmentation, start)


@pytest.mark.parametrize("orientation", ORIENTATIONS[:3])
@pytest.mark.parametrize("factor", [1, 2])
def test_box_from_segment_boxes_the_segment_on_this_slice_and_replaces_it(mrml, orientation, factor):
    volume = _source(mrml)
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = _view(mrml, orientation, SOURCE)
    _, (row, col, (kk, jj, ii), _, _) = _expected_quadrant(SOURCE, sliceNode, CENTRE)  # every voxel of the slice
    blob = [3, 4, 9, 15, 16, 22]  # some voxels of the slice (by their place in the list): an irregular shape
    start = np.zeros(SHAPE, np.uint8)
    start[kk[blob], jj[blob], ii[blob]] = 1
    elsewhere = np.zeros(SHAPE, np.uint8)
    elsewhere[np.where(np.arange(SHAPE[0]) != CENTRE[2])[0][0]] = 1  # a whole other slice, for axial views
    if orientation == "Axial":
        start |= elsewhere
    mrml.setSegment(segmentation, target, start, volume)
    if factor != 1:
        _oversample(segmentation, volume, factor)
    predictor = BoxAsMask()
    logic = DeLightSAMMRMLLogic(predictor)
    logic.segmentBoxFromSegment(volume, sliceNode, segmentation, target, SegmentationOptions(replace=False))
    expectedBox = (col[blob].min(), row[blob].min(), col[blob].max() + 1, row[blob].max() + 1)
    assert predictor.boxes == [expectedBox]
    inBox = (col >= expectedBox[0]) & (col < expectedBox[2]) & (row >= expectedBox[1]) & (row < expectedBox[3])
    after = start.copy()
    after[kk, jj, ii] = inBox  # the slice became the box's mask: replaced, whatever the option said
    assert _segment_in_lattice(segmentation, target) == _expected_in_lattice(segmentation, after)


def test_box_from_segment_on_an_oblique_view_boxes_what_box_mode_wrote(mrml):
    volume = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = _view(mrml, "Oblique", GEOMETRIES["flipped-anisotropic"])
    predictor = BoxAsMask()
    logic = DeLightSAMMRMLLogic(predictor)
    corners = [_xyToRAS(sliceNode, xy) for xy in [(80, 60), (125, 100)]]
    logic.segmentBox(volume, sliceNode, segmentation, target, SegmentationOptions(), corners)
    logic.segmentBoxFromSegment(volume, sliceNode, segmentation, target, SegmentationOptions())
    drawn, fromSegment = np.array(predictor.boxes)
    voxelInPixels = 2.5 / 0.6  # the thickest voxel in view pixels: the written plane's voxels are that coarse
    assert np.all(np.abs(fromSegment - drawn) <= voxelInPixels)
    assert fromSegment[2] - fromSegment[0] > 0.5 * (drawn[2] - drawn[0])


def test_several_boxes_on_one_slice_encode_it_once(mrml):
    volume = _volume(mrml, "permuted")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = _view(mrml, "Coronal", GEOMETRIES["permuted"])
    standIn = BoxAsMask()
    logic = DeLightSAMMRMLLogic(ReusedEncoding(standIn))

    def box(*corners):
        logic.segmentBox(volume, sliceNode, segmentation, target, "xray", [_xyToRAS(sliceNode, xy) for xy in corners])
        return standIn.encoded

    assert box((80, 60), (120, 100)) == 1
    assert box((90, 70), (110, 90)) == 1  # same slice, same window: the encoding is reused
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(50, 40)
    assert box((90, 70), (110, 90)) == 2  # what the model sees changed
    sliceNode.SetSliceOffset(sliceNode.GetSliceOffset() + 1.9)  # the next slice: k runs along -A, 1.9 mm apart
    assert box((90, 70), (110, 90)) == 3
    assert box((85, 65), (115, 95)) == 3
    voxelArray(volume)[:] += 1  # the voxels edited in place; nothing else changes
    volume.GetImageData().Modified()
    assert box((85, 65), (115, 95)) == 4
    standIn.is_image_set = False  # someone reset the predictor's image
    assert box((85, 65), (115, 95)) == 5
    assert len(standIn.boxes) == 7


def test_each_run_asks_the_provider_for_its_model(mrml):
    volume = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = _view(mrml, "Axial", GEOMETRIES["flipped-anisotropic"])
    asked = []
    predictors = {AUTOMATIC: QuadrantPredictor(), BOX: BoxAsMask()}
    logic = DeLightSAMMRMLLogic(lambda model: asked.append(model) or predictors[model])
    logic.segmentSlice(volume, sliceNode, segmentation, target, "xray")
    logic.segmentBox(
        volume, sliceNode, segmentation, target, "xray", [_xyToRAS(sliceNode, xy) for xy in [(80, 60), (120, 99)]]
    )
    logic.segmentBoxFromSegment(volume, sliceNode, segmentation, target, "xray")
    assert asked == [AUTOMATIC, BOX, BOX]
    with pytest.raises(ValueError, match="a box is drawn on one slice"):
        logic.segmentAllSlices(volume, sliceNode, segmentation, target, SegmentationOptions(box=(1.0, 1.0, 4.0, 4.0)))
    options = SegmentationOptions(modality="fundus", box=(1.0, 2.0, 3.0, 4.0))
    assert (
        "box" not in str(options.toParameters())
        and SegmentationOptions.fromParameters(options.toParameters()).box is None
    )


@pytest.mark.parametrize(
    "corners, message",
    [
        ([(100, 80), (100, 80)], "the box is empty: drag from one corner"),
        ([(100, 80), (100, 120)], "the box is empty"),
        ([(-900, -900), (-700, -600)], "the box drawn on the Red view lies outside 'volume' on this slice"),
    ],
)
def test_an_empty_box_is_one_clear_message_and_writes_nothing(mrml, corners, message):
    volume = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = _view(mrml, "Axial", GEOMETRIES["flipped-anisotropic"])
    predictor = BoxAsMask()
    logic = DeLightSAMMRMLLogic(predictor)
    with pytest.raises(SegmentationError, match=message):
        logic.segmentBox(volume, sliceNode, segmentation, target, "xray", [_xyToRAS(sliceNode, xy) for xy in corners])
    assert predictor.encoded == 0 and mrml.segmentArray(segmentation, target, volume).sum() == 0


def test_box_from_an_empty_slice_of_the_segment_says_what_to_do(mrml):
    volume = _volume(mrml, "flipped-anisotropic")
    segmentation, (target, _) = mrml.segmentation(volume)
    start = np.zeros(SHAPE, np.uint8)
    start[0, 2:4, 2:4] = 1  # only on another slice
    mrml.setSegment(segmentation, target, start, volume)
    segmentation.GetSegmentation().GetSegment(target).SetName("lesion")
    sliceNode = _view(mrml, "Axial", GEOMETRIES["flipped-anisotropic"])
    with pytest.raises(
        SegmentationError,
        match=r"'lesion' has nothing on this slice of the Red view \(K = 2\) to draw "
        r"a box around; segment it first",
    ):
        DeLightSAMMRMLLogic(BoxAsMask()).segmentBoxFromSegment(volume, sliceNode, segmentation, target, "xray")
    np.testing.assert_array_equal(mrml.segmentArray(segmentation, target, volume), start)


def _latticeVolume(mrml, segmentation, name="lattice"):
    """An empty volume whose voxels are the segmentation's reference lattice, to paint the segment voxel by voxel."""
    from test_editor_geometry import _lattice

    imageToWorld, extent = _lattice(segmentation)
    ijkToRAS = imageToWorld.copy()
    ijkToRAS[:3, 3] = (imageToWorld @ np.array([extent[0], extent[2], extent[4], 1.0]))[:3]
    dims = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    return mrml.volume(np.zeros(dims, np.int16), ijkToRAS, name=name), dims


@pytest.mark.parametrize("subvoxel", range(8))
def test_box_from_segment_sees_any_part_of_a_voxel_in_a_finer_segmentation(mrml, subvoxel):
    """One of the 8 segment voxels inside source voxel (i, j, k) = (6, 3, 2) of a segmentation oversampled x2: the box
    is that voxel's pixel, whichever of the 8 it is (nearest-neighbour sampling at the voxel's centre sees only one)."""
    volume = _source(mrml)
    segmentation, (target, _) = mrml.segmentation(volume)
    _oversample(segmentation, volume, 2)
    lattice, dims = _latticeVolume(mrml, segmentation)
    values = np.zeros(dims, np.uint8)
    di, dj, dk = subvoxel & 1, (subvoxel >> 1) & 1, subvoxel >> 2
    first = np.rint(np.linalg.inv(toArray(_ijkToRAS(lattice))) @ SOURCE @ [6 - 0.25, 3 - 0.25, 2 - 0.25, 1]).astype(int)
    values[first[2] + dk, first[1] + dj, first[0] + di] = 1
    values[0, 0, 0] = values[-1, -1, -1] = 1  # on other slices; they make the segment's stored extent large
    mrml.setSegment(segmentation, target, values, lattice)
    sliceNode = _view(mrml, "Axial", SOURCE)
    predictor = BoxAsMask()
    DeLightSAMMRMLLogic(predictor).segmentBoxFromSegment(volume, sliceNode, segmentation, target, "xray")
    assert predictor.boxes == [(6.0, 3.0, 7.0, 4.0)]  # axial view of SOURCE: column = i, row = j


def _ijkToRAS(volume):
    import vtk

    result = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(result)
    return result


def test_box_from_segment_in_a_coarser_segmentation_covers_the_voxels_it_holds(mrml):
    """A segmentation with voxels twice the volume's size, shifted half a voxel in plane: one segment voxel holds the
    centres of 2 x 2 volume voxels of the shown slice, and the box covers exactly their pixels."""
    volume = _source(mrml)
    coarseIJKToRAS = SOURCE.copy()
    coarseIJKToRAS[:3, :3] *= 2
    coarseIJKToRAS[:3, 3] = (SOURCE @ np.array([0.5, 0.5, 0, 1]))[:3]  # coarse centres on slices k = 0, 2, 4
    coarse = mrml.volume(np.zeros((3, 5, 6), np.int16), coarseIJKToRAS, name="coarse")
    segmentation, (target, _) = mrml.segmentation(coarse)
    values = np.zeros((3, 5, 6), np.uint8)
    values[1, 1, 2] = 1  # holds the centres of volume voxels i = 4..5, j = 2..3 of slice k = 2
    mrml.setSegment(segmentation, target, values, coarse)
    sliceNode = _view(mrml, "Axial", SOURCE)
    predictor = BoxAsMask()
    DeLightSAMMRMLLogic(predictor).segmentBoxFromSegment(volume, sliceNode, segmentation, target, "xray")
    assert predictor.boxes == [(4.0, 2.0, 6.0, 4.0)]


def test_real_litemedsam_through_box_mode_matches_the_library_and_upstream(
    mrml, litemedsam_predictor, litemedsam_reference
):
    """The released weights on the real chest radiograph of the reference, loaded as Slicer loads a PNG (a one-slice
    RGB volume, i to the left, j to posterior): the box dragged around the right lung on the axial view writes the
    mask upstream LiteMedSAM computes for that image and box (so the model saw both the right way round), exactly
    the library's mask."""
    image, box = litemedsam_reference["image_1"], litemedsam_reference["box_1"]
    lpsToRAS = np.diag([-1.0, -1.0, 1.0, 1.0])
    volume = mrml.volume(image[None], lpsToRAS, name="radiograph")
    segmentation, (target, _) = mrml.segmentation(volume)
    sliceNode = mrml.sliceNode("Red", "Axial")
    sliceNode.JumpSliceByCentering(*(lpsToRAS @ np.array([460, 489, 0, 1.0]))[:3])
    corners = [(lpsToRAS @ np.array([x - 0.5, y - 0.5, 0, 1.0]))[:3] for x, y in (box[:2], box[2:])]  # pixel edges
    predictor = ReusedEncoding(litemedsam_predictor)
    result = DeLightSAMMRMLLogic(predictor).segmentBox(
        volume, sliceNode, segmentation, target, SegmentationOptions(), corners
    )
    written = mrml.segmentArray(segmentation, target, volume)[0].astype(bool)
    assert (written == litemedsam_reference["mask_1"]).mean() > 0.999  # the model saw the image and box as upstream
    assert litemedsam_predictor.original_size == image.shape[:2]
    expected = litemedsam_predictor.predict(box).masks[0]  # the library's mask for the image the view showed
    np.testing.assert_array_equal(written, expected)
    assert result.voxelsAdded == expected.sum() > 50_000
