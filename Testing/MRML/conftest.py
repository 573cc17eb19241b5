"""Real MRML scenes through the PyPI ``slicer-core`` package (Slicer's MRML and logic libraries, no Qt)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install -e '.[slicer-test]')")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.fail("the 'slicer' module is not slicer-core (another PyPI 'slicer' package shadows it)")
import vtk  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: DeLightSAMSlicerLib, DeLightSAMLib


class MRMLScene:
    """A scene with what the Segment Editor needs: application logic, colors, converter rules, slice views."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.appLogic = slicer.vtkMRMLApplicationLogic()
        self.appLogic.SetMRMLScene(self.scene)
        self.colorLogic = slicer.vtkMRMLColorLogic()
        self.colorLogic.SetMRMLScene(self.scene)
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        if not factory.GetConverterRules():
            factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
            factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
        if not self.scene.IsNodeClassRegistered("vtkMRMLSegmentEditorNode"):
            self.scene.RegisterNodeClass(slicer.vtkMRMLSegmentEditorNode())
        self.segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentationsLogic.SetMRMLScene(self.scene)
        self.sliceLogics = []
        slicer.mrmlScene = self.scene

    def sliceNode(self, name: str, orientation: str):
        sliceLogic = slicer.vtkMRMLSliceLogic()
        sliceLogic.SetMRMLScene(self.scene)
        self.sliceLogics.append(sliceLogic)
        node = sliceLogic.AddSliceNode(name)
        node.SetOrientation(orientation)
        return node

    def volume(self, voxels: np.ndarray, ijkToRAS: np.ndarray, name: str = "volume", display: bool = True):
        """A scalar ([k, j, i]) or vector ([k, j, i, c]) volume with the given 4x4 IJK-to-RAS."""
        className = "vtkMRMLVectorVolumeNode" if voxels.ndim == 4 else "vtkMRMLScalarVolumeNode"
        node = self.scene.AddNewNodeByClass(className, name)
        imageData = vtk.vtkImageData()
        imageData.SetDimensions(voxels.shape[2], voxels.shape[1], voxels.shape[0])
        from vtk.util import numpy_support

        flat = np.ascontiguousarray(voxels).reshape(-1, voxels.shape[3] if voxels.ndim == 4 else 1)
        array = numpy_support.numpy_to_vtk(flat if voxels.ndim == 4 else flat.ravel(), deep=True)
        imageData.GetPointData().SetScalars(array)
        node.SetAndObserveImageData(imageData)
        node.SetIJKToRASMatrix(matrix(ijkToRAS))
        if display:
            node.CreateDefaultDisplayNodes()
        return node

    def segmentation(self, referenceVolume, segmentNames=("target", "other")):
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        ids = [node.GetSegmentation().AddEmptySegment(name) for name in segmentNames]
        return node, ids

    def segmentArray(self, segmentationNode, segmentId, referenceVolume) -> np.ndarray:
        """The segment as a [k, j, i] uint8 array in ``referenceVolume``'s geometry."""
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segmentId)
        labelNode = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        assert self.segmentationsLogic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelNode, referenceVolume)
        from vtk.util import numpy_support

        image = labelNode.GetImageData()
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(
            tuple(reversed(image.GetDimensions()))
        )
        result = (values > 0).astype(np.uint8).copy()
        self.scene.RemoveNode(labelNode)
        return result

    def setSegment(self, segmentationNode, segmentId, values: np.ndarray, referenceVolume) -> None:
        """Replace a segment's voxels with ``values`` ([k, j, i], in ``referenceVolume``'s grid)."""
        from vtk.util import numpy_support

        image = slicer.vtkOrientedImageData()
        ijkToRAS = vtk.vtkMatrix4x4()
        referenceVolume.GetIJKToRASMatrix(ijkToRAS)
        image.SetImageToWorldMatrix(ijkToRAS)
        image.SetDimensions(values.shape[2], values.shape[1], values.shape[0])
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = values.astype(np.uint8).ravel()
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        assert logic.SetBinaryLabelmapToSegment(
            image, segmentationNode, segmentId, logic.MODE_REPLACE, image.GetExtent()
        )

    def close(self) -> None:
        for sliceLogic in self.sliceLogics:
            sliceLogic.SetMRMLScene(None)  # before the scene goes, or the process crashes at exit
        self.sliceLogics.clear()


def matrix(array: np.ndarray):
    result = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            result.SetElement(r, c, float(array[r][c]))
    return result


def toArray(vtkMatrix) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture()
def mrml():
    scene = MRMLScene()
    yield scene
    scene.close()


class QuadrantPredictor:
    """A stand-in model whose answer depends on position, not content: the top-left quadrant of the image.

    It records every image it was given as the network would see it (through the library's window/level to
    8 bits), so tests can check what the view showed.
    """

    def __init__(self) -> None:
        self.images = []

    def set_image(self, image, window=None):
        from DeLightSAMLib.intensity import to_rgb8

        self.images.append(to_rgb8(image, window))
        self.shape = image.shape[:2]

    @staticmethod
    def _mask(shape):
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
        return (rows < shape[0] / 2) & (cols < shape[1] / 2)

    def predict(self, modality, threshold=0.5, **kwargs):
        from DeLightSAMLib.predictor import Prediction

        return Prediction(mask=self._mask(self.shape), modality=0, self_prompt=np.zeros((32, 32), bool))

    def predict_batch(self, images, modality, threshold=0.5, batch_size=8, window=None, **kwargs):
        results = []
        for image in images:
            self.set_image(image, window)
            results.append(self.predict(modality))
        return results
