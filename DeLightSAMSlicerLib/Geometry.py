"""Slice geometry for the De-LightSAM extension: the image a slice view shows, and the voxels a mask goes back to.
Geometry only: the conversion of the raw view image to the network's 8 bits is the library's (``intensity``).

Imports only Slicer's MRML classes (``slicer``), ``vtk``, ``numpy`` and ``DeLightSAMLib``: no Qt, ctk or
ScriptedLoadableModule, so it runs inside Slicer and, for the tests, under the PyPI ``slicer-core`` package.

Frames used here:
- voxel arrays are [k, j, i] (``arrayFromVolume``), with a trailing component axis for vector volumes;
- the *view image* is what the slice view shows, rows top to bottom (the view's -Y), columns left to right (+X);
  a *view pixel position* (x, y) is continuous: pixel (row, col) covers x in [col, col + 1), y in [row, row + 1)
  (the library's box coordinates: the image spans 0..cols and 0..rows);
- RAS is world space; a volume's IJK-to-RAS includes any linear parent transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import vtk
from vtk.util import numpy_support

from DeLightSAMLib.errors import DeLightSAMError
from DeLightSAMLib.intensity import Window, robust_window
from DeLightSAMSlicerLib.i18n import tr as _

ALIGNMENT_TOLERANCE = 1e-4  # |sin| of the angle below which a view axis counts as a volume axis
IDENTITY_WINDOW: Window = (127.5, 255.0)  # 0..255 onto 0..255: 8-bit colour shown as it is


class SegmentationError(DeLightSAMError):
    """A problem with the scene the user can fix (no volume, 4D data, a view that misses the volume, ...)."""


# ---------------------------------------------------------------------------------------------- geometry
def matrixToArray(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def arrayToMatrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def worldFromNode(node) -> np.ndarray:
    """4x4 from a transformable node's local coordinates to world RAS; non-linear transforms are refused."""
    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise SegmentationError(
            _(
                "'{node}' is under the non-linear transform '{transform}'; "
                "harden the transform (Data module, right-click > Harden transform) and apply again"
            ).format(node=node.GetName(), transform=transformNode.GetName())
        )
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return matrixToArray(matrix)


def volumeIJKToWorld(volumeNode) -> np.ndarray:
    """4x4 IJK (voxel index, i fastest) -> world RAS of ``volumeNode``, parent transforms included."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return worldFromNode(volumeNode) @ matrixToArray(matrix)


def voxelArray(volumeNode) -> np.ndarray:
    """[k, j, i] or [k, j, i, c] view of a volume's voxels (works for nodes outside the scene too)."""
    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None or imageData.GetPointData().GetScalars() is None:
        name = volumeNode.GetName() if volumeNode is not None else _("the source volume")
        raise SegmentationError(_("'{volume}' has no voxels; load an image into it first").format(volume=name))
    dims = imageData.GetDimensions()
    if 0 in dims:
        raise SegmentationError(
            _("'{volume}' is empty (dimensions {dimensions})").format(volume=volumeNode.GetName(), dimensions=dims)
        )
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
    sliceToRAS = matrixToArray(sliceNode.GetSliceToRAS())
    # Directions transform with the linear part; the normal is the cross product of the in-plane axes so that
    # shear in IJK-to-RAS cannot fool the alignment test.
    xIJK = worldToIJK[:3, :3] @ sliceToRAS[:3, 0]
    yIJK = worldToIJK[:3, :3] @ sliceToRAS[:3, 1]
    normalAxis, _normalSign, normalAligned = _dominantAxis(np.cross(xIJK, yIJK))
    colAxis, colSign, colAligned = _dominantAxis(xIJK)
    yAxis, ySign, yAligned = _dominantAxis(yIJK)
    viewName = sliceNode.GetName() or _("slice")
    outside = _(
        "the {view} view does not show any part of '{volume}'; scroll or center the view on the volume and apply again"
    ).format(view=viewName, volume=volumeNode.GetName())
    aligned = normalAligned and colAligned and yAligned and len({normalAxis, colAxis, yAxis}) == 3
    if anyOffset and not aligned:
        raise SegmentationError(
            _(
                "the {view} view is not aligned with the axes of '{volume}', which 'All slices' needs; use the view's "
                "'Rotate to volume plane' button, or segment the oblique slice on its own"
            ).format(view=viewName, volume=volumeNode.GetName())
        )
    if aligned:
        centerIJK = worldToIJK @ sliceToRAS[:, 3]
        index = int(np.floor(centerIJK[normalAxis] + 0.5))
        if anyOffset:
            index = min(max(index, 0), dims[normalAxis] - 1)
        elif not 0 <= index < dims[normalAxis]:
            raise SegmentationError(outside)
        return SlicePlane(
            volumeDimensions=tuple(dims),
            ijkToWorld=ijkToWorld,
            aligned=True,
            axis=normalAxis,
            index=index,
            rowAxis=yAxis,
            rowSign=-ySign,
            colAxis=colAxis,
            colSign=colSign,
            shape=(dims[yAxis], dims[colAxis]),
            description=_("{axis} = {index}").format(axis="IJK"[normalAxis], index=index),
        )
    return _obliquePlane(volumeNode, sliceNode, dims, ijkToWorld, worldToIJK, sliceToRAS, outside)


