"""Slice geometry for the De-LightSAM extension: the image a slice view shows, and the voxels a mask goes back to.

Imports only Slicer's MRML classes (``slicer``), ``vtk``, ``numpy`` and ``DeLightSAMLib``: no Qt, ctk or
ScriptedLoadableModule, so it runs inside Slicer and, for the tests, under the PyPI ``slicer-core`` package.

Frames used here:
- voxel arrays are [k, j, i] (``arrayFromVolume``), with a trailing component axis for vector volumes;
- the *view image* is what the slice view shows, rows top to bottom (the view's -Y), columns left to right (+X);
- RAS is world space; a volume's IJK-to-RAS includes any linear parent transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
from DeLightSAMLib.errors import DeLightSAMError
from DeLightSAMLib.intensity import Window, apply_window, robust_window

ALIGNMENT_TOLERANCE = 1e-4  # |sin| of the angle below which a view axis counts as a volume axis


class SegmentationError(DeLightSAMError):
    """A problem with the scene the user can fix (no volume, 4D data, a view that misses the volume, ...)."""


# ---------------------------------------------------------------------------------------------- geometry
def _matrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _arrayToMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _worldFromNode(node) -> np.ndarray:
    """4x4 from a transformable node's local coordinates to world RAS; non-linear transforms are refused."""
    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise SegmentationError(
            f"'{node.GetName()}' is under the non-linear transform '{transformNode.GetName()}'; "
            "harden the transform (Data module, right-click > Harden transform) and apply again"
        )
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return _matrixToArray(matrix)


def volumeIJKToWorld(volumeNode) -> np.ndarray:
    """4x4 IJK (voxel index, i fastest) -> world RAS of ``volumeNode``, parent transforms included."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return _worldFromNode(volumeNode) @ _matrixToArray(matrix)


def voxelArray(volumeNode) -> np.ndarray:
    """[k, j, i] or [k, j, i, c] view of a volume's voxels (works for nodes outside the scene too)."""
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        name = volumeNode.GetName() if volumeNode is not None else "the source volume"
        raise SegmentationError(f"'{name}' has no voxels; load an image into it first")
    dims = imageData.GetDimensions()
    if 0 in dims:
        raise SegmentationError(f"'{volumeNode.GetName()}' is empty (dimensions {dims})")
    scalars = numpy_support.vtk_to_numpy(imageData.GetPointData().GetScalars())
    components = imageData.GetNumberOfScalarComponents()
    shape = tuple(reversed(dims)) + ((components,) if components > 1 else ())
    return scalars.reshape(shape)


@dataclass
class SlicePlane:
    """Where a view's plane cuts a volume, and how view-image pixels map to voxels.

    aligned: the view's normal and in-plane axes are volume axes; ``axis`` (0=i, 1=j, 2=k) is the normal,
    ``index`` the slice, ``rowAxis``/``colAxis`` the volume axes along view rows (downwards) and columns
    (rightwards) and ``rowSign``/``colSign`` whether the index grows (+1) or falls (-1) along them.
    oblique: ``pixelToIJK`` maps (col + 0.5, row + 0.5, 0, 1) of the resampled view image to continuous IJK.
    """

    volumeDimensions: tuple  # (I, J, K)
    ijkToWorld: np.ndarray
    shape: tuple  # (rows, cols) of the view image
    aligned: bool
    axis: int = -1
    index: int = -1
    rowAxis: int = -1
    rowSign: int = 1
    colAxis: int = -1
    colSign: int = 1
    pixelToIJK: Optional[np.ndarray] = None
    description: str = ""

    @property
    def sliceExtent(self) -> list:
        """[i0, i1, j0, j1, k0, k1] of the aligned slice."""
        extent = []
        for ax in range(3):
            extent += [self.index, self.index] if ax == self.axis else [0, self.volumeDimensions[ax] - 1]
        return extent


def _dominantAxis(vector: np.ndarray) -> tuple[int, int, bool]:
    """(axis, sign, isAligned) of a direction given in IJK units."""
    magnitude = np.linalg.norm(vector)
    axis = int(np.argmax(np.abs(vector)))
    others = np.delete(vector, axis)
    aligned = magnitude > 0 and np.linalg.norm(others) <= ALIGNMENT_TOLERANCE * magnitude
    return axis, (1 if vector[axis] > 0 else -1), aligned


