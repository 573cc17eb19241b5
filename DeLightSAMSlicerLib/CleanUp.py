"""Clean-up of a 2D mask before it is written: keep the largest region, fill holes (VTK's connectivity filter)."""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util import numpy_support


def keepLargestComponent(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected foreground region of a 2D mask (empty stays empty)."""
    labels, sizes = _components(mask)
    return labels == 1 if sizes else mask.astype(bool)  # labels are size ranks: 1 is the largest


def fillHoles(mask: np.ndarray) -> np.ndarray:
    """Fill background regions of a 2D mask that do not touch the image border."""
    background, _ = _components(~mask.astype(bool))
    border = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    holes = (background > 0) & ~np.isin(background, border[border > 0])
    return mask.astype(bool) | holes


def _components(mask: np.ndarray) -> tuple[np.ndarray, list]:
    """4-connected labels (0 = background) and region sizes, via VTK's connectivity filter."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(mask.shape[1], mask.shape[0], 1)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(mask.ravel(), deep=True))
    connectivity = vtk.vtkImageConnectivityFilter()
    connectivity.SetInputData(image)
    connectivity.SetScalarRange(1, 1)
    connectivity.SetExtractionModeToAllRegions()
    connectivity.SetLabelModeToSizeRank()
    connectivity.Update()
    labels = numpy_support.vtk_to_numpy(connectivity.GetOutput().GetPointData().GetScalars()).reshape(mask.shape)
    sizes = [
        connectivity.GetExtractedRegionSizes().GetValue(i) for i in range(connectivity.GetNumberOfExtractedRegions())
    ]
    return labels.astype(np.int64), sizes
