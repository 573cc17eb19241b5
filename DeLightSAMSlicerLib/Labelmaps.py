"""Masks into the Segment Editor's geometry, and the segment's voxels read back.

The editor computes its editable area and its intensity mask in the segmentation's reference geometry (the
*modifier* geometry: ``scriptedEffect.defaultModifierLabelmap()`` inside Slicer, the reference image geometry that
``vtkSlicerSegmentEditorLogic`` builds its modifier labelmap from). ``vtkOrientedImageDataResample::ModifyImage``
refuses a mask in any other lattice ("geometry mismatch") and the intensity-mask path returns without writing, so
every mask is resampled into that lattice before it is written. The rule, nearest neighbour as Slicer resamples
binary labelmaps: a segmentation voxel takes the value of the source-volume voxel that contains its centre.

Frames: *source IJK* indexes the volume the view shows; *modifier IJK* indexes the modifier lattice, whose
image-to-world matrix is in the segmentation node's coordinates (before its parent transform).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from DeLightSAMSlicerLib.Geometry import SlicePlane, arrayToMatrix, matrixToArray, pixelVoxels, worldFromNode

Extent = tuple  # (i0, i1, j0, j1, k0, k1), inclusive


@dataclass(frozen=True)
class ModifierGeometry:
    """The lattice the editor modifies segments in: voxel index -> segmentation coordinates, and its extent."""

    imageToSegmentation: np.ndarray  # 4x4
    extent: Extent

    @classmethod
    def fromImage(cls, image: slicer.vtkOrientedImageData) -> "ModifierGeometry":
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        return cls(matrixToArray(matrix), tuple(image.GetExtent()))

    @classmethod
    def fromSerialized(cls, geometry: str) -> "ModifierGeometry":
        """From a segmentation's "reference image geometry" string (``vtkSegmentationConverter`` format)."""
        image = slicer.vtkOrientedImageData()
        if not geometry or not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, image, False):
            raise ValueError(f"not a reference image geometry: {geometry!r}")
        return cls.fromImage(image)

    def image(self, values: np.ndarray, extent: Extent) -> slicer.vtkOrientedImageData:
        """A labelmap in this lattice covering ``extent``, with ``values`` ([k, j, i] uint8) as voxels."""
        image = slicer.vtkOrientedImageData()
        image.SetImageToWorldMatrix(arrayToMatrix(self.imageToSegmentation))
        image.SetExtent(*extent)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(
            values, np.uint8
        ).ravel()
        image.Modified()
        return image