def slicePlane(volumeNode, sliceNode, anyOffset: bool = False) -> SlicePlane:
    """The plane ``sliceNode`` shows, expressed in ``volumeNode``'s voxels. Raises if it misses the volume.

    With ``anyOffset`` only the view's direction matters (for 'All slices'): the view must then be aligned with
    the volume's axes, and may be scrolled anywhere.
    """
    dims = volumeNode.GetImageData().GetDimensions()
    ijkToWorld = volumeIJKToWorld(volumeNode)
    worldToIJK = np.linalg.inv(ijkToWorld)
    sliceToRAS = _matrixToArray(sliceNode.GetSliceToRAS())
    # Directions transform with the linear part; the normal is the cross product of the in-plane axes so that
    # shear in IJK-to-RAS cannot fool the alignment test.
    xIJK = worldToIJK[:3, :3] @ sliceToRAS[:3, 0]
    yIJK = worldToIJK[:3, :3] @ sliceToRAS[:3, 1]
    normalAxis, _, normalAligned = _dominantAxis(np.cross(xIJK, yIJK))
    colAxis, colSign, colAligned = _dominantAxis(xIJK)
    yAxis, ySign, yAligned = _dominantAxis(yIJK)
    viewName = sliceNode.GetName() or "slice"
    outside = (
        f"the {viewName} view does not show any part of '{volumeNode.GetName()}'; "
        "scroll or center the view on the volume and apply again"
    )
    aligned = normalAligned and colAligned and yAligned and len({normalAxis, colAxis, yAxis}) == 3
    if anyOffset and not aligned:
        raise SegmentationError(
            f"the {viewName} view is not aligned with the axes of '{volumeNode.GetName()}', which 'All slices' "
            "needs; use the view's 'Rotate to volume plane' button, or segment the oblique slice on its own"
        )
    if aligned:
        centerIJK = worldToIJK @ sliceToRAS[:, 3]
        index = int(np.floor(centerIJK[normalAxis] + 0.5))
        if anyOffset:
            index = min(max(index, 0), dims[normalAxis] - 1)
        elif not 0 <= index < dims[normalAxis]:
            raise SegmentationError(outside)
        return SlicePlane(
            volumeDimensions=tuple(dims), ijkToWorld=ijkToWorld, aligned=True, axis=normalAxis, index=index,
            rowAxis=yAxis, rowSign=-ySign, colAxis=colAxis, colSign=colSign,
            shape=(dims[yAxis], dims[colAxis]), description=f"{'IJK'[normalAxis]} = {index}",
        )
    return _obliquePlane(volumeNode, sliceNode, dims, ijkToWorld, worldToIJK, sliceToRAS, outside)


def _obliquePlane(volumeNode, sliceNode, dims, ijkToWorld, worldToIJK, sliceToRAS, outside) -> SlicePlane:
    """Resampling grid for an oblique view: the view's field of view cropped to the volume's footprint,
    with square pixels as small as the volume's finest spacing."""
    spacing = np.linalg.norm(ijkToWorld[:3, :3], axis=0)
    pixel = float(spacing.min())
    rasToSlice = np.linalg.inv(sliceToRAS)
    corners = np.array([[i, j, k, 1.0] for i in (-0.5, dims[0] - 0.5) for j in (-0.5, dims[1] - 0.5)
                        for k in (-0.5, dims[2] - 0.5)])
    inSlice = (rasToSlice @ ijkToWorld @ corners.T)[:3]
    if not (inSlice[2].min() <= 0 <= inSlice[2].max()):
        raise SegmentationError(outside)
    fov = sliceNode.GetFieldOfView()
    xMin, xMax = max(inSlice[0].min(), -fov[0] / 2), min(inSlice[0].max(), fov[0] / 2)
    yMin, yMax = max(inSlice[1].min(), -fov[1] / 2), min(inSlice[1].max(), fov[1] / 2)
    if xMax <= xMin or yMax <= yMin:
        raise SegmentationError(outside)
    cols = max(1, int(np.ceil((xMax - xMin) / pixel)))
    rows = max(1, int(np.ceil((yMax - yMin) / pixel)))
    # (col + 0.5, row + 0.5) -> slice (x, y): x grows with col, y falls with row (rows run down the screen).
    pixelToSlice = np.array([[pixel, 0, 0, xMin], [0, -pixel, 0, yMax], [0, 0, 1, 0], [0, 0, 0, 1]])
    pixelToIJK = worldToIJK @ sliceToRAS @ pixelToSlice
    return SlicePlane(volumeDimensions=tuple(dims), ijkToWorld=ijkToWorld, aligned=False, shape=(rows, cols),
                      pixelToIJK=pixelToIJK, description=f"oblique, {rows} x {cols} px of {pixel:.3g} mm")


