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
import vtk
from vtk.util import numpy_support

import slicer
from DeLightSAMSlicerLib.Geometry import arrayToMatrix, matrixToArray

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
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(values, np.uint8).ravel()
        image.Modified()
        return image


def toModifierVoxels(sourceIJK: np.ndarray, values: np.ndarray, sourceToModifier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The modifier voxels whose centres lie in the given source voxels, and the value each one takes.

    ``sourceIJK`` (N, 3) integer voxels, ``values`` (N,), ``sourceToModifier`` 4x4 from source IJK to modifier IJK.
    Returns (M, 3) modifier IJK and (M,) values. Every modifier voxel centre lies in exactly one source voxel, so
    each modifier voxel appears at most once when the source voxels are distinct.
    """
    sourceIJK = np.asarray(sourceIJK, np.int64).reshape(-1, 3)
    linear = sourceToModifier[:3, :3]
    modifierToSource = np.linalg.inv(sourceToModifier)
    centres = sourceIJK @ linear.T + sourceToModifier[:3, 3]
    halfSize = 0.5 * np.abs(linear).sum(axis=1)  # half the bounding box of one source voxel, in modifier voxels
    first = np.ceil(centres - halfSize - 1e-9).astype(np.int64)
    counts = np.floor(2 * halfSize + 1e-9).astype(np.int64) + 1
    offsets = np.stack(np.meshgrid(*[np.arange(n) for n in counts], indexing="ij"), axis=-1).reshape(-1, 3)
    candidates = (first[:, None, :] + offsets[None, :, :]).reshape(-1, 3)
    owners = np.floor(candidates @ modifierToSource[:3, :3].T + modifierToSource[:3, 3] + 0.5).astype(np.int64)
    keep = np.all(owners == np.repeat(sourceIJK, len(offsets), axis=0), axis=1)
    return candidates[keep], np.repeat(np.asarray(values), len(offsets))[keep]


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
        low, high = np.array(self.geometry.extent[0::2]), np.array(self.geometry.extent[1::2])
        keep = np.all((voxels >= low) & (voxels <= high), axis=1)
        self._voxels.append(voxels[keep])
        self._values.append(inside[keep])

    @property
    def empty(self) -> bool:
        return not any(len(voxels) for voxels in self._voxels)

    def arrays(self) -> tuple[Extent, np.ndarray, np.ndarray]:
        """(extent, mask, covered): [k, j, i] uint8 arrays over the smallest extent holding the batch."""
        voxels, values = np.concatenate(self._voxels), np.concatenate(self._values)
        low, high = voxels.min(axis=0), voxels.max(axis=0)
        extent = tuple(int(v) for pair in zip(low, high) for v in pair)
        shape = tuple((high - low + 1)[::-1])
        mask, covered = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
        local = tuple((voxels - low)[:, ::-1].T)
        covered[local] = 1
        mask[local] = values
        return extent, mask, covered


def segmentVoxels(segmentationNode, segmentId: str, geometry: ModifierGeometry, extent: Extent) -> np.ndarray:
    """The segment's voxels ([k, j, i] uint8, 0 or 1) in ``geometry``'s lattice over ``extent``.

    Segments may share one labelmap layer (each with its own label value), which is what Slicer returns: only the
    segment's own label counts.
    """
    shape = tuple(np.array(extent[1::2]) - extent[0::2] + 1)[::-1]
    label = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    labelmap = slicer.vtkOrientedImageData()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentationNode, segmentId, labelmap, False):
        return np.zeros(shape, np.uint8)
    dims = labelmap.GetDimensions()
    if 0 in dims or labelmap.GetPointData().GetScalars() is None:
        return np.zeros(shape, np.uint8)
    resampled = slicer.vtkOrientedImageData()
    reference = geometry.image(np.zeros(shape, np.uint8), extent)
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, resampled)
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(shape)
    return (values == label).astype(np.uint8)
