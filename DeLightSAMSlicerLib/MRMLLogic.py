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
from typing import Callable, Optional, Protocol, Sequence, Union

import numpy as np
import slicer

from DeLightSAMLib.progress import ProgressCallback  # progress(done, total); raise SegmentationCancelled to stop
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
from DeLightSAMSlicerLib.Models import AUTOMATIC
from DeLightSAMSlicerLib.Prediction import RunBatch, SegmentationOptions, SliceView, predictMasks

logger = logging.getLogger(__name__)

# provider(model) returns the predictor of a model (Models.AUTOMATIC or BOX), loading it (and asking the user) on
# first use
PredictorProvider = Callable[[str], object]


class SegmentationCancelled(Exception):
    """Raised by a progress callback to stop a batch run; what was written so far is kept."""


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
    segmentation the one the writer modifies (then each item is written on its own; otherwise a batch at once).
    ``prepare`` runs once, just before the first view is read (frames: the snapshot for undo), ``restore`` once at the
    end unless the scene closed; ``describe(done)`` says what the run covered."""

    count: int
    viewAt: Callable[[int], SliceView]
    describe: Callable[[int], str]
    selectForWriting: Optional[Callable[[int], None]] = None
    undoable: bool = True  # one editor undo state before the first change
    prepare: Optional[Callable[[], None]] = None
    restore: Optional[Callable[[], None]] = None


class SegmentationRun:
    """One run, split into the steps a front end schedules: ``nextBatch()`` reads views and ``write()`` writes masks
    on the thread that owns the scene (Slicer's main thread, the web app's event loop); ``predictMasks`` runs anywhere
    in between (a worker thread or process). ``finish()`` ends it (always call it). Made by the logic's ``start...``
    methods, which check their inputs and change nothing in the scene.

    Masks are written into the slices their views came from, whatever the views show by then. A scene closed during
    the run ends it: nothing in it is touched after that.
    """

    def __init__(
        self,
        job: _Job,
        sourceVolumeNode,
        segmentationNode,
        segmentId: str,
        options: SegmentationOptions,
        writer: Union[LabelmapWriter, Callable[[], LabelmapWriter]],
        batchSize: int,
    ) -> None:
        self.model = options.model  # the predictor it needs: Models.AUTOMATIC or Models.BOX
        self.total = job.count
        self.done = 0  # items written
        self.options = options
        self._job = job
        self._sourceVolumeNode = sourceVolumeNode
        self._segmentationNode = segmentationNode
        self._segmentId = segmentId
        self._writerSource = writer  # a writer, or a callable making one (on first write: no scene change before)
        self._writer: Optional[LabelmapWriter] = None
        self._batchSize = max(1, int(batchSize))
        self._next = 0
        self._added = self._removed = self._covered = 0
        self._cancelled = False
        self._prepared = False
        self._result: Optional[SliceResult] = None
        self._start = time.perf_counter()
        self._scene = _SceneCloseObservation(segmentationNode.GetScene()).start()

    @property
    def sceneClosed(self) -> bool:
        return self._scene.closed

    def cancel(self) -> None:
        """Stop after the batch under way: the next ``nextBatch()`` returns None; what was written stays."""
        self._cancelled = True

    def nextBatch(self) -> Optional[RunBatch]:
        """The views of the next ``batchSize`` items (scene thread), or None when the run is over."""
        if self._cancelled or self._scene.closed or self._result is not None or self._next >= self.total:
            return None
        if not self._prepared:
            self._prepared = True
            if self._job.prepare is not None:
                self._job.prepare()
        items = list(range(self._next, min(self._next + self._batchSize, self.total)))
        self._next = items[-1] + 1
        return RunBatch(items, [self._job.viewAt(item) for item in items], self.options)

    def write(self, batch: RunBatch, masks: Sequence[np.ndarray]) -> None:
        """Write ``predictMasks``' answer for ``batch`` (scene thread), as one labelmap per batch (frames: per item)."""
        if self._scene.closed or self._result is not None:
            return
        if len(masks) != len(batch.views):
            raise ValueError(f"{len(masks)} masks for {len(batch.views)} views")
        DeLightSAMMRMLLogic._checkSegment(self._segmentationNode, self._segmentId)
        if self._writer is None:
            source = self._writerSource
            writer = source if hasattr(source, "modifierGeometry") else source()
            self._writer = _UndoStateBeforeFirstChange(writer) if self._job.undoable else writer
        entries = list(zip(batch.items, batch.views, masks))
        groups = [entries] if self._job.selectForWriting is None else [[entry] for entry in entries]
        for group in groups:
            if self._job.selectForWriting is not None:
                self._job.selectForWriting(group[0][0])
            change = _writeGroup(group, self._segmentationNode, self._segmentId, self.options, self._writer)
            if change is not None:
                self._added += change[0]
                self._removed += change[1]
                self._covered += len(group)
        self.done += len(batch.items)

    def finish(self) -> SliceResult:
        """End the run (scene thread): stop watching the scene, put back what the run moved (frames), and say what was
        written. Raises SegmentationError when the slices covered no voxel of the segmentation. Idempotent."""
        if self._result is not None:
            return self._result
        self._scene.stop()
        closed = self._scene.closed
        if self._prepared and self._job.restore is not None and not closed:
            self._job.restore()
        self._result = SliceResult(
            self._added,
            self._removed,
            self.done,
            time.perf_counter() - self._start,
            self._job.describe(self.done),
            self._cancelled or closed,
            closed,
        )
        if self.done and not self._covered and not closed:
            raise SegmentationError(
                _(
                    "the slice covers no voxel of '{segmentation}' (it lies outside the segmentation's geometry, or "
                    "between its voxels where they are coarser than the volume's); give the segmentation the geometry of "
                    "'{volume}' (Segment Editor: Specify geometry) and apply again"
                ).format(segmentation=self._segmentationNode.GetName(), volume=self._sourceVolumeNode.GetName())
            )
        return self._result