# ---------------------------------------------------------------------------------------------- pixels
def viewImage(voxels: np.ndarray, plane: SlicePlane) -> np.ndarray:
    """The view image (rows, cols[, c]) of ``voxels`` ([k, j, i[, c]]) on ``plane``, raw values.

    Oblique planes are sampled trilinearly; samples outside the volume are NaN.
    """
    if plane.aligned:
        ijkFirst = np.moveaxis(voxels, (0, 1, 2), (2, 1, 0))  # [i, j, k(, c)], no copy
        section = np.take(ijkFirst, plane.index, axis=plane.axis)
        remaining = [ax for ax in range(3) if ax != plane.axis]
        order = [remaining.index(plane.rowAxis), remaining.index(plane.colAxis)] + list(range(2, section.ndim))
        image = section.transpose(order)
        return image[:: plane.rowSign, :: plane.colSign]
    rows, cols = plane.shape
    r, c = np.mgrid[0:rows, 0:cols]
    pixels = np.stack([c.ravel() + 0.5, r.ravel() + 0.5, np.zeros(r.size), np.ones(r.size)])
    ijk = (plane.pixelToIJK @ pixels)[:3]
    samples = _trilinear(voxels, ijk)
    return samples.reshape((rows, cols) + voxels.shape[3:])


