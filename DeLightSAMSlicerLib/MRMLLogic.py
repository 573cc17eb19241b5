"""MRML logic of the De-LightSAM extension: segment the slice a view shows, every slice, or every frame, with
De-LightSAM; or what lies inside a box drawn on a view, with LiteMedSAM.

Imports only Slicer's MRML classes, vtk, numpy and DeLightSAMLib (no Qt), so the same code runs inside Slicer and
under the PyPI ``slicer-core`` package in CI. All runs share one options object and one loop: view images (raw
voxels and the display window) go to the predictor (De-LightSAM's, or LiteMedSAM's with the box in the view image's
pixels), masks come back, and each batch is resampled into the editor's modifier geometry (``Labelmaps``) and
written through a *writer* — the Segment Editor effect inside Slicer, or :class:`EditorLogicWriter` around Slicer's ``vtkSlicerSegmentEditorLogic`` anywhere else — so the
editor's undo, editable area, intensity range and overwrite settings hold. This module never touches segment
voxels itself; it reads them back to report what changed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
import slicer

from DeLightSAMLib.intensity import Window, to_rgb8
from DeLightSAMLib.progress import ProgressCallback  # progress(done, total); raise SegmentationCancelled to stop
from DeLightSAMLib.registry import MODALITIES
from DeLightSAMSlicerLib.CleanUp import fillHoles, keepLargestComponent
from DeLightSAMSlicerLib.Frames import FramesSnapshot, fillMissingItems
from DeLightSAMSlicerLib.Geometry import (
    SegmentationError,
    SlicePlane,
    displayWindow,
    maskBox,
    slicePlane,
    sliceVoxels,
    viewBox,
    viewImage,
    voxelArray,
    worldFromNode,
)
from DeLightSAMSlicerLib.i18n import tr as _
from DeLightSAMSlicerLib.Labelmaps import BatchLabelmap, ModifierGeometry, segmentViewMask, segmentVoxels
from DeLightSAMSlicerLib.Models import AUTOMATIC, BOX

logger = logging.getLogger(__name__)

# provider(model) returns the predictor of a model (Models.AUTOMATIC or BOX), loading it (and asking the user) on
# first use
PredictorProvider = Callable[[str], object]


class SegmentationCancelled(Exception):
    """Raised by a progress callback to stop a batch run; what was written so far is kept."""


@dataclass(frozen=True)
class SegmentationOptions:
    """How to segment and write, shared by one slice, all slices and all frames.

    ``box`` chooses the model: None, De-LightSAM segments the whole view for ``modality``; a box (x0, y0, x1, y1) in
    view pixel positions (``Geometry``: x along columns, the image spans 0..cols and 0..rows), LiteMedSAM segments
    what lies inside it. The loop hands the options to ``_predictMasks``, the only step that depends on how a mask
    is predicted; writing is the same for every mask.
    """

    modality: Union[str, int] = MODALITIES[0]
    threshold: float = 0.5
    replace: bool = False  # the covered voxels become exactly the prediction (an empty one clears them)
    keepLargestComponent: bool = False
    fillHoles: bool = False
    box: Optional[tuple] = None  # drawn for one run, never stored

    # The Segment Editor effect keeps the options in its parameter node under these names (field -> parameter),
    # declared here once; parameter values are strings, booleans "0"/"1". Every field but the box is a parameter.
    PARAMETER_NAMES = {
        "modality": "Modality",
        "threshold": "Threshold",
        "replace": "Replace",
        "keepLargestComponent": "KeepLargest",
        "fillHoles": "FillHoles",
    }

    def toParameters(self) -> dict[str, str]:
        """Parameter name -> value, as the effect's parameter node stores them."""
        return {name: _parameterText(getattr(self, field)) for field, name in self.PARAMETER_NAMES.items()}

    @classmethod
    def fromParameters(cls, parameters: Mapping[str, str]) -> "SegmentationOptions":
        """Options from parameter values (missing or empty ones keep their defaults)."""
        values = {}
        defaults = {field.name: field.default for field in dataclasses.fields(cls)}
        for field, name in cls.PARAMETER_NAMES.items():
            text = parameters.get(name, "")
            if text in ("", None):
                continue
            default = defaults[field]
            if isinstance(default, bool):
                values[field] = str(text).strip().lower() not in ("0", "false", "")
            elif isinstance(default, float):
                values[field] = float(text)
            else:
                values[field] = str(text)
        return cls(**values)

    @property
    def model(self) -> str:
        """The model these options run: Models.BOX with a box, else Models.AUTOMATIC."""
        return AUTOMATIC if self.box is None else BOX

    @classmethod
    def of(cls, options: Union["SegmentationOptions", str, int], **changes) -> "SegmentationOptions":
        """``options`` itself, or a modality name or index as shorthand; keyword arguments replace fields."""
        if not isinstance(options, cls):
            options = cls(modality=options)
        return dataclasses.replace(options, **changes) if changes else options

    def cleanUp(self, mask: np.ndarray) -> np.ndarray:
        """The 2D mask as it is written: holes filled, then only the largest region, when asked for."""
        if self.fillHoles:
            mask = fillHoles(mask)
        if self.keepLargestComponent:
            mask = keepLargestComponent(mask)
        return mask


