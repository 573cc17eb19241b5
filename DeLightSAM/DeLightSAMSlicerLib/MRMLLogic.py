"""MRML logic of the De-LightSAM extension: segment the slice a view shows, every slice, or every frame.

Imports only Slicer's MRML classes, vtk, numpy and DeLightSAMLib (no Qt), so the same code runs inside Slicer and
under the PyPI ``slicer-core`` package in CI. Results are written through a *writer* — the Segment Editor effect
inside Slicer (undo, masking and overwrite settings), or :class:`EditorLogicWriter` around Slicer's
``vtkSlicerSegmentEditorLogic`` anywhere else — so this module never touches segment voxels directly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace as dataclassReplace
from typing import Callable, Optional, Protocol

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
from DeLightSAMGeometry import (
    SegmentationError,
    SliceLabelmaps,
    SlicePlane,
    _worldFromNode,
    displayWindow,
    slicePlane,
    sliceLabelmaps,
    toRGB8,
    viewImage,
    voxelArray,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (done, total); raise SegmentationCancelled from it to stop


class SegmentationCancelled(Exception):
    """Raised by a progress callback to stop a batch run; what was written so far is kept."""


class LabelmapWriter(Protocol):
    """Where results go. ``apply`` adds ``labelmaps.mask`` to the segment; with ``replace`` it first removes
    ``labelmaps.background`` (the slice's voxels outside the mask)."""

    def saveStateForUndo(self) -> None: ...

    def apply(self, labelmaps: SliceLabelmaps, replace: bool) -> None: ...


class EditorLogicWriter:
    """Writes through ``vtkSlicerSegmentEditorLogic``: the editor's masking, overwrite and undo apply."""

    def __init__(self, editorLogic, segmentationNode, segmentId: str) -> None:
        self.editorLogic = editorLogic
        self.segmentationNode = segmentationNode
        self.segmentId = segmentId

    def saveStateForUndo(self) -> None:
        self.editorLogic.SaveStateForUndo()

    def apply(self, labelmaps: SliceLabelmaps, replace: bool) -> None:
        logic = self.editorLogic
        if replace:
            logic.ModifySegmentByLabelmap(self.segmentationNode, self.segmentId, labelmaps.background,
                                          logic.ModificationModeRemove, True, False)
        if labelmaps.voxelCount:
            logic.ModifySegmentByLabelmap(self.segmentationNode, self.segmentId, labelmaps.mask,
                                          logic.ModificationModeAdd, True, False)


@dataclass
class SliceResult:
    """What one Apply did: voxels written, where, and how long it took."""

    voxelCount: int
    sliceCount: int
    seconds: float
    description: str
    cancelled: bool = False


@dataclass
class PostProcessing:
    """Optional clean-up of each 2D mask before it is written."""

    keepLargestComponent: bool = False
    fillHoles: bool = False

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        if self.fillHoles:
            mask = fillHoles(mask)
        if self.keepLargestComponent:
            mask = keepLargestComponent(mask)
        return mask


class DeLightSAMMRMLLogic:
    """Segment what Slicer's views show with a De-LightSAM predictor.

    ``predictorFactory`` is called once, on first use, to build the predictor (loading torch and the checkpoint is
    slow, so nothing happens at construction). Pass ``predictor`` directly to reuse one.
    """

    def __init__(self, predictor=None, predictorFactory: Optional[Callable[[], object]] = None) -> None:
        self._predictor = predictor
        self.predictorFactory = predictorFactory
        self.batchSize = 4  # slices or frames per progress report (and per chance to cancel)
        self.editorLogic = None  # created on first write without an explicit writer
        self.framesSnapshot: Optional[FramesSnapshot] = None  # for undoLastFrames

    # ------------------------------------------------------------------ predictor
    @property
    def predictor(self):
        if self._predictor is None:
            if self.predictorFactory is None:
                raise SegmentationError("no De-LightSAM model is loaded; choose a checkpoint in the De-LightSAM module")
            self._predictor = self.predictorFactory()
        return self._predictor

    @predictor.setter
    def predictor(self, predictor) -> None:
        self._predictor = predictor

    # ------------------------------------------------------------------ one slice
    def viewImage(self, sourceVolumeNode, sliceNode) -> tuple[np.ndarray, SlicePlane]:
        """The (rows, cols, 3) uint8 image ``sliceNode`` shows of ``sourceVolumeNode`` and its plane."""
        voxels = self._checkedVoxels(sourceVolumeNode)
        if sliceNode is None:
            raise SegmentationError("no slice view selected; choose the view whose slice to segment")
        plane = slicePlane(sourceVolumeNode, sliceNode)
        return toRGB8(viewImage(voxels, plane), displayWindow(sourceVolumeNode, voxels)), plane

    def segmentSlice(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        modality,
        writer: Optional[LabelmapWriter] = None,
        *,
        threshold: float = 0.5,
        replace: bool = False,
        postProcessing: Optional[PostProcessing] = None,
    ) -> SliceResult:
        """Predict the slice ``sliceNode`` shows and write it into that slice of ``segmentId``.

        With ``replace`` the slice's voxels become exactly the prediction (an empty prediction clears the slice);
        otherwise the prediction is added to what the segment already has. One undo step.
        """
        start = time.perf_counter()
        self._checkSegment(segmentationNode, segmentId)
        image, plane = self.viewImage(sourceVolumeNode, sliceNode)
        predictor = self.predictor
        predictor.set_image(image)
        mask = predictor.predict(modality, threshold=threshold).mask
        if postProcessing is not None:
            mask = postProcessing(mask)
        labelmaps = sliceLabelmaps(mask, plane, self._worldToSegmentation(segmentationNode))
        writer = writer or self._defaultWriter(sourceVolumeNode, segmentationNode, segmentId)
        writer.saveStateForUndo()
        writer.apply(labelmaps, replace)
        return SliceResult(labelmaps.voxelCount, 1, time.perf_counter() - start, plane.description)

    # ------------------------------------------------------------------ all slices
    def segmentAllSlices(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        modality,
        writer: Optional[LabelmapWriter] = None,
        *,
        threshold: float = 0.5,
        replace: bool = False,
        postProcessing: Optional[PostProcessing] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> SliceResult:
        """Every slice of the volume along the view's normal, in batches; one undo step for the whole run.

        Slices with a single value everywhere (padding, air outside the field of view) cost one network pass
        per distinct value (the predictor reuses the result). Cancelling (``SegmentationCancelled`` from
        ``progress``) keeps the slices already written.
        """
        start = time.perf_counter()
        self._checkSegment(segmentationNode, segmentId)
        voxels = self._checkedVoxels(sourceVolumeNode)
        if sliceNode is None:
            raise SegmentationError("no slice view selected; choose the view that gives the slicing direction")
        plane = slicePlane(sourceVolumeNode, sliceNode, anyOffset=True)
        window = displayWindow(sourceVolumeNode, voxels)
        self.predictor  # load the model (asking to install or download) before anything in the scene changes
        writer = writer or self._defaultWriter(sourceVolumeNode, segmentationNode, segmentId)
        total = plane.volumeDimensions[plane.axis]

        def viewAt(index):
            slicePlaneAtIndex = dataclassReplace(plane, index=index)
            return toRGB8(viewImage(voxels, slicePlaneAtIndex), window), slicePlaneAtIndex

        writer.saveStateForUndo()
        written, done, cancelled = self._segmentInBatches(
            total, viewAt, None, writer, self._worldToSegmentation(segmentationNode), modality,
            threshold=threshold, replace=replace, postProcessing=postProcessing, progress=progress)
        return SliceResult(written, done, time.perf_counter() - start,
                           f"{done} of {total} slices along {'IJK'[plane.axis]}", cancelled)

    # ------------------------------------------------------------------ all frames
    def segmentAllFrames(
        self,
        browserNode,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        modality,
        writer: Optional[LabelmapWriter] = None,
        *,
        threshold: float = 0.5,
        replace: bool = False,
        postProcessing: Optional[PostProcessing] = None,
        progress: Optional[ProgressCallback] = None,
    ) -> SliceResult:
        """The slice ``sliceNode`` shows, in every frame of a sequence; each frame's mask goes into the matching
        item of the segmentation sequence synchronised with ``browserNode``.

        ``sourceVolumeNode`` and ``segmentationNode`` are the browser's proxy nodes. Frames whose segmentation
        item is missing get an empty copy of the current segments first, so nothing leaks between frames.
        ``undoLastFrames()`` restores every item as it was before the run (the editor's undo only covers the
        frame on screen). Cancelling keeps the frames already written.
        """
        start = time.perf_counter()
        self._checkSegment(segmentationNode, segmentId)
        if browserNode is None:
            raise SegmentationError("no sequence browser: load the clip as a sequence (e.g. a 4D or cine volume)")
        volumeSequence = browserNode.GetSequenceNode(sourceVolumeNode) if sourceVolumeNode is not None else None
        if volumeSequence is None:
            raise SegmentationError(
                f"'{sourceVolumeNode.GetName() if sourceVolumeNode else 'the source volume'}' is not a frame of the "
                f"sequence browser '{browserNode.GetName()}'; choose the browser's volume as source volume"
            )
        segmentationSequence = browserNode.GetSequenceNode(segmentationNode)
        if segmentationSequence is None:
            raise SegmentationError(
                f"'{segmentationNode.GetName()}' is not synchronised with the sequence browser '{browserNode.GetName()}'; "
                "add it in the Sequences module (Synchronized nodes) so that each frame has its own segmentation"
            )
        self.predictor  # load the model (asking to install or download) before anything in the scene changes
        primary = browserNode.GetMasterSequenceNode()
        indexValues = [primary.GetNthIndexValue(i) for i in range(primary.GetNumberOfDataNodes())]
        self.framesSnapshot = FramesSnapshot(browserNode, segmentationSequence, segmentationNode, indexValues)
        _fillMissingItems(segmentationSequence, segmentationNode, indexValues)
        saveChanges = browserNode.GetSaveChanges(segmentationSequence)
        browserNode.SetSaveChanges(segmentationSequence, True)  # the proxy's edits are stored in the frame's item
        startItem = browserNode.GetSelectedItemNumber()
        writer = writer or self._defaultWriter(sourceVolumeNode, segmentationNode, segmentId)

        def viewAt(item):
            browserNode.SetSelectedItemNumber(item)
            return self.viewImage(sourceVolumeNode, sliceNode)

        try:
            written, done, cancelled = self._segmentInBatches(
                len(indexValues), viewAt, browserNode.SetSelectedItemNumber, writer,
                self._worldToSegmentation(segmentationNode), modality,
                threshold=threshold, replace=replace, postProcessing=postProcessing, progress=progress)
        finally:
            browserNode.SetSelectedItemNumber(startItem)
            browserNode.SetSaveChanges(segmentationSequence, saveChanges)
        return SliceResult(written, done, time.perf_counter() - start, f"{done} of {len(indexValues)} frames", cancelled)

    def _segmentInBatches(self, count, viewAt, beforeWrite, writer, worldToSegmentation, modality, *,
                          threshold, replace, postProcessing, progress) -> tuple[int, int, bool]:
        """The loop the batch runs share: views ``viewAt(i)`` (image, plane) ``batchSize`` at a time, predicted
        together, each written (after ``beforeWrite(i)``), progress reported per batch.
        Returns (voxels written, items done, cancelled)."""
        predictor = self.predictor
        written = done = 0
        try:
            for first in range(0, count, self.batchSize):
                items = range(first, min(first + self.batchSize, count))
                views = [viewAt(item) for item in items]
                results = predictor.predict_batch([image for image, _ in views], modality, threshold=threshold)
                for item, (_, plane), result in zip(items, views, results):
                    if beforeWrite is not None:
                        beforeWrite(item)
                    mask = postProcessing(result.mask) if postProcessing else result.mask
                    labelmaps = sliceLabelmaps(mask, plane, worldToSegmentation)
                    writer.apply(labelmaps, replace)
                    written += labelmaps.voxelCount
                done += len(items)
                if progress is not None:
                    progress(done, count)
        except SegmentationCancelled:
            return written, done, True
        return written, done, False

    def undoLastFrames(self) -> bool:
        """Put every frame's segmentation back as it was before the last ``segmentAllFrames``; False if none."""
        snapshot, self.framesSnapshot = self.framesSnapshot, None
        if snapshot is None:
            return False
        snapshot.restore()
        return True

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _checkedVoxels(volumeNode) -> np.ndarray:
        if volumeNode is None:
            raise SegmentationError("no source volume selected; choose the volume to segment in the Segment Editor")
        if not volumeNode.IsA("vtkMRMLScalarVolumeNode") and not volumeNode.IsA("vtkMRMLVectorVolumeNode"):
            raise SegmentationError(f"'{volumeNode.GetName()}' is not a scalar or RGB volume")
        voxels = voxelArray(volumeNode)
        components = voxels.shape[3] if voxels.ndim == 4 else 1
        if components not in (1, 3, 4):
            raise SegmentationError(
                f"'{volumeNode.GetName()}' has {components} values per voxel (a 4D or multi-channel volume); "
                "load it as a sequence and segment one frame, or extract one channel first"
            )
        return voxels

    @staticmethod
    def _checkSegment(segmentationNode, segmentId: str) -> None:
        if segmentationNode is None:
            raise SegmentationError("no segmentation selected; create or choose one in the Segment Editor")
        if not segmentId or segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise SegmentationError(f"segment '{segmentId}' is not in '{segmentationNode.GetName()}'; select a segment")

    @staticmethod
    def _worldToSegmentation(segmentationNode) -> np.ndarray:
        return np.linalg.inv(_worldFromNode(segmentationNode))

    def _defaultWriter(self, sourceVolumeNode, segmentationNode, segmentId: str) -> EditorLogicWriter:
        """A writer on this logic's own segment editor logic (scripts and tests; the effect passes its own).

        One editor logic per scene, kept, so that ``editorLogic.Undo()`` undoes the last run.
        """
        scene = segmentationNode.GetScene()
        if scene is None:
            raise SegmentationError(f"'{segmentationNode.GetName()}' is not in a scene")
        if self.editorLogic is None or self.editorLogic.GetMRMLScene() is not scene:
            if not scene.IsNodeClassRegistered("vtkMRMLSegmentEditorNode"):
                scene.RegisterNodeClass(slicer.vtkMRMLSegmentEditorNode())
            editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "DeLightSAMEditor")
            editorNode.SetHideFromEditors(True)
            self.editorLogic = slicer.vtkSlicerSegmentEditorLogic()
            self.editorLogic.SetMRMLScene(scene)
            self.editorLogic.SetSegmentEditorNode(editorNode)
        self.editorLogic.SetSegmentationNode(segmentationNode)
        self.editorLogic.SetSourceVolumeNode(sourceVolumeNode)
        self.editorLogic.GetSegmentEditorNode().SetSelectedSegmentID(segmentId)
        return EditorLogicWriter(self.editorLogic, segmentationNode, segmentId)
# ---------------------------------------------------------------------------------------------- sequences
class FramesSnapshot:
    """Copies of every frame's segmentation before an all-frames run, to undo the whole run at once.

    Restoring goes through the proxy node, as the user's own edits do, so that the browser's proxies and
    items never share a half-restored state; frames that had no item get an empty one.
    """

    def __init__(self, browserNode, sequenceNode, segmentationNode, indexValues: list) -> None:
        self.browserNode = browserNode
        self.sequenceNode = sequenceNode
        self.segmentationNode = segmentationNode
        self.empty = _emptyCopy(segmentationNode)
        self.items = []
        for value in indexValues:
            node = sequenceNode.GetDataNodeAtValue(value, True)
            self.items.append(_copyNode(node) if node is not None else None)

    def restore(self) -> None:
        browser, sequence = self.browserNode, self.sequenceNode
        current, saveChanges = browser.GetSelectedItemNumber(), browser.GetSaveChanges(sequence)
        browser.SetSaveChanges(sequence, True)
        try:
            for item, saved in enumerate(self.items):
                browser.SetSelectedItemNumber(item)
                self.segmentationNode.GetSegmentation().DeepCopy((saved or self.empty).GetSegmentation())
        finally:
            browser.SetSelectedItemNumber(current)
            browser.SetSaveChanges(sequence, saveChanges)


def _copyNode(node):
    copy = node.CreateNodeInstance()
    copy.Copy(node)
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = slicer.vtkSegmentation()
        segmentation.DeepCopy(node.GetSegmentation())
        copy.SetAndObserveSegmentation(segmentation)
    return copy


def _fillMissingItems(sequenceNode, segmentationNode, indexValues: list) -> None:
    """Give every frame without a segmentation item an empty copy of ``segmentationNode``'s segments."""
    for value in indexValues:
        if sequenceNode.GetDataNodeAtValue(value, True) is None:
            sequenceNode.SetDataNodeAtValue(_emptyCopy(segmentationNode), value)


def _emptyCopy(segmentationNode):
    """The same segments (names, colours, IDs) with no voxels."""
    empty = _copyNode(segmentationNode)
    for segmentId in list(empty.GetSegmentation().GetSegmentIDs()):
        empty.GetSegmentation().ClearSegment(segmentId)
    return empty


# ---------------------------------------------------------------------------------------------- clean-up
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
    sizes = [connectivity.GetExtractedRegionSizes().GetValue(i) for i in range(connectivity.GetNumberOfExtractedRegions())]
    return labels.astype(np.int64), sizes