def _trilinear(voxels: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Trilinear samples of [k, j, i(, c)] voxels at continuous (i, j, k) points (3, N); NaN outside."""
    dims = np.array(voxels.shape[2::-1])  # (I, J, K)
    inside = np.all((ijk >= -0.5) & (ijk <= dims[:, None] - 0.5), axis=0)
    clamped = np.clip(ijk, 0, dims[:, None] - 1)
    base = np.minimum(np.floor(clamped).astype(np.int64), np.maximum(dims[:, None] - 2, 0))
    frac = clamped - base
    result = np.zeros((ijk.shape[1],) + voxels.shape[3:], dtype=np.float64)
    for di in (0, 1):
        for dj in (0, 1):
            for dk in (0, 1):
                i = np.minimum(base[0] + di, dims[0] - 1)
                j = np.minimum(base[1] + dj, dims[1] - 1)
                k = np.minimum(base[2] + dk, dims[2] - 1)
                weight = (frac[0] if di else 1 - frac[0]) * (frac[1] if dj else 1 - frac[1]) * (frac[2] if dk else 1 - frac[2])
                sample = voxels[k, j, i].astype(np.float64)
                result += sample * (weight[:, None] if sample.ndim > 1 else weight)
    result[~inside] = np.nan
    return result


def displayWindow(volumeNode, voxels: np.ndarray) -> Optional[Window]:
    """(center, width) the user sees for a scalar volume; None for 8-bit vector (RGB) data shown as is."""
    if voxels.ndim == 4 and voxels.dtype == np.uint8:
        return None
    displayNode = volumeNode.GetDisplayNode() if volumeNode is not None else None
    if displayNode is not None and hasattr(displayNode, "GetWindow") and displayNode.GetWindow() > 0 and voxels.ndim == 3:
        return float(displayNode.GetLevel()), float(displayNode.GetWindow())
    return robust_window(voxels)


def toRGB8(image: np.ndarray, window: Optional[Window]) -> np.ndarray:
    """A raw view image -> (rows, cols, 3) uint8, through ``window``; NaN (outside the volume) is black."""
    outside = np.isnan(image) if image.dtype.kind == "f" else None
    if window is None:
        rgb = np.nan_to_num(image).astype(np.uint8) if image.dtype != np.uint8 else image
    else:
        rgb = apply_window(image, window)
    if outside is not None:
        rgb = np.where(outside, 0, rgb).astype(np.uint8)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    elif rgb.shape[-1] == 4:
        rgb = rgb[..., :3]
    elif rgb.shape[-1] != 3:
        rgb = np.repeat(rgb[..., :1], 3, axis=-1)
    return np.ascontiguousarray(rgb)


# ---------------------------------------------------------------------------------------------- write-back
@dataclass
class SliceLabelmaps:
    """What to write for one slice: ``mask`` (1 = predicted foreground) and ``background`` (1 = the slice's
    voxels outside the mask), vtkOrientedImageData in the source volume's voxel grid, of the slice's extent."""

    mask: slicer.vtkOrientedImageData
    background: slicer.vtkOrientedImageData
    voxelCount: int  # foreground voxels


def _orientedImage(values: np.ndarray, extent: list, ijkToWorld: np.ndarray) -> slicer.vtkOrientedImageData:
    """values [k, j, i] uint8 covering ``extent`` -> vtkOrientedImageData in that voxel grid."""
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(_arrayToMatrix(ijkToWorld))
    image.SetExtent(*extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(values, np.uint8).ravel()
    image.Modified()
    return image


def sliceLabelmaps(mask: np.ndarray, plane: SlicePlane, worldToSegmentation: np.ndarray) -> SliceLabelmaps:
    """Place a view-image mask (rows, cols) back into the voxels of the slice it came from."""
    labelToSegmentation = worldToSegmentation @ plane.ijkToWorld
    mask = np.asarray(mask, dtype=bool)
    if plane.aligned:
        unflipped = mask[:: plane.rowSign, :: plane.colSign]
        remaining = [ax for ax in range(3) if ax != plane.axis]
        inSection = unflipped.transpose(np.argsort([remaining.index(plane.rowAxis), remaining.index(plane.colAxis)]))
        ijkFirst = np.expand_dims(inSection, plane.axis)  # [i, j, k] with one slice along the normal
        values = ijkFirst.transpose(2, 1, 0)
        extent = plane.sliceExtent
        return SliceLabelmaps(_orientedImage(values, extent, labelToSegmentation),
                              _orientedImage(~values, extent, labelToSegmentation), int(mask.sum()))
    voxels, hits = _obliqueVoxels(mask, plane)
    if len(voxels) == 0:
        raise SegmentationError("the view's plane passes between the volume's voxels; scroll it slightly and apply again")
    low, high = voxels.min(axis=0), voxels.max(axis=0)
    extent = [int(v) for pair in zip(low, high) for v in pair]
    size = (high - low + 1)[::-1]
    maskValues = np.zeros(size, np.uint8)
    backgroundValues = np.zeros(size, np.uint8)
    local = tuple((voxels - low)[:, ::-1].T)  # [k, j, i] indices
    maskValues[local] = hits
    backgroundValues[local] = 1 - hits
    return SliceLabelmaps(_orientedImage(maskValues, extent, labelToSegmentation),
                          _orientedImage(backgroundValues, extent, labelToSegmentation), int(hits.sum()))


def _obliqueVoxels(mask: np.ndarray, plane: SlicePlane) -> tuple[np.ndarray, np.ndarray]:
    """One voxel per column along the IJK axis closest to the plane normal (a gap-free digital plane),
    restricted to the resampled view; returns (N, 3) voxel (i, j, k) and their (N,) mask values."""
    ijkToPixel = np.linalg.inv(plane.pixelToIJK)
    normal = ijkToPixel[2, :3]  # pixel z as a function of ijk: z = normal . ijk + offset
    offset = ijkToPixel[2, 3]
    w = int(np.argmax(np.abs(normal)))
    u, v = [ax for ax in range(3) if ax != w]
    dims = plane.volumeDimensions
    gu, gv = np.meshgrid(np.arange(dims[u]), np.arange(dims[v]), indexing="ij")
    gw = np.rint(-(normal[u] * gu + normal[v] * gv + offset) / normal[w]).astype(np.int64)
    ijk = np.zeros((gu.size, 3), np.int64)
    ijk[:, u], ijk[:, v], ijk[:, w] = gu.ravel(), gv.ravel(), gw.ravel()
    ijk = ijk[(ijk[:, w] >= 0) & (ijk[:, w] < dims[w])]
    pixels = ijkToPixel @ np.vstack([ijk.T.astype(np.float64), np.ones(len(ijk))])
    col, row = np.floor(pixels[0]).astype(np.int64), np.floor(pixels[1]).astype(np.int64)
    inView = (col >= 0) & (col < plane.shape[1]) & (row >= 0) & (row < plane.shape[0])
    return ijk[inView], mask[row[inView], col[inView]].astype(np.uint8)