def _parameterText(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


@dataclass
class SliceView:
    """What a view shows of the source volume: raw values (rows, cols[, c]), the window that maps them to the 8 bits
    on screen, and the plane they come from. NaN marks samples outside the volume (oblique views)."""

    image: np.ndarray
    window: Window
    plane: SlicePlane

    def rgb8(self) -> np.ndarray:
        """(rows, cols, 3) uint8: what the network sees, through the library's one pixel pipeline."""
        return to_rgb8(self.image, self.window)


class LabelmapWriter(Protocol):
    """Where masks go: labelmaps in ``modifierGeometry()``'s lattice are added to or removed from the segment with
    the editor's masking and overwrite settings."""

    def modifierGeometry(self) -> ModifierGeometry: ...

    def saveStateForUndo(self) -> None: ...

    def add(self, labelmap) -> None: ...

    def remove(self, labelmap) -> None: ...


class EditorLogicWriter:
    """Writes through ``vtkSlicerSegmentEditorLogic`` (Slicer 5.10 and later): the editor's masking, overwrite and
    undo apply. Its modifier geometry is the segmentation's reference geometry, which the editor logic also builds
    its modifier labelmap, editable-area mask and aligned source volume from."""

    def __init__(self, editorLogic, segmentationNode, segmentId: str) -> None:
        self.editorLogic = editorLogic
        self.segmentationNode = segmentationNode
        self.segmentId = segmentId

    def modifierGeometry(self) -> ModifierGeometry:
        geometry = self.editorLogic.GetReferenceImageGeometryString()
        if not geometry:
            raise SegmentationError(
                _("'{segmentation}' has no reference geometry; choose a source volume").format(
                    segmentation=self.segmentationNode.GetName()
                )
            )
        return ModifierGeometry.fromSerialized(geometry)

    def saveStateForUndo(self) -> None:
        self.editorLogic.SaveStateForUndo()

    def add(self, labelmap) -> None:
        self._modify(labelmap, self.editorLogic.ModificationModeAdd)

    def remove(self, labelmap) -> None:
        self._modify(labelmap, self.editorLogic.ModificationModeRemove)

    def _modify(self, labelmap, mode) -> None:
        self.editorLogic.ModifySegmentByLabelmap(self.segmentationNode, self.segmentId, labelmap, mode, True, False)


@dataclass
class SliceResult:
    """What one run did: segment voxels added and removed (read back after writing), where, and how long it took."""

    voxelsAdded: int
    voxelsRemoved: int
    sliceCount: int
    seconds: float
    description: str
    cancelled: bool = False
    sceneClosed: bool = False

    @property
    def voxelCount(self) -> int:
        """Voxels of the segment that changed."""
        return self.voxelsAdded + self.voxelsRemoved


@dataclass
class _Job:
    """The items of one run: ``viewAt(i)`` shows item i; ``selectForWriting(i)``, for frames, makes item i's
    segmentation the one the writer modifies (then each item is written on its own; otherwise a batch at once)."""

    count: int
    viewAt: Callable[[int], SliceView]
    selectForWriting: Optional[Callable[[int], None]] = None
    undoable: bool = True  # one editor undo state before the first change


class DeLightSAMMRMLLogic:
    """Segment what Slicer's views show with De-LightSAM (by modality) or LiteMedSAM (by box).

    ``predictorProvider(model)`` is called at the start of every run and returns that model's predictor; the owner of
    the predictors (the session) loads each on first use, asking to install or download. A predictor object may be
    passed instead: it serves every run.
    """

    def __init__(self, predictorProvider: Union[PredictorProvider, object]) -> None:
        if hasattr(predictorProvider, "set_image"):
            predictor = predictorProvider
            predictorProvider = lambda model=AUTOMATIC: predictor  # noqa: E731
        self.predictorProvider = predictorProvider
        self.batchSize = 4  # slices or frames per network call and per progress report (and chance to cancel)
        self.editorLogic = None  # created on first write without an explicit writer
        self._framesSnapshot: Optional[FramesSnapshot] = None  # for undoLastFrames

    # ------------------------------------------------------------------ what a view shows
    def sliceView(self, sourceVolumeNode, sliceNode) -> SliceView:
        voxels = self._checkedVoxels(sourceVolumeNode)
        if sliceNode is None:
            raise SegmentationError(_("no slice view selected; choose the view whose slice to segment"))
        plane = slicePlane(sourceVolumeNode, sliceNode)
        return SliceView(viewImage(voxels, plane), displayWindow(sourceVolumeNode, voxels), plane)

    def viewImage(self, sourceVolumeNode, sliceNode) -> tuple[np.ndarray, SlicePlane]:
        """The (rows, cols, 3) uint8 image the network sees of the slice ``sliceNode`` shows, and its plane."""
        view = self.sliceView(sourceVolumeNode, sliceNode)
        return view.rgb8(), view.plane

    # ------------------------------------------------------------------ the three runs
    def segmentSlice(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        writer: Optional[LabelmapWriter] = None,
        **changes,
    ) -> SliceResult:
        """Predict the slice ``sliceNode`` shows and write it into that slice of ``segmentId``. One undo step.

        ``options``: :class:`SegmentationOptions` or a modality; keyword arguments replace its fields.
        """
        options = SegmentationOptions.of(options, **changes)
        self._checkSegment(segmentationNode, segmentId)
        view = self.sliceView(sourceVolumeNode, sliceNode)
        return self._segmentView(view, sourceVolumeNode, segmentationNode, segmentId, options, writer)

    def segmentBox(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        corners,
        writer: Optional[LabelmapWriter] = None,
        **changes,
    ) -> SliceResult:
        """LiteMedSAM's mask of what lies inside a box drawn on the view ``sliceNode``: ``corners`` are two opposite
        corners in world RAS (where the drag started and ended). The box is mapped to the pixels of the image the
        model sees through the same geometry as the mask, and clipped to it; written as ``segmentSlice`` writes
        (one undo step, the editor's masking and overwrite settings, ``replace``)."""
        options = SegmentationOptions.of(options, **changes)
        self._checkSegment(segmentationNode, segmentId)
        view = self.sliceView(sourceVolumeNode, sliceNode)
        box = viewBox(view.plane, corners, sliceNode.GetName(), sourceVolumeNode.GetName())
        return self._segmentView(
            view,
            sourceVolumeNode,
            segmentationNode,
            segmentId,
            SegmentationOptions.of(options, box=tuple(float(value) for value in box)),
            writer,
        )

    def segmentBoxFromSegment(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        writer: Optional[LabelmapWriter] = None,
        **changes,
    ) -> SliceResult:
        """Refine the segment on the slice ``sliceNode`` shows: LiteMedSAM segments the box that just holds the
        segment's pixels on that view, and the segment's part of the slice becomes that mask (``replace``)."""
        options = SegmentationOptions.of(options, **changes)
        self._checkSegment(segmentationNode, segmentId)
        view = self.sliceView(sourceVolumeNode, sliceNode)
        box = maskBox(segmentViewMask(view.plane, segmentationNode, segmentId))
        if box is None:
            raise SegmentationError(
                _(
                    "'{segment}' has nothing on this slice of the {view} view ({plane}) to draw a box around; segment it "
                    "first (Apply, or paint), or draw a box"
                ).format(
                    segment=segmentationNode.GetSegmentation().GetSegment(segmentId).GetName(),
                    view=sliceNode.GetName(),
                    plane=view.plane.description,
                )
            )
        options = SegmentationOptions.of(options, box=tuple(float(value) for value in box), replace=True)
        return self._segmentView(view, sourceVolumeNode, segmentationNode, segmentId, options, writer)

    def _segmentView(
        self,
        view: SliceView,
        sourceVolumeNode,
        segmentationNode,
        segmentId: str,
        options: SegmentationOptions,
        writer: Optional[LabelmapWriter],
    ) -> SliceResult:
        """Predict and write one view (one undo step)."""
        result = self._run(_Job(1, lambda _item: view), sourceVolumeNode, segmentationNode, segmentId, options, writer)
        result.description = view.plane.description
        if options.box is not None:
            result.description = _("box of {width} x {height} px on {plane}").format(
                width=f"{options.box[2] - options.box[0]:.0f}",
                height=f"{options.box[3] - options.box[1]:.0f}",
                plane=view.plane.description,
            )
        return result

    def segmentAllSlices(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        writer: Optional[LabelmapWriter] = None,
        *,
        progress: Optional[ProgressCallback] = None,
        **changes,
    ) -> SliceResult:
        """Every slice of the volume along the view's normal, in batches; one undo step for the whole run.

        Slices with one value everywhere (padding, air outside the field of view) cost one network pass per distinct
        value (the predictor reuses the result). Cancelling (``SegmentationCancelled`` from ``progress``) keeps the
        slices already written.
        """
        options = self._withoutBox(SegmentationOptions.of(options, **changes))
        self._checkSegment(segmentationNode, segmentId)
        voxels = self._checkedVoxels(sourceVolumeNode)
        if sliceNode is None:
            raise SegmentationError(_("no slice view selected; choose the view that gives the slicing direction"))
        plane = slicePlane(sourceVolumeNode, sliceNode, anyOffset=True)
        window = displayWindow(sourceVolumeNode, voxels)  # one window for the whole volume, as the user sees it

        def viewAt(index):
            planeAtIndex = dataclasses.replace(plane, index=index)
            return SliceView(viewImage(voxels, planeAtIndex), window, planeAtIndex)

        total = plane.volumeDimensions[plane.axis]
        result = self._run(
            _Job(total, viewAt), sourceVolumeNode, segmentationNode, segmentId, options, writer, progress
        )
        result.description = _("{done} of {total} slices along {axis}").format(
            done=result.sliceCount, total=total, axis="IJK"[plane.axis]
        )
        return result

    def segmentAllFrames(
        self,
        browserNode,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        writer: Optional[LabelmapWriter] = None,
        *,
        progress: Optional[ProgressCallback] = None,
        **changes,
    ) -> SliceResult:
        """The slice ``sliceNode`` shows, in every frame of a sequence; each frame's mask goes into the matching
        item of the segmentation sequence synchronised with ``browserNode`` (one modification per frame).

        ``sourceVolumeNode`` and ``segmentationNode`` are the browser's proxy nodes. Frames whose segmentation
        item is missing get an empty copy of the current segments first, so nothing leaks between frames.
        Undo: ``undoLastFrames()`` restores every item as it was before the run. The editor's undo cannot: Slicer
        clears the editor's undo history whenever the shown frame changes (each frame has its own segmentation
        object, and ``vtkSegmentationHistory::SetSegmentation`` drops its states), so no undo state is saved.
        Cancelling keeps the frames already written.
        """
        options = self._withoutBox(SegmentationOptions.of(options, **changes))
        self._checkSegment(segmentationNode, segmentId)
        if browserNode is None:
            raise SegmentationError(_("no sequence browser: load the clip as a sequence (e.g. a 4D or cine volume)"))
        volumeSequence = browserNode.GetSequenceNode(sourceVolumeNode) if sourceVolumeNode is not None else None
        if volumeSequence is None:
            raise SegmentationError(
                _(
                    "'{volume}' is not a frame of the sequence browser '{browser}'; choose the browser's volume as "
                    "source volume"
                ).format(
                    volume=sourceVolumeNode.GetName() if sourceVolumeNode else _("the source volume"),
                    browser=browserNode.GetName(),
                )
            )
        segmentationSequence = browserNode.GetSequenceNode(segmentationNode)
        if segmentationSequence is None:
            raise SegmentationError(
                _(
                    "'{segmentation}' is not synchronised with the sequence browser '{browser}'; add it in the Sequences "
                    "module (Synchronized nodes) so that each frame has its own segmentation"
                ).format(segmentation=segmentationNode.GetName(), browser=browserNode.GetName())
            )
        self._checkedVoxels(sourceVolumeNode)
        if sliceNode is None:
            raise SegmentationError(_("no slice view selected; choose the view whose slice to segment"))
        predictor = self.predictorProvider(options.model)  # load the model (asking to install, download) first
        primary = browserNode.GetMasterSequenceNode()
        indexValues = [primary.GetNthIndexValue(i) for i in range(primary.GetNumberOfDataNodes())]
        self._framesSnapshot = FramesSnapshot(browserNode, segmentationSequence, segmentationNode, indexValues)
        fillMissingItems(segmentationSequence, segmentationNode, indexValues)
        saveChanges = browserNode.GetSaveChanges(segmentationSequence)
        browserNode.SetSaveChanges(segmentationSequence, True)  # the proxy's edits are stored in the frame's item
        startItem = browserNode.GetSelectedItemNumber()

        def viewAt(item):
            browserNode.SetSelectedItemNumber(item)
            return self.sliceView(sourceVolumeNode, sliceNode)

        result = None
        try:
            job = _Job(len(indexValues), viewAt, browserNode.SetSelectedItemNumber, undoable=False)
            result = self._run(job, sourceVolumeNode, segmentationNode, segmentId, options, writer, progress, predictor)
        finally:
            if result is None or not result.sceneClosed:
                browserNode.SetSelectedItemNumber(startItem)
                browserNode.SetSaveChanges(segmentationSequence, saveChanges)
        result.description = _("{done} of {total} frames").format(done=result.sliceCount, total=len(indexValues))
        return result

    @property
    def framesSnapshot(self) -> Optional[FramesSnapshot]:
        """The frames as they were before the last ``segmentAllFrames``; None once used, or once its scene closed."""
        if self._framesSnapshot is not None and not self._framesSnapshot.inScene():
            self._framesSnapshot = None
        return self._framesSnapshot

    def clearFramesSnapshot(self) -> None:
        """Forget the snapshot (the effect calls this when the scene closes, to free its copies at once)."""
        self._framesSnapshot = None

    def undoLastFrames(self) -> bool:
        """Put every frame's segmentation back as it was before the last ``segmentAllFrames``; False if none."""
        snapshot, self._framesSnapshot = self.framesSnapshot, None
        if snapshot is None:
            return False
        snapshot.restore()
        return True

    # ------------------------------------------------------------------ the loop
    def _run(
        self,
        job: _Job,
        sourceVolumeNode,
        segmentationNode,
        segmentId: str,
        options: SegmentationOptions,
        writer: Optional[LabelmapWriter],
        progress: Optional[ProgressCallback] = None,
        predictor=None,
    ) -> SliceResult:
        """View, predict and write ``job``'s items ``batchSize`` at a time; report progress per batch; stop
        cleanly when ``progress`` cancels or the scene is closed (nothing in it is touched after that)."""
        start = time.perf_counter()
        predictor = predictor or self.predictorProvider(options.model)  # before anything in the scene changes
        writer = writer or self._defaultWriter(sourceVolumeNode, segmentationNode, segmentId)
        if job.undoable:
            writer = _UndoStateBeforeFirstChange(writer)
        added = removed = done = covered = 0
        cancelled = False
        with _SceneCloseObservation(segmentationNode.GetScene()) as scene:
            try:
                for first in range(0, job.count, self.batchSize):
                    items = list(range(first, min(first + self.batchSize, job.count)))
                    views = [job.viewAt(item) for item in items]
                    masks = self._predictMasks(predictor, views, options)
                    batch = list(zip(items, views, masks))
                    groups = [batch] if job.selectForWriting is None else [[entry] for entry in batch]
                    for group in groups:
                        if job.selectForWriting is not None:
                            job.selectForWriting(group[0][0])
                        change = self._write(group, segmentationNode, segmentId, options, writer)
                        if change is not None:
                            added, removed, covered = added + change[0], removed + change[1], covered + len(group)
                    done += len(items)
                    if progress is not None:
                        progress(done, job.count)
                    if scene.closed:
                        break
            except SegmentationCancelled:
                cancelled = True
        if done and not covered and not scene.closed:
            raise SegmentationError(
                _(
                    "the slice covers no voxel of '{segmentation}' (it lies outside the segmentation's geometry, or "
                    "between its voxels where they are coarser than the volume's); give the segmentation the geometry of "
                    "'{volume}' (Segment Editor: Specify geometry) and apply again"
                ).format(segmentation=segmentationNode.GetName(), volume=sourceVolumeNode.GetName())
            )
        return SliceResult(
            added, removed, done, time.perf_counter() - start, "", cancelled or scene.closed, scene.closed
        )

    @staticmethod
    def _predictMasks(predictor, views: Sequence[SliceView], options: SegmentationOptions) -> list[np.ndarray]:
        """(rows, cols) bool masks of ``views``: the raw view and its display window go to the predictor, which
        converts them to 8 bits (one pixel pipeline, the library's). One view: ``set_image`` then ``predict``, so the
        image stays cached in the predictor; several: ``predict_batch``, per display window. With a box: LiteMedSAM's
        mask of the box (its predictor keeps the encoding of an unchanged image, ``Models.ReusedEncoding``)."""
        if options.box is not None:
            masks = []
            for view in views:
                predictor.set_image(view.image, view.window)
                masks.append(predictor.predict(np.asarray(options.box, np.float64), threshold=options.threshold).mask)
            return masks
        if len(views) == 1:
            predictor.set_image(views[0].image, views[0].window)
            return [predictor.predict(options.modality, threshold=options.threshold).mask]
        masks: list = [None] * len(views)
        byWindow: dict = {}
        for index, view in enumerate(views):
            byWindow.setdefault(tuple(float(value) for value in view.window), []).append(index)
        for window, indices in byWindow.items():
            results = predictor.predict_batch(
                [views[i].image for i in indices], options.modality, threshold=options.threshold, window=window
            )
            for index, result in zip(indices, results):
                masks[index] = result.mask
        return masks

    def _write(
        self, group, segmentationNode, segmentId: str, options: SegmentationOptions, writer: LabelmapWriter
    ) -> Optional[tuple[int, int]]:
        """Write the masks of ``group`` (item, view, mask) as one labelmap in the modifier geometry (a Remove of the
        covered voxels first, with ``replace``); returns the segment's voxels (added, removed), read back, or None
        when the slices lie outside the modifier geometry."""
        geometry = writer.modifierGeometry()
        batch = BatchLabelmap(geometry)
        worldToSegmentation = np.linalg.inv(worldFromNode(segmentationNode))
        for _item, view, mask in group:
            ijk, values = sliceVoxels(options.cleanUp(np.asarray(mask, bool)), view.plane)
            batch.add(ijk, values, worldToSegmentation @ view.plane.ijkToWorld)
        if batch.empty:
            return None
        extent, mask, covered = batch.arrays()
        before = segmentVoxels(segmentationNode, segmentId, geometry, extent)
        if options.replace and (covered > mask).any():
            writer.remove(geometry.image(covered & (1 - mask), extent))
        if mask.any():
            writer.add(geometry.image(mask, extent))
        after = segmentVoxels(segmentationNode, segmentId, geometry, extent)
        return int((after > before).sum()), int((after < before).sum())

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _withoutBox(options: SegmentationOptions) -> SegmentationOptions:
        if options.box is not None:
            raise ValueError("a box is drawn on one slice: use segmentBox or segmentSlice, not a batch run")
        return options

    @staticmethod
    def _checkedVoxels(volumeNode) -> np.ndarray:
        if volumeNode is None:
            raise SegmentationError(_("no source volume selected; choose the volume to segment in the Segment Editor"))
        if not volumeNode.IsA("vtkMRMLScalarVolumeNode") and not volumeNode.IsA("vtkMRMLVectorVolumeNode"):
            raise SegmentationError(_("'{volume}' is not a scalar or RGB volume").format(volume=volumeNode.GetName()))
        voxels = voxelArray(volumeNode)
        components = voxels.shape[3] if voxels.ndim == 4 else 1
        if components not in (1, 3, 4):
            raise SegmentationError(
                _(
                    "'{volume}' has {components} values per voxel (a 4D or multi-channel volume); load it as a sequence "
                    "and segment one frame, or extract one channel first"
                ).format(volume=volumeNode.GetName(), components=components)
            )
        return voxels

    @staticmethod
    def _checkSegment(segmentationNode, segmentId: str) -> None:
        if segmentationNode is None:
            raise SegmentationError(_("no segmentation selected; create or choose one in the Segment Editor"))
        if not segmentId or segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise SegmentationError(
                _("segment '{segment}' is not in '{segmentation}'; select a segment").format(
                    segment=segmentId, segmentation=segmentationNode.GetName()
                )
            )

    def _defaultWriter(self, sourceVolumeNode, segmentationNode, segmentId: str) -> EditorLogicWriter:
        """A writer on this logic's own segment editor logic (scripts and tests; the effect passes its own).

        One editor logic per scene, kept, so that ``editorLogic.Undo()`` undoes the last run. Slicer 5.8 has no
        ``vtkSlicerSegmentEditorLogic``: there, only the effect (Segment Editor) can write.
        """
        scene = segmentationNode.GetScene()
        if scene is None:
            raise SegmentationError(
                _("'{segmentation}' is not in a scene").format(segmentation=segmentationNode.GetName())
            )
        editorLogicClass = getattr(slicer, "vtkSlicerSegmentEditorLogic", None)
        if editorLogicClass is None:
            raise SegmentationError(
                _(
                    "writing a segment outside the Segment Editor needs Slicer 5.10 or later (vtkSlicerSegmentEditorLogic); "
                    "in this Slicer use the De-LightSAM effect in the Segment Editor"
                )
            )
        if self.editorLogic is None or self.editorLogic.GetMRMLScene() is not scene:
            if not scene.IsNodeClassRegistered("vtkMRMLSegmentEditorNode"):
                scene.RegisterNodeClass(slicer.vtkMRMLSegmentEditorNode())
            editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode", "DeLightSAMEditor")
            editorNode.SetHideFromEditors(True)
            self.editorLogic = editorLogicClass()
            self.editorLogic.SetMRMLScene(scene)
            self.editorLogic.SetSegmentEditorNode(editorNode)
        self.editorLogic.SetSegmentationNode(segmentationNode)
        self.editorLogic.SetSourceVolumeNode(sourceVolumeNode)
        self.editorLogic.GetSegmentEditorNode().SetSelectedSegmentID(segmentId)
        return EditorLogicWriter(self.editorLogic, segmentationNode, segmentId)


class _UndoStateBeforeFirstChange:
    """A writer that saves the editor's undo state once, just before its first change: a run that writes nothing
    leaves no undo step behind."""

    def __init__(self, writer: LabelmapWriter) -> None:
        self.writer = writer
        self.saved = False

    def modifierGeometry(self) -> ModifierGeometry:
        return self.writer.modifierGeometry()

    def add(self, labelmap) -> None:
        self._saveOnce()
        self.writer.add(labelmap)

    def remove(self, labelmap) -> None:
        self._saveOnce()
        self.writer.remove(labelmap)

    def _saveOnce(self) -> None:
        if not self.saved:
            self.writer.saveStateForUndo()
            self.saved = True


class _SceneCloseObservation:
    """Watches a scene's StartCloseEvent during a run: ``closed`` says whether it came. Only for the length of a
    run: an observer left on a scene would call into Python while the scene is destroyed."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.closed = False
        self._tag = None

    def start(self) -> "_SceneCloseObservation":
        if self.scene is not None and self._tag is None:
            self._tag = self.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, self._closing)
        return self

    def stop(self) -> None:
        if self._tag is not None:
            self.scene.RemoveObserver(self._tag)
            self._tag = None

    def _closing(self, caller, event) -> None:
        self.closed = True

    def __enter__(self) -> "_SceneCloseObservation":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