def toModifierVoxels(
    sourceIJK: np.ndarray, values: np.ndarray, sourceToModifier: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The modifier voxels whose centres lie in the given source voxels, and the value each one takes.

    ``sourceIJK`` (N, 3) integer voxels, ``values`` (N,), ``sourceToModifier`` 4x4 from source IJK to modifier IJK.
    Returns (M, 3) modifier IJK and (M,) values. Every modifier voxel centre lies in exactly one source voxel (the
    one ``floor(modifierToSource @ centre + 0.5)`` names), so each modifier voxel appears at most once when the source
    voxels are distinct. Three ways to the same voxels, the cheapest that applies: the lattices coincide (one voxel
    each, the usual case: the segmentation has the volume's geometry); the modifier voxels of the source voxels'
    bounding box, each looked up by its owner; or the candidates around each source voxel (sparse, oblique sets).
    """
    sourceIJK = np.asarray(sourceIJK, np.int64).reshape(-1, 3)
    values = np.asarray(values)
    if len(sourceIJK) == 0:
        return np.empty((0, 3), np.int64), values[:0]
    linear = sourceToModifier[:3, :3]
    modifierToSource = np.linalg.inv(sourceToModifier)
    if _sameLattice(sourceToModifier, modifierToSource):
        return _latticeToLattice(sourceIJK, np.rint(sourceToModifier[:3, :4]).astype(np.int64)), values
    halfSize = 0.5 * np.abs(linear).sum(axis=1)  # half the bounding box of one source voxel, in modifier voxels
    counts = np.floor(2 * halfSize + 1e-9).astype(np.int64) + 1
    low, high = sourceIJK.min(axis=0), sourceIJK.max(axis=0)
    corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
    centres = corners @ linear.T + sourceToModifier[:3, 3]
    first = np.ceil(centres.min(axis=0) - halfSize - 1e-9).astype(np.int64)
    boxShape = np.floor(centres.max(axis=0) + halfSize + 1e-9).astype(np.int64) - first + 1
    if np.prod(boxShape.astype(float)) <= len(sourceIJK) * np.prod(counts.astype(float)):
        return _fromModifierBox(sourceIJK, values, modifierToSource, first, boxShape, low, high)
    return _fromSourceCandidates(sourceIJK, values, sourceToModifier, modifierToSource, halfSize, counts)


def _sameLattice(sourceToModifier: np.ndarray, modifierToSource: np.ndarray) -> bool:
    """Whether each source voxel centre is a modifier voxel centre and the other way round: an integer matrix with an
    integer inverse (axes permuted or flipped, same spacing) and an integer offset."""
    for matrix in (sourceToModifier, modifierToSource):
        if not np.allclose(matrix[:3, :4], np.rint(matrix[:3, :4]), rtol=0, atol=1e-6):
            return False
    return True


def _latticeToLattice(sourceIJK: np.ndarray, integer: np.ndarray) -> np.ndarray:
    """Source voxels mapped by an integer 3x4 matrix: column by column when it only permutes and flips axes (ten
    times faster than a matrix product of (N, 3) integers), else the product, in integers (exact either way)."""
    if not (np.count_nonzero(integer[:, :3], axis=1) == 1).all():
        return sourceIJK @ integer[:, :3].T + integer[:, 3]
    voxels = np.empty_like(sourceIJK)
    for row in range(3):
        column = int(np.flatnonzero(integer[row, :3])[0])
        voxels[:, row] = sourceIJK[:, column] * integer[row, column] + integer[row, 3]
    return voxels


def _fromModifierBox(sourceIJK, values, modifierToSource, first, boxShape, low, high):
    """Every modifier voxel of the box ``first`` + ``boxShape`` (which holds the source voxels), kept where its owner,
    the source voxel holding its centre, is one of ``sourceIJK``."""
    sourceShape = tuple(high - low + 1)
    given = np.full(int(np.prod(sourceShape)), -1, np.int64)  # source voxel of the bounding box -> its row, or -1
    given[np.ravel_multi_index(tuple((sourceIJK - low).T), sourceShape)] = np.arange(len(sourceIJK))
    grid = np.indices(tuple(boxShape)).reshape(3, -1).T + first
    owners = np.floor(grid @ modifierToSource[:3, :3].T + modifierToSource[:3, 3] + 0.5).astype(np.int64) - low
    inside = np.all((owners >= 0) & (owners < np.array(sourceShape)), axis=1)
    grid, owners = grid[inside], owners[inside]
    row = given[np.ravel_multi_index(tuple(owners.T), sourceShape)]
    keep = row >= 0
    return grid[keep], values[row[keep]]


def _fromSourceCandidates(sourceIJK, values, sourceToModifier, modifierToSource, halfSize, counts):
    """The modifier voxels within each source voxel's bounding box, kept where the source voxel owns them."""
    linear = sourceToModifier[:3, :3]
    centres = sourceIJK @ linear.T + sourceToModifier[:3, 3]
    first = np.ceil(centres - halfSize - 1e-9).astype(np.int64)
    offsets = np.stack(np.meshgrid(*[np.arange(n) for n in counts], indexing="ij"), axis=-1).reshape(-1, 3)
    candidates = (first[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
    owners = np.floor(candidates @ modifierToSource[:3, :3].T + modifierToSource[:3, 3] + 0.5).astype(np.int64)
    keep = np.all(owners == np.repeat(sourceIJK, len(offsets), axis=0), axis=1)
    return candidates[keep], np.repeat(values, len(offsets))[keep]


class BatchLabelmap:
    """The slices of one batch in the modifier lattice, written with one modification.

    ``add`` takes a slice's source voxels and their mask values; ``arrays`` gives what to write: the predicted
    foreground and every voxel the batch covers (foreground or not), cropped to the modifier extent (the editor
    edits nothing outside it).
    """

    def __init__(self, geometry: ModifierGeometry) -> None:
        self.geometry = geometry
        self._segmentationToModifier = np.linalg.inv(geometry.imageToSegmentation)
        self._voxels: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def add(self, sourceIJK: np.ndarray, values: np.ndarray, sourceToSegmentation: np.ndarray) -> None:
        """Source voxels (N, 3) and their mask values (N,); ``sourceToSegmentation`` maps source IJK to the
        segmentation node's coordinates."""
        sourceToModifier = self._segmentationToModifier @ sourceToSegmentation
        voxels, inside = toModifierVoxels(sourceIJK, np.asarray(values, bool), sourceToModifier)
        low, high = self.geometry.extent[0::2], self.geometry.extent[1::2]
        keep = np.ones(len(voxels), bool)
        for axis in range(3):  # column by column: much faster than a reduction over rows of three
            column = voxels[:, axis]
            if len(column) and (column.min() < low[axis] or column.max() > high[axis]):
                keep &= (column >= low[axis]) & (column <= high[axis])
        if not keep.all():
            voxels, inside = voxels[keep], inside[keep]
        self._voxels.append(voxels)
        self._values.append(inside)

    @property
    def empty(self) -> bool:
        return not any(len(voxels) for voxels in self._voxels)

    def arrays(self) -> tuple[Extent, np.ndarray, np.ndarray]:
        """(extent, mask, covered): [k, j, i] uint8 arrays over the smallest extent holding the batch."""
        voxels, values = np.concatenate(self._voxels), np.concatenate(self._values)
        low = np.array([voxels[:, axis].min() for axis in range(3)])  # per column: faster than min(axis=0)
        high = np.array([voxels[:, axis].max() for axis in range(3)])
        extent = tuple(int(v) for pair in zip(low, high) for v in pair)
        size = high - low + 1  # (i, j, k)
        flat = ((voxels[:, 2] - low[2]) * size[1] + (voxels[:, 1] - low[1])) * size[0] + (voxels[:, 0] - low[0])
        mask, covered = np.zeros(int(np.prod(size)), np.uint8), np.zeros(int(np.prod(size)), np.uint8)
        covered[flat] = 1
        mask[flat] = values
        shape = tuple(int(n) for n in size[::-1])
        return extent, mask.reshape(shape), covered.reshape(shape)


def _segmentLabelmap(segmentationNode, segmentId: str):
    """(labelmap, label value) of the segment as stored (its layer may hold other segments), or None if it has no
    voxels."""
    label = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    labelmap = slicer.vtkOrientedImageData()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentationNode, segmentId, labelmap, False):
        return None
    if 0 in labelmap.GetDimensions() or labelmap.GetPointData().GetScalars() is None:
        return None
    return labelmap, label


def segmentVoxels(segmentationNode, segmentId: str, geometry: ModifierGeometry, extent: Extent) -> np.ndarray:
    """The segment's voxels ([k, j, i] uint8, 0 or 1) in ``geometry``'s lattice over ``extent``.

    Segments may share one labelmap layer (each with its own label value), which is what Slicer returns: only the
    segment's own label counts.
    """
    shape = tuple(np.array(extent[1::2]) - extent[0::2] + 1)[::-1]
    stored = _segmentLabelmap(segmentationNode, segmentId)
    if stored is None:
        return np.zeros(shape, np.uint8)
    labelmap, label = stored
    resampled = slicer.vtkOrientedImageData()
    reference = geometry.image(np.zeros(shape, np.uint8), extent)
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, resampled)
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(shape)
    return (values == label).astype(np.uint8)


def segmentInSourceVoxels(
    segmentationNode, segmentId: str, sourceToSegmentation: np.ndarray, extent: Extent
) -> np.ndarray:
    """[k, j, i] uint8 over ``extent`` of the source volume's voxels: 1 where a source voxel holds part of the segment.

    A source voxel holds part of it when the segment holds the voxel's centre (Slicer's nearest-neighbour resampling:
    segmentations as coarse as the volume or coarser) or when the centre of a segment voxel lies in it (the write
    rule read backwards: finer, oversampled segmentations). ``sourceToSegmentation`` maps source IJK to the
    segmentation node's coordinates.
    """
    inside = segmentVoxels(segmentationNode, segmentId, ModifierGeometry(sourceToSegmentation, extent), extent)
    stored = _segmentLabelmap(segmentationNode, segmentId)
    if stored is None:
        return inside
    labelmap, label = stored
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    segmentToSource = np.linalg.inv(sourceToSegmentation) @ matrixToArray(matrix)
    # The segment voxels whose centres may lie in the extent: the extent's corners in the segment's lattice.
    first, last = np.array(extent[0::2]), np.array(extent[1::2])
    corners = np.array(
        [
            [a, b, c, 1.0]
            for a in (first[0] - 0.5, last[0] + 0.5)
            for b in (first[1] - 0.5, last[1] + 0.5)
            for c in (first[2] - 0.5, last[2] + 0.5)
        ]
    )
    cornersInSegment = (np.linalg.inv(segmentToSource) @ corners.T)[:3]
    storedExtent = np.array(labelmap.GetExtent())
    low = np.maximum(np.floor(cornersInSegment.min(axis=1)).astype(np.int64), storedExtent[0::2])
    high = np.minimum(np.ceil(cornersInSegment.max(axis=1)).astype(np.int64), storedExtent[1::2])
    if np.any(high < low):
        return inside
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
        tuple(storedExtent[1::2] - storedExtent[0::2] + 1)[::-1]
    )
    start, stop = low - storedExtent[0::2], high - storedExtent[0::2] + 1
    k, j, i = np.nonzero(values[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]] == label)
    centres = np.stack([i + low[0], j + low[1], k + low[2], np.ones(len(i))])
    owners = np.floor((segmentToSource @ centres)[:3] + 0.5).astype(np.int64)
    owners = owners[:, np.all((owners >= first[:, None]) & (owners <= last[:, None]), axis=0)] - first[:, None]
    inside[owners[2], owners[1], owners[0]] = 1
    return inside


def segmentViewMask(plane: SlicePlane, segmentationNode, segmentId: str) -> np.ndarray:
    """(rows, cols) bool: the view pixels whose source voxel (``Geometry.pixelVoxels``) holds part of the segment."""
    voxels, inside = pixelVoxels(plane)
    mask = np.zeros(plane.shape, bool)
    if not inside.any():
        return mask
    low, high = voxels[inside].min(axis=0), voxels[inside].max(axis=0)
    extent = tuple(int(value) for pair in zip(low, high) for value in pair)
    sourceToSegmentation = np.linalg.inv(worldFromNode(segmentationNode)) @ plane.ijkToWorld
    inSegment = segmentInSourceVoxels(segmentationNode, segmentId, sourceToSegmentation, extent)
    local = voxels[inside] - low
    mask[inside] = inSegment[local[:, 2], local[:, 1], local[:, 0]] > 0
    return mask