def _obliquePlane(volumeNode, sliceNode, dims, ijkToWorld, worldToIJK, sliceToRAS, outside) -> SlicePlane:
    """Resampling grid for an oblique view: the view's field of view cropped to the volume's footprint,
    with square pixels as small as the volume's finest spacing."""
    spacing = np.linalg.norm(ijkToWorld[:3, :3], axis=0)
    pixel = float(spacing.min())
    rasToSlice = np.linalg.inv(sliceToRAS)
    corners = np.array(
        [[i, j, k, 1.0] for i in (-0.5, dims[0] - 0.5) for j in (-0.5, dims[1] - 0.5) for k in (-0.5, dims[2] - 0.5)]
    )
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
    return SlicePlane(
        volumeDimensions=tuple(dims),
        ijkToWorld=ijkToWorld,
        aligned=False,
        shape=(rows, cols),
        pixelToIJK=pixelToIJK,
        description=_("oblique, {rows} x {cols} px of {pixel} mm").format(rows=rows, cols=cols, pixel=f"{pixel:.3g}"),
    )


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
                weight = (
                    (frac[0] if di else 1 - frac[0])
                    * (frac[1] if dj else 1 - frac[1])
                    * (frac[2] if dk else 1 - frac[2])
                )
                sample = voxels[k, j, i].astype(np.float64)
                result += sample * (weight[:, None] if sample.ndim > 1 else weight)
    result[~inside] = np.nan
    return result


def displayWindow(volumeNode, voxels: np.ndarray) -> Window:
    """(center, width) mapping the volume's values to 8 bits as the user sees them.

    Scalar volumes: the display node's window/level, or the robust percentile window without one. 8-bit vector
    (RGB) volumes are shown as they are: the identity window (0..255 to 0..255).
    """
    if voxels.ndim == 4 and voxels.dtype == np.uint8:
        return IDENTITY_WINDOW
    displayNode = volumeNode.GetDisplayNode() if volumeNode is not None else None
    if (
        displayNode is not None
        and hasattr(displayNode, "GetWindow")
        and displayNode.GetWindow() > 0
        and voxels.ndim == 3
    ):
        return float(displayNode.GetLevel()), float(displayNode.GetWindow())
    return robust_window(voxels)


