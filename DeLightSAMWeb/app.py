"""The web app: trame-slicer's views, layouts and segment editor, plus the De-LightSAM panel.

One process holds one MRML scene: every tab connected to it shares that scene (several users: one process each).
Everything that touches MRML or VTK runs on the server's event loop; model runs go through ``runs.RunScheduler``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from DeLightSAMLib.errors import DeLightSAMError, first_line
from DeLightSAMLib.imageio import read_image
from DeLightSAMLib.registry import MODALITIES
from DeLightSAMSlicerLib.Geometry import SegmentationError
from DeLightSAMSlicerLib.HeaderModality import AUTO, defaultModality, dicomFile, headerModality, resolveModality
from DeLightSAMSlicerLib.Models import AUTOMATIC, BOX
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, SegmentationOptions

from . import loading, saving
from .ahead import EncodingAhead, InProcessClient
from .runs import RunReport, RunScheduler
from .writer import SegmentEditorWriter

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
SAVE_KINDS = ("seg.nrrd", "dicom-seg", "labelmap")  # downloads; a DICOMweb image adds saving.DICOMWEB
DICOMWEB_TEXT = "store to DICOMweb"
SEGMENT_COLOR = (0.9, 0.35, 0.3)  # the first segment's colour: clear on gray images and photos
AUTO_TEXT = "Auto (from the DICOM header)"


class Predictors:
    """One predictor per model, loaded on first use from the server's own checkpoints (never from the browser), each
    an ``EncodingCache`` (the worker's): the last few slices' encodings are kept, so that Apply on a slice encoded
    ahead, or several boxes on one slice, run the encoder once."""

    def __init__(self, checkpoints: dict, device: str) -> None:
        self.checkpoints = checkpoints  # model -> registry name or path (None: the default)
        self.device = device
        self._loaded: dict = {}

    def __call__(self, model: str):
        if model not in self._loaded:
            from DeLightSAMLib.box_predictor import BoxPredictor
            from DeLightSAMLib.predictor import load_predictor

            reference = self.checkpoints.get(model)
            if model == BOX and reference is None:
                raise DeLightSAMError("box prompts need LiteMedSAM weights; start the server with --box-checkpoint")
            predictor = load_predictor(reference, device=self.device)
            if isinstance(predictor, BoxPredictor) != (model == BOX):
                kind = "LiteMedSAM" if model == BOX else "De-LightSAM"
                raise DeLightSAMError(f"{reference} does not hold {kind} weights; give {kind} weights for this model")
            from DeLightSAMSlicerLib.Worker import EncodingCache

            self._loaded[model] = EncodingCache(predictor)
        return self._loaded[model]

    def loaded(self, model: str):
        """``model``'s predictor if it is loaded already, else None (encoding ahead never loads a model)."""
        return self._loaded.get(model)

    def deviceName(self) -> str:
        for predictor in self._loaded.values():
            device = getattr(predictor, "device", None)
            if device is not None:
                return str(device)
        return self.device


class DeLightSAMWebApp:
    """The page and its handlers around one scene. ``inputs``: files to load at start (the first is shown)."""

    def __init__(self, server, *, checkpoint=None, boxCheckpoint=None, device: str = "auto", inputs=()) -> None:
        from trame_server.utils.typed_state import TypedState
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.app.logic import SegmentEditorLogic
        from trame_slicer.app.ui import SegmentEditorState
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        self.server = server
        server.enable_module(trame_slicer_module)
        server.enable_module({"serve": {"delightsam": str(STATIC)}, "scripts": ["delightsam/box.js"]})
        self.slicerApp = SlicerApp()
        self.scene = self.slicerApp.scene
        register_rca_factories(self.slicerApp.view_manager, server, slice_view_ui_f=self._sliceViewUI)
        self.editorLogic = SegmentEditorLogic(server, self.slicerApp)
        self.editorState = TypedState(server.state, SegmentEditorState)
        self.layoutManager = LayoutManager(self.scene, self.slicerApp.view_manager, server)
        self.layoutManager.register_layout_dict(LayoutManager.default_grid_configuration(), lazy_initialization=True)
        self.editor = self.slicerApp.segmentation_editor
        self.predictors = Predictors({AUTOMATIC: checkpoint, BOX: boxCheckpoint}, device)
        self.logic = DeLightSAMMRMLLogic(self.predictors)
        # every model pass (runs and encodings ahead) on one thread: a predictor is never used by two at once
        self.modelThread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="delightsam-model")
        self.scheduler = RunScheduler(self.predictors, self.editor, self.predictors.deviceName, self.modelThread)
        self.ahead = EncodingAhead(InProcessClient(self.predictors.loaded, self.modelThread), self._aheadView)
        server.controller.on_server_ready.add(lambda **_kwargs: self.ahead.start())
        self.scheduler.onProgress = self._onProgress
        self.scheduler.onDone = self._onDone
        self.uploads = loading.UploadFolder()
        self.loaded: Optional[loading.LoadedVolume] = None
        self.fetched: Optional[loading.FetchedSeries] = None  # the DICOMweb series shown (its temporary files)
        self._uploadChunks: list = []
        self._uploadBytes = 0
        self._reading: set = set()  # uploads being read in a thread: their folders stay
        self._lastOptions = SegmentationOptions()
        self._note = ""  # what the status line adds after the next run (which header tag chose the modality)
        self.instanceFiles: dict[str, str] = {}  # SOP instance UID -> file, for the files this server loaded
        self._chosenModality = MODALITIES[0]  # the last modality chosen by hand: what a non-DICOM image gets back

        state = server.state
        state.update(
            {
                "trame__title": "De-LightSAM",
                "dls_modality": MODALITIES[0],
                "dls_modalities": [{"value": AUTO, "text": AUTO_TEXT}]
                + [{"value": name, "text": name} for name in MODALITIES],
                "dls_threshold": 0.5,
                "dls_replace": False,
                "dls_keep_largest": False,
                "dls_fill_holes": False,
                "dls_busy": False,
                "dls_progress": 0,
                "dls_status": "Load an image (Upload), then Apply",
                "dls_error": False,
                "dls_box_mode": False,
                "dls_save_kind": SAVE_KINDS[0],
                "dls_save_kinds": _saveKinds(False),
                "dls_loaded": False,
                "dls_layout": "Axial Only",
                "dls_layouts": self.layoutManager.get_layout_ids(),
            }
        )
        state.change("dls_layout")(self._onLayout)
        state.change("dls_modality")(self._onModality)
        self._buildUI()
        self.layoutManager.set_layout("Axial Only")
        for path in inputs:
            self.loadPath(path)

    # ------------------------------------------------------------------ page
    def _buildUI(self) -> None:
        from . import ui

        self.ui = ui.build(self)

    def _sliceViewUI(self, server, viewId: str, sliceView) -> None:
        from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

        from . import ui

        create_vertical_slice_view_gutter_ui(server, viewId, sliceView)
        ui.boxOverlay(self, viewId)

    def _onLayout(self, dls_layout, **_kwargs) -> None:
        if dls_layout in self.layoutManager.get_layout_ids():
            self.layoutManager.set_layout(dls_layout)

    def _onModality(self, dls_modality, **_kwargs) -> None:
        if dls_modality != AUTO and dls_modality in MODALITIES:
            self._chosenModality = dls_modality

    def _aheadView(self):
        """What encoding ahead may encode now: the Red view's slice for the model the next action uses (LiteMedSAM
        in box mode), once that model is loaded and while no run is under way; else None."""
        if self.loaded is None or self.scheduler.busy:
            return None
        model = BOX if self.server.state.dls_box_mode else AUTOMATIC
        if self.predictors.loaded(model) is None:
            return None
        volume, sliceNode = self.loaded.node, self.sliceNode("Red")

        def read():
            try:
                return self.logic.sliceView(volume, sliceNode)
            except (SegmentationError, DeLightSAMError):  # nothing to encode (a 4D volume): Apply will say why
                return None

        return volume, sliceNode, model, str(self.predictors.checkpoints.get(model)), read

    # ------------------------------------------------------------------ status
    def status(self, text: str, error: bool = False) -> None:
        self.server.state.update({"dls_status": text, "dls_error": error})
        if error:
            logger.info("status: %s", text)

    def _onProgress(self, done: int, total: int) -> None:
        with self.server.state:
            self.server.state.dls_progress = int(round(100 * done / max(total, 1)))
            self.server.state.dls_status = f"segmenting: {done} of {total}"

    def _onDone(self, report: RunReport) -> None:
        with self.server.state:
            self.server.state.dls_busy = False
            self.server.state.dls_progress = 100 if report.result and not report.result.cancelled else 0
            self.status(report.text(), bool(report.error))
        self._renderSliceViews()

    def _renderSliceViews(self) -> None:
        for view in self.slicerApp.view_manager.get_views():
            view.schedule_render()

    # ------------------------------------------------------------------ loading
    def loadPath(self, path) -> bool:
        """Read an image (a file, a DICOM folder or a ``dicomweb://`` series) and show it; on failure the message
        goes to the status line and the scene is unchanged."""
        from DeLightSAMLib.cohort.dicomweb import is_dicomweb

        if is_dicomweb(str(path)):
            return self.loadDicomweb(str(path))
        try:
            image = read_image(path)
        except DeLightSAMError as error:
            self.status(first_line(error), True)
            return False
        self.show(image)
        return True

    def loadDicomweb(self, address: str) -> bool:
        """Fetch the first image series ``address`` names, as ``delightsam predict`` does, and show it; Save can
        then store the segmentation back to that service as a DICOM SEG."""
        try:
            fetched = loading.fetch_dicomweb(address)
        except DeLightSAMError as error:
            self.status(first_line(error), True)
            return False
        self.show(fetched.image, fetched=fetched)
        if fetched.count > 1:
            self.status(
                f"{self.server.state.dls_status} ({fetched.count} series at that address: this is the first; name "
                "one with ?StudyInstanceUID=...&SeriesInstanceUID=...)"
            )
        return True

    def cleanup(self) -> None:
        """The server's temporary files: uploads and a fetched DICOMweb series."""
        if self.fetched is not None:
            self.fetched.close()
            self.fetched = None
        self.uploads.cleanup()

    def show(self, image, fetched: Optional[loading.FetchedSeries] = None, instances: Optional[tuple] = None) -> None:
        """Put ``image`` in the scene (on the event loop); ``instances``: its ``loading.instance_files``, when they
        were read already."""
        if self.scheduler.busy:
            self.scheduler.cancel()
        self.scene.Clear()
        self.ahead.reset()
        if self.fetched is not None and self.fetched is not fetched:
            self.fetched.close()  # the series shown before: its temporary files go
        self.fetched = fetched
        if fetched is not None:
            name = f"series {fetched.series.series}"
        else:
            name = image.source.name if image.source.is_dir() else image.source.name.split(".")[0]
        node = loading.volume_node(self.scene, image, name)
        self.instanceFiles = loading.record_instances(node, image, instances)
        self.loaded = loading.LoadedVolume(node, image, fetched.series if fetched else None, name)
        chosen = headerModality(node, self.fileForInstance)
        display = self.slicerApp.display_manager
        if image.is_2d or image.array.ndim == 4:  # a photo or RGB volume: slice views only
            display.show_volume_in_slice_background(node)
            display.set_node_visible_in_group(node)
        else:
            display.show_volume(node)  # with volume rendering in the 3D view
        self.editorLogic.on_volume_changed(node)
        if not self.editor.get_segment_ids():
            self.editor.add_empty_segment(segment_name="segment 1", segment_color=list(SEGMENT_COLOR))
        display.reset_views()
        with self.server.state:
            self.server.state.dls_loaded = True
            self.server.state.dls_progress = 0
            self.server.state.dls_box_mode = False  # a new image starts in the views' own interaction
            self.server.state.dls_save_kinds = _saveKinds(fetched is not None)
            if fetched is not None:
                self.server.state.dls_save_kind = saving.DICOMWEB  # back where it came from, by default
            elif self.server.state.dls_save_kind == saving.DICOMWEB:
                self.server.state.dls_save_kind = "dicom-seg" if image.dicom_files else "seg.nrrd"
            elif self.server.state.dls_save_kind == "dicom-seg" and not image.dicom_files:
                self.server.state.dls_save_kind = "seg.nrrd"  # a DICOM SEG needs a DICOM image
            # Auto is the default for an image whose DICOM header names a modality the model knows (as in Slicer's
            # effect); any other image gets back the modality last chosen by hand.
            self.server.state.dls_modality = defaultModality(
                chosen is not None, self.server.state.dls_modality, self._chosenModality
            )
            shape = " x ".join(str(size) for size in image.array.shape)
            shown = name if fetched is not None else image.source.name
            if chosen is not None:
                self.status(f"loaded {shown} ({shape}); modality Auto: {chosen.reason}; press Apply")
            else:
                self.status(f"loaded {shown} ({shape}); choose the modality and press Apply")

    def fileForInstance(self, instanceUID: str) -> str:
        """The file of a SOP instance this server loaded (its own record: there is no DICOM database here)."""
        return self.instanceFiles.get(instanceUID, "")

    async def onUploadChunk(self, files: list) -> None:
        """trame-slicer's chunked upload: lists of files, then an empty list at the end."""
        from trame.app.file_upload import ClientFile

        if files:
            for entry in files:
                client = ClientFile(entry)
                self._uploadBytes += len(client.content or b"")
                if self._uploadBytes <= self.uploads.maxBytes:
                    self._uploadChunks.append((client.name, client.content or b""))
            return
        chunks, total = self._uploadChunks, self._uploadBytes
        self._uploadChunks, self._uploadBytes = [], 0
        try:
            if total > self.uploads.maxBytes:
                raise loading.UploadError(
                    f"the upload is {total / 2**20:.0f} MB, more than the server's limit of "
                    f"{self.uploads.maxBytes / 2**20:.0f} MB"
                )
            image, instances = await asyncio.to_thread(self._readUpload, chunks)
        except DeLightSAMError as error:
            self._keepShownUpload()
            self.status(f"upload refused: {first_line(error)}", True)
            return
        except Exception as error:  # noqa: BLE001 - never stop the server over an upload
            logger.exception("upload failed")
            self._keepShownUpload()
            self.status(
                f"upload failed ({type(error).__name__}: {first_line(error)}); the server's log has the details", True
            )
            return
        self.show(image, instances=instances)
        self._keepShownUpload()

    def _readUpload(self, chunks: list):
        """(image, its instance files) of an upload: the file work, run off the event loop (no MRML here)."""
        path = self.uploads.store(chunks)
        self._reading.add(path)
        try:
            image = read_image(path)
            return image, loading.instance_files(image)
        finally:
            self._reading.discard(path)

    def _keepShownUpload(self) -> None:
        """Remove the upload folders except the shown image's (a refused upload leaves that one in place) and those
        of uploads still being read."""
        self.uploads.keep(self.loaded.image.source if self.loaded is not None else None, *list(self._reading))

    # ------------------------------------------------------------------ runs
    def options(self) -> SegmentationOptions:
        """The panel's options; a SegmentationError (one line) for a threshold that is not a number (the page's
        state can be set by any client)."""
        state = self.server.state
        try:
            threshold = float(state.dls_threshold)
        except (TypeError, ValueError):
            threshold = float("nan")
        if not np.isfinite(threshold):
            raise SegmentationError(f"the threshold must be a number from 0 to 1, not '{state.dls_threshold}'")
        return SegmentationOptions(
            modality=str(state.dls_modality),
            threshold=threshold,
            replace=bool(state.dls_replace),
            keepLargestComponent=bool(state.dls_keep_largest),
            fillHoles=bool(state.dls_fill_holes),
        )

    def sliceNode(self, viewName: str = "Red"):
        for node in self.scene.GetNodesByClass("vtkMRMLSliceNode"):
            if node.GetLayoutName() == viewName:
                return node
        return None

    def _target(self):
        if self.loaded is None:
            raise SegmentationError("no image loaded; upload one first")
        segmentId = self.editor.get_active_segment_id() or (self.editor.get_segment_ids() or [""])[0]
        if not segmentId:
            raise SegmentationError("no segment to write into; add a segment in the segment list")
        return self.loaded.node, self.editor.active_segmentation_node, segmentId

    def _start(self, makeRun) -> None:
        def startRun():
            volume, segmentation, segmentId = self._target()
            writer = SegmentEditorWriter(self.editor, segmentId)
            return makeRun(volume, segmentation, segmentId, writer)

        error = self.scheduler.start(startRun, note=self._note)
        with self.server.state:
            if error:
                self.status(error, True)
            else:
                self.server.state.dls_busy = True
                self.server.state.dls_progress = 0
                self.status("segmenting ...")

    def automaticOptions(self) -> Optional[SegmentationOptions]:
        """The options of a De-LightSAM run, Auto replaced by the header's modality; None (the reason in the status
        line) when Auto finds none."""
        volume = self.loaded.node if self.loaded else None
        try:
            modality = self.options().modality
        except SegmentationError as error:
            self.status(first_line(error), True)
            return None
        if modality == AUTO and dicomFile(volume, self.fileForInstance) is None:
            # (HeaderModality's own message speaks of Slicer's DICOM database, which the browser has not)
            name = self.loaded.name if self.loaded else "the image"
            self.status(
                f"{name} is not a DICOM image, so it has no DICOM header to read the modality from: choose "
                "the modality",
                True,
            )
            return None
        try:
            options, chosen = resolveModality(self.options(), volume, self.fileForInstance)
        except DeLightSAMError as error:
            self.status(first_line(error), True)
            return None
        self._note = f" Modality from the DICOM header: {chosen.reason}." if chosen is not None else ""
        return options

    def onApply(self, viewName: str = "Red") -> None:
        options = self.automaticOptions()
        if options is None:
            return
        self._start(
            lambda volume, segmentation, segmentId, writer: self.logic.startSlice(
                volume, self.sliceNode(viewName), segmentation, segmentId, options, writer=writer
            )
        )

    def onAllSlices(self, viewName: str = "Red") -> None:
        options = self.automaticOptions()
        if options is None:
            return
        self._start(
            lambda volume, segmentation, segmentId, writer: self.logic.startAllSlices(
                volume, self.sliceNode(viewName), segmentation, segmentId, options, writer=writer
            )
        )

    def onBox(self, viewId: str, corners: Sequence[float], size: Sequence[float]) -> None:
        """A box dragged on a slice view: ``corners`` (x0, y0, x1, y1) in the view image's CSS pixels (top left
        origin), ``size`` (width, height) of that image on the page."""
        view = self._sliceViewById(viewId)
        if view is None:
            self.status(f"no slice view '{viewId}'", True)
            return
        sliceNode = view._view_node
        width, height = view.render_window().GetSize()
        xyToRas = _matrix(sliceNode.GetXYToRAS())
        try:  # the page sends these: anything may come (a view of size 0, text, too few numbers)
            ras = []
            for x, y in ((corners[0], corners[1]), (corners[2], corners[3])):
                xy = np.array([float(x) / float(size[0]) * width, (1.0 - float(y) / float(size[1])) * height, 0.0, 1.0])
                ras.append((xyToRas @ xy)[:3])
            if not np.isfinite(ras).all():
                raise ValueError("not finite")
            options = self.options()
        except (TypeError, ValueError, ZeroDivisionError, IndexError, KeyError) as error:
            self.status(
                f"box not used: the page sent a box this server cannot read ({first_line(error)}); draw it again", True
            )
            return
        except SegmentationError as error:
            self.status(first_line(error), True)
            return
        self._note = ""
        self._start(
            lambda volume, segmentation, segmentId, writer: self.logic.startBox(
                volume, sliceNode, segmentation, segmentId, options, ras, writer=writer
            )
        )

    def _sliceViewById(self, viewId: str):
        for view in self.slicerApp.view_manager.get_slice_views():
            if self.server.translator.translate_key(view.get_singleton_tag()) == viewId:
                return view
        return None

    def onCancel(self) -> None:
        if self.scheduler.cancel():
            self.status("cancelling after the batch under way ...")

    def onUndo(self) -> None:
        stack = self.editor.undo_stack
        if stack is not None and stack.can_undo() and not self.scheduler.busy:
            stack.undo()
            self._renderSliceViews()

    def onRedo(self) -> None:
        stack = self.editor.undo_stack
        if stack is not None and stack.can_redo() and not self.scheduler.busy:
            stack.redo()
            self._renderSliceViews()

    # ------------------------------------------------------------------ saving
    def _segmentationToSave(self):
        """(labels on the image's grid, segment descriptions, provenance) of the segmentation shown."""
        from DeLightSAMLib.cohort.formats import provenance_for

        volume, segmentation, _segmentId = self._target()
        ids = self.editor.get_segment_ids()
        labels = saving.segment_labels(self.scene, self.slicerApp.segmentations_logic, segmentation, volume, ids)
        options = self.options()
        if options.modality == AUTO:  # the provenance names the modality the header chose
            chosen = headerModality(volume, self.fileForInstance)
            options = SegmentationOptions(modality=chosen.modality if chosen else AUTO, threshold=options.threshold)
        provenance = provenance_for(self.predictors.checkpoints.get(AUTOMATIC), options.threshold, options.modality)
        segments = saving.segment_descriptions(segmentation, ids)
        return labels, segments, provenance

    async def saveBytes(self, kind: Optional[str] = None) -> tuple[str, bytes]:
        """(file name, content) of the segmentation as ``kind`` ("seg.nrrd", "dicom-seg", "labelmap"); the labels
        are read from the scene on the event loop, the file is written in a thread."""
        kind = kind or self.server.state.dls_save_kind
        if kind not in SAVE_KINDS:
            raise SegmentationError(f"cannot save as '{kind}'; choose one of {', '.join(SAVE_KINDS)}")
        labels, segments, provenance = self._segmentationToSave()  # (MRML: on the event loop)
        stem = self.loaded.dicomweb.series if self.loaded.dicomweb is not None else ""
        image = self.loaded.image
        return await asyncio.to_thread(saving.write_segmentation, labels, image, segments, kind, provenance, stem)

    async def storeToDicomweb(self):
        """Store the segmentation as a DICOM SEG (the command line's writer) to the DICOMweb service the image came
        from (the command line's ``--store-to``); the stored dataset. The request runs off the event loop."""
        from DeLightSAMLib.cohort import dicomweb

        series = self.loaded.dicomweb if self.loaded is not None else None
        if series is None:
            raise SegmentationError("this image did not come from a DICOMweb server; save it as a file instead")
        labels, segments, provenance = self._segmentationToSave()
        image = self.loaded.image

        def build_and_store():
            dataset = saving.dicom_seg_dataset(labels, image, segments, provenance)
            dicomweb.store(series.url, dataset)
            return dataset

        return await asyncio.to_thread(build_and_store)

    async def onSave(self):
        """The download's bytes (trame's attachment), or None with the reason in the status line; for a DICOMweb
        image with "store to DICOMweb" chosen, None once the DICOM SEG is stored (the status line says where)."""
        try:
            if self.server.state.dls_save_kind == saving.DICOMWEB:
                self.status("storing to DICOMweb ...")
                dataset = await self.storeToDicomweb()
                self.status(
                    f"stored a DICOM SEG to {self.loaded.dicomweb.url}: study {dataset.StudyInstanceUID}, "
                    f"series {dataset.SeriesInstanceUID}"
                )
                return None
            name, content = await self.saveBytes()
        except (SegmentationError, DeLightSAMError) as error:
            self.status(f"not saved: {first_line(error)}", True)
            return None
        except Exception as error:  # noqa: BLE001
            logger.exception("save failed")
            self.status(
                f"not saved ({type(error).__name__}: {first_line(error)}); the server's log has the details", True
            )
            return None
        self.server.state.dls_save_name = name
        self.status(f"saved {name} ({len(content)} bytes)")
        return self.server.protocol.addAttachment(content)


def _saveKinds(dicomweb: bool) -> list[dict]:
    kinds = [{"value": kind, "text": kind} for kind in SAVE_KINDS]
    return kinds + ([{"value": saving.DICOMWEB, "text": DICOMWEB_TEXT}] if dicomweb else [])


def _matrix(vtkMatrix) -> np.ndarray:
    return np.array([[vtkMatrix.GetElement(row, column) for column in range(4)] for row in range(4)])