def _writeGroup(
    group, segmentationNode, segmentId: str, options: SegmentationOptions, writer: LabelmapWriter
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

    # ------------------------------------------------------------------ runs, in one call
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
        return self.execute(
            self.startSlice(sourceVolumeNode, sliceNode, segmentationNode, segmentId, options, writer, **changes)
        )

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
        """LiteMedSAM's mask of what lies inside a box drawn on the view ``sliceNode`` (see ``startBox``)."""
        return self.execute(
            self.startBox(sourceVolumeNode, sliceNode, segmentationNode, segmentId, options, corners, writer, **changes)
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
        """Refine the segment on the slice ``sliceNode`` shows with LiteMedSAM (see ``startBoxFromSegment``)."""
        return self.execute(
            self.startBoxFromSegment(
                sourceVolumeNode, sliceNode, segmentationNode, segmentId, options, writer, **changes
            )
        )

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
        """Every slice of the volume along the view's normal (see ``startAllSlices``); ``progress(done, total)`` after
        each batch, and raising ``SegmentationCancelled`` there keeps the slices already written."""
        run = self.startAllSlices(sourceVolumeNode, sliceNode, segmentationNode, segmentId, options, writer, **changes)
        return self.execute(run, progress)

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
        """The slice ``sliceNode`` shows, in every frame of a sequence (see ``startAllFrames``)."""
        run = self.startAllFrames(
            browserNode, sourceVolumeNode, sliceNode, segmentationNode, segmentId, options, writer, **changes
        )
        return self.execute(run, progress)

    def execute(self, run: SegmentationRun, progress: Optional[ProgressCallback] = None, predictor=None) -> SliceResult:
        """Run ``run`` here and now: the model (``predictorProvider(run.model)`` unless given; loaded, asking the
        user, before anything in the scene changes), then view, predict and write batch by batch, reporting
        ``progress(done, total)`` after each. ``SegmentationCancelled`` from ``progress`` keeps what was written."""
        try:
            predictor = predictor or self.predictorProvider(run.model)
            while (batch := run.nextBatch()) is not None:
                run.write(batch, predictMasks(predictor, batch.views, batch.options))
                if progress is not None:
                    try:
                        progress(run.done, run.total)
                    except SegmentationCancelled:
                        run.cancel()
        finally:
            result = run.finish()
        return result

    # ------------------------------------------------------------------ runs, step by step (see SegmentationRun)
    def startSlice(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        writer: Optional[LabelmapWriter] = None,
        **changes,
    ) -> SegmentationRun:
        """The run that writes the slice ``sliceNode`` shows now (read at once: the view may change while it runs)."""
        options = SegmentationOptions.of(options, **changes)
        self._checkSegment(segmentationNode, segmentId)
        view = self.sliceView(sourceVolumeNode, sliceNode)
        return self._viewRun(view, sourceVolumeNode, segmentationNode, segmentId, options, writer)

    def startBox(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        corners,
        writer: Optional[LabelmapWriter] = None,
        **changes,
    ) -> SegmentationRun:
        """LiteMedSAM's mask of what lies inside a box drawn on the view ``sliceNode``: ``corners`` are two opposite
        corners in world RAS (where the drag started and ended). The box is mapped to the pixels of the image the
        model sees through the same geometry as the mask, and clipped to it; written as ``segmentSlice`` writes
        (one undo step, the editor's masking and overwrite settings, ``replace``)."""
        options = SegmentationOptions.of(options, **changes)
        self._checkSegment(segmentationNode, segmentId)
        view = self.sliceView(sourceVolumeNode, sliceNode)
        box = viewBox(view.plane, corners, sliceNode.GetName(), sourceVolumeNode.GetName())
        options = SegmentationOptions.of(options, box=tuple(float(value) for value in box))
        return self._viewRun(view, sourceVolumeNode, segmentationNode, segmentId, options, writer)

    def startBoxFromSegment(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        writer: Optional[LabelmapWriter] = None,
        **changes,
    ) -> SegmentationRun:
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
        return self._viewRun(view, sourceVolumeNode, segmentationNode, segmentId, options, writer)

    def _viewRun(
        self,
        view: SliceView,
        sourceVolumeNode,
        segmentationNode,
        segmentId: str,
        options: SegmentationOptions,
        writer: Optional[LabelmapWriter],
    ) -> SegmentationRun:
        """One view, one undo step."""
        description = view.plane.description
        if options.box is not None:
            description = _("box of {width} x {height} px on {plane}").format(
                width=f"{options.box[2] - options.box[0]:.0f}",
                height=f"{options.box[3] - options.box[1]:.0f}",
                plane=view.plane.description,
            )
        job = _Job(1, lambda _item: view, lambda _done: description)
        return self._newRun(job, sourceVolumeNode, segmentationNode, segmentId, options, writer)

    def startAllSlices(
        self,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        writer: Optional[LabelmapWriter] = None,
        **changes,
    ) -> SegmentationRun:
        """Every slice of the volume along the view's normal, in batches; one undo step for the whole run.

        Slices with one value everywhere (padding, air outside the field of view) cost one network pass per distinct
        value (the predictor reuses the result). Cancelling keeps the slices already written.
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
        describe = lambda done: _("{done} of {total} slices along {axis}").format(  # noqa: E731
            done=done, total=total, axis="IJK"[plane.axis]
        )
        return self._newRun(
            _Job(total, viewAt, describe), sourceVolumeNode, segmentationNode, segmentId, options, writer
        )

    def startAllFrames(
        self,
        browserNode,
        sourceVolumeNode,
        sliceNode,
        segmentationNode,
        segmentId: str,
        options,
        writer: Optional[LabelmapWriter] = None,
        **changes,
    ) -> SegmentationRun:
        """The slice ``sliceNode`` shows, in every frame of a sequence; each frame's mask goes into the matching
        item of the segmentation sequence synchronised with ``browserNode`` (one modification per frame).

        ``sourceVolumeNode`` and ``segmentationNode`` are the browser's proxy nodes. Frames whose segmentation
        item is missing get an empty copy of the current segments first (when the first frame is read), so nothing
        leaks between frames. Undo: ``undoLastFrames()`` restores every item as it was before the run. The editor's
        undo cannot: Slicer clears the editor's undo history whenever the shown frame changes (each frame has its own
        segmentation object, and ``vtkSegmentationHistory::SetSegmentation`` drops its states), so no undo state is
        saved. Cancelling keeps the frames already written; the browser returns to the frame it showed.
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
        primary = browserNode.GetMasterSequenceNode()
        indexValues = [primary.GetNthIndexValue(i) for i in range(primary.GetNumberOfDataNodes())]
        before = {}

        def prepare():
            self._framesSnapshot = FramesSnapshot(browserNode, segmentationSequence, segmentationNode, indexValues)
            fillMissingItems(segmentationSequence, segmentationNode, indexValues)
            before["saveChanges"] = browserNode.GetSaveChanges(segmentationSequence)
            before["item"] = browserNode.GetSelectedItemNumber()
            browserNode.SetSaveChanges(segmentationSequence, True)  # the proxy's edits are stored in the frame's item

        def restore():
            browserNode.SetSelectedItemNumber(before["item"])
            browserNode.SetSaveChanges(segmentationSequence, before["saveChanges"])

        def viewAt(item):
            browserNode.SetSelectedItemNumber(item)
            return self.sliceView(sourceVolumeNode, sliceNode)

        describe = lambda done: _("{done} of {total} frames").format(done=done, total=len(indexValues))  # noqa: E731
        job = _Job(
            len(indexValues),
            viewAt,
            describe,
            browserNode.SetSelectedItemNumber,
            undoable=False,
            prepare=prepare,
            restore=restore,
        )
        return self._newRun(job, sourceVolumeNode, segmentationNode, segmentId, options, writer)

    def _newRun(
        self,
        job: _Job,
        sourceVolumeNode,
        segmentationNode,
        segmentId: str,
        options: SegmentationOptions,
        writer: Optional[LabelmapWriter],
    ) -> SegmentationRun:
        if writer is None:
            writer = lambda: self._defaultWriter(sourceVolumeNode, segmentationNode, segmentId)  # noqa: E731
        return SegmentationRun(job, sourceVolumeNode, segmentationNode, segmentId, options, writer, self.batchSize)

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