# ---------------------------------------------------------------------------------------------- write-back
def sliceVoxels(mask: np.ndarray, plane: SlicePlane) -> tuple[np.ndarray, np.ndarray]:
    """Where a view-image mask (rows, cols) goes back: the slice's voxels as (N, 3) IJK indices (i, j, k) of the
    source volume, and each one's mask value (N,) bool. Aligned views give every voxel of the slice; oblique views
    a one-voxel-thick digital plane (see ``_obliqueVoxels``)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(plane.shape):
        raise ValueError(f"mask of shape {mask.shape} for a view image of shape {plane.shape}")
    if plane.aligned:
        rows, cols = np.mgrid[0 : plane.shape[0], 0 : plane.shape[1]]
        ijk = np.empty((mask.size, 3), np.int64)
        ijk[:, plane.axis] = plane.index
        ijk[:, plane.rowAxis] = _viewToIndex(rows.ravel(), plane.rowSign, plane.shape[0])
        ijk[:, plane.colAxis] = _viewToIndex(cols.ravel(), plane.colSign, plane.shape[1])
        return ijk, mask.ravel()
    ijk, hits = _obliqueVoxels(mask, plane)
    if len(ijk) == 0:
        raise SegmentationError(
            _("the view's plane passes between the volume's voxels; scroll it slightly and apply again")
        )
    return ijk, hits.astype(bool)


def _viewToIndex(position: np.ndarray, sign: int, size: int) -> np.ndarray:
    """Voxel index along a volume axis of view row/column ``position`` (the view runs against the axis if sign < 0)."""
    return position if sign > 0 else size - 1 - position


def _digitalPlane(plane: SlicePlane) -> tuple[np.ndarray, int, int, int, np.ndarray, float]:
    """The oblique plane as a digital plane of the volume: one voxel per column along ``w``, the IJK axis closest to
    the plane's normal, at w = rint(-(n_u u + n_v v + offset) / n_w). Returns (ijkToPixel, u, v, w, n, offset)."""
    ijkToPixel = np.linalg.inv(plane.pixelToIJK)
    normal = ijkToPixel[2, :3]  # pixel z as a function of ijk: z = normal . ijk + offset
    w = int(np.argmax(np.abs(normal)))
    u, v = [ax for ax in range(3) if ax != w]
    return ijkToPixel, u, v, w, normal, float(ijkToPixel[2, 3])


def _digitalPlaneW(
    gu: np.ndarray, gv: np.ndarray, normal: np.ndarray, offset: float, u: int, v: int, w: int
) -> np.ndarray:
    return np.rint(-(normal[u] * gu + normal[v] * gv + offset) / normal[w]).astype(np.int64)


def _obliqueVoxels(mask: np.ndarray, plane: SlicePlane) -> tuple[np.ndarray, np.ndarray]:
    """One voxel per column along the IJK axis closest to the plane normal (a gap-free digital plane),
    restricted to the resampled view; returns (N, 3) voxel (i, j, k) and their (N,) mask values."""
    ijkToPixel, u, v, w, normal, offset = _digitalPlane(plane)
    dims = plane.volumeDimensions
    gu, gv = np.meshgrid(np.arange(dims[u]), np.arange(dims[v]), indexing="ij")
    gw = _digitalPlaneW(gu, gv, normal, offset, u, v, w)
    ijk = np.zeros((gu.size, 3), np.int64)
    ijk[:, u], ijk[:, v], ijk[:, w] = gu.ravel(), gv.ravel(), gw.ravel()
    ijk = ijk[(ijk[:, w] >= 0) & (ijk[:, w] < dims[w])]
    pixels = ijkToPixel @ np.vstack([ijk.T.astype(np.float64), np.ones(len(ijk))])
    col, row = np.floor(pixels[0]).astype(np.int64), np.floor(pixels[1]).astype(np.int64)
    inView = (col >= 0) & (col < plane.shape[1]) & (row >= 0) & (row < plane.shape[0])
    return ijk[inView], mask[row[inView], col[inView]].astype(np.uint8)


def pixelVoxels(plane: SlicePlane) -> tuple[np.ndarray, np.ndarray]:
    """The source voxel each view pixel stands for: (rows, cols, 3) voxel (i, j, k), and (rows, cols) bool, False
    where the pixel lies outside the volume. Aligned views: the voxel the pixel shows. Oblique views: the voxel of the
    digital plane (where masks are written, ``sliceVoxels``) in the column holding the pixel's centre."""
    rows, cols = np.mgrid[0 : plane.shape[0], 0 : plane.shape[1]]
    ijk = np.empty(plane.shape + (3,), np.int64)
    if plane.aligned:
        ijk[..., plane.axis] = plane.index
        ijk[..., plane.rowAxis] = _viewToIndex(rows, plane.rowSign, plane.shape[0])
        ijk[..., plane.colAxis] = _viewToIndex(cols, plane.colSign, plane.shape[1])
        return ijk, np.ones(plane.shape, bool)
    _ijkToPixel, u, v, w, normal, offset = _digitalPlane(plane)
    centres = np.stack([cols + 0.5, rows + 0.5, np.zeros(rows.shape), np.ones(rows.shape)], axis=-1)
    continuous = centres @ plane.pixelToIJK[:3].T
    ijk[..., u], ijk[..., v] = np.rint(continuous[..., u]), np.rint(continuous[..., v])
    ijk[..., w] = _digitalPlaneW(ijk[..., u], ijk[..., v], normal, offset, u, v, w)
    inside = np.all((ijk >= 0) & (ijk < np.array(plane.volumeDimensions)), axis=-1)
    return ijk, inside


# ---------------------------------------------------------------------------------------------- boxes
def viewPosition(plane: SlicePlane, ras) -> np.ndarray:
    """The view pixel position (x, y) of the world RAS point ``ras`` projected onto ``plane`` (x along columns, y
    along rows; pixel (row, col) covers [col, col + 1) x [row, row + 1))."""
    ijk = np.linalg.solve(plane.ijkToWorld, np.array([*np.asarray(ras, float)[:3], 1.0]))
    if not plane.aligned:
        return (np.linalg.inv(plane.pixelToIJK) @ ijk)[:2]
    return np.array(
        [
            _indexToView(ijk[plane.colAxis], plane.colSign, plane.shape[1]),
            _indexToView(ijk[plane.rowAxis], plane.rowSign, plane.shape[0]),
        ]
    )


def _indexToView(index: float, sign: int, size: int) -> float:
    """View position along a row or column of the continuous voxel index ``index`` (voxel centres at integers)."""
    return index + 0.5 if sign > 0 else size - 0.5 - index


def viewBox(plane: SlicePlane, corners, viewName: str = "", volumeName: str = "") -> np.ndarray:
    """The box (x0, y0, x1, y1) in view pixel positions spanned by two opposite corners in world RAS (a rectangle drawn
    on the view: its sides run along the view's rows and columns), clipped to the view image.

    Raises SegmentationError when the corners span no area, or the box misses the image after clipping.
    """
    first, second = (viewPosition(plane, corner) for corner in corners)
    low, high = np.minimum(first, second), np.maximum(first, second)
    if not np.all(high - low > 1e-6):
        raise SegmentationError(_("the box is empty: drag from one corner of the structure to the opposite corner"))
    rows, cols = plane.shape
    clippedLow, clippedHigh = np.maximum(low, 0.0), np.minimum(high, [cols, rows])
    if not np.all(clippedHigh > clippedLow):
        raise SegmentationError(
            _("the box drawn on the {view} view lies outside '{volume}' on this slice; draw it over the image").format(
                view=viewName or _("slice"), volume=volumeName
            )
        )
    return np.array([clippedLow[0], clippedLow[1], clippedHigh[0], clippedHigh[1]])


def maskBox(mask: np.ndarray) -> Optional[np.ndarray]:
    """The box (x0, y0, x1, y1) of view pixel positions that just holds every pixel of a (rows, cols) mask; None when
    the mask is empty."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)
