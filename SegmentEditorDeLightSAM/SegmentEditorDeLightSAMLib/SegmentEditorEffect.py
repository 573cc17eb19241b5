"""The De-LightSAM Segment Editor effect: the mask of the slice or frame a view shows, with no prompts (De-LightSAM),
or of what lies inside a box dragged on a slice view (LiteMedSAM, box mode).

UI, parameters and the box's rubber band only. The session (DeLightSAMSlicerLib.Session) loads the predictors and
asks, through the dialogs both panels share (DeLightSAMQt.Dialogs), to install or download; the MRML logic
(DeLightSAMSlicerLib.MRMLLogic) maps the box into the image the model sees, segments and writes through this effect's modifySelectedSegmentByLabelmap in the
editor's modifier geometry, so the editor's undo, editable area, intensity range and overwrite settings hold. Both
are Qt-free and tested under slicer-core.
"""

import os

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from DeLightSAMSlicerLib.Geometry import SegmentationError
from DeLightSAMSlicerLib.HeaderModality import AUTO, defaultModality, headerModality, knownCodes, resolveModality
from DeLightSAMSlicerLib.Labelmaps import ModifierGeometry
from DeLightSAMSlicerLib.Models import AUTOMATIC, BOX
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, SegmentationCancelled, SegmentationOptions
from DeLightSAMQt.Dialogs import DownloadProgressDialog, ProgressDialog, confirmDialog, userErrorDisplay
from DeLightSAMQt.SlicerApp import sharedSession
from SegmentEditorDeLightSAMLib.WorkerDriver import WorkerDriver

# The effect's own parameters (the others: SegmentationOptions.PARAMETER_NAMES).
VIEW_PARAMETER = "SliceView"  # the slice view whose slice Apply, All slices/frames and Box from segment use
BOX_MODE_PARAMETER = "BoxMode"  # "1": a left-button drag on any slice view draws a box, segmented on release
DEFAULT_VIEW = "Red"
MINIMUM_DRAG = 3  # screen pixels: a shorter drag is a click, not a box


def resolveView(storedView, layoutViews):
    """The slice view the effect uses and shows: the stored one when the layout has it, else the layout's first slice
    view (the stored name stays, for a layout that has it again); None when the layout has no slice view."""
    layoutViews = list(layoutViews)
    if storedView in layoutViews:
        return storedView
    return layoutViews[0] if layoutViews else None


def modalityLabels():
    """Modality name -> what the user reads (Auto first: the default for a volume with a DICOM header)."""
    return {
        AUTO: _("Auto (from the DICOM header)"),
        "dermoscopy": _("Dermoscopy (skin lesion)"),
        "xray": _("Chest X-ray (lungs)"),
        "ultrasound": _("Ultrasound (breast lesion)"),
        "fundus": _("Fundus photograph (vessels)"),
        "microscopy": _("Microscopy (nuclei)"),
        "colonoscopy": _("Colonoscopy (polyp)"),
    }


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Segment the current slice (or all slices / frames) of the source volume with De-LightSAM."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "De-LightSAM"  # no tr: modules find effects by this name
        scriptedEffect.title = _("De-LightSAM")
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.session = sharedSession()
        self.logic = DeLightSAMMRMLLogic(self._predictor)
        self.worker = WorkerDriver(self)  # runs the network in the background worker process
        self.sceneCloseObserver = None  # (scene, observer tag) while the effect is active
        self.rubberBands = {}  # slice widget -> its RubberBand
        # The editor widget deletes its effects without deactivating them: after cleanup() from Slicer 5.10 on, with no
        # call at all in 5.8. The effect's own destruction is what 5.8 leaves to remove the scene observer by.
        scriptedEffect.connect("destroyed()", self._onDestroyed)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return (
            "<html>"
            + _(
                "Segment the slice a view shows with <b>De-LightSAM</b>, no prompts needed.<p>"
                "Choose the modality and the view, then <b>Apply</b>: the mask goes into the selected segment, within the "
                "editor's editable area and intensity range, overwriting other segments as the editor is set to. "
                "<b>All slices</b> runs every slice along the view's direction. Ctrl+Z undoes Apply and All slices.<p>"
                "<b>All frames</b> runs the shown slice in every frame of a sequence; <b>Undo all frames</b> puts every "
                "frame back. Ctrl+Z cannot undo All frames: Slicer clears the editor's undo history whenever the shown "
                "frame changes.<p>"
                "<b>Box mode</b>: drag a rectangle around one structure on any slice view; on release <b>LiteMedSAM</b> "
                "segments what lies inside it on that slice (Esc while dragging cancels; switch box mode off to adjust "
                "window/level with the mouse). <b>Box from segment</b> refines the selected segment on the chosen view's "
                "slice: LiteMedSAM segments the box around it, and the segment's part of that slice becomes its mask. "
                "Both are written as Apply writes, and Ctrl+Z undoes them."
            )
            + "</html>"
        )

    def setupOptionsFrame(self):
        self.modalitySelector = qt.QComboBox()
        for name, label in modalityLabels().items():
            self.modalitySelector.addItem(label, name)
        self.modalitySelector.toolTip = _(
            "The kind of image: selects the matching De-LightSAM modality query. Auto reads it from the source "
            "volume's DICOM header, Modality (0008,0060): {codes}"
        ).format(codes=knownCodes())
        self.scriptedEffect.addLabeledOptionsWidget(_("Modality:"), self.modalitySelector)

        self.viewSelector = qt.QComboBox()
        self.viewSelector.toolTip = _("The slice view whose slice (or frame) is segmented")
        self.scriptedEffect.addLabeledOptionsWidget(_("View:"), self.viewSelector)

        self.thresholdSlider = slicer.qMRMLSliderWidget()
        self.thresholdSlider.minimum, self.thresholdSlider.maximum = 0.05, 0.95
        self.thresholdSlider.singleStep, self.thresholdSlider.decimals = 0.05, 2
        self.thresholdSlider.toolTip = _("Probability above which a pixel is in the mask (0.5 as published)")
        self.scriptedEffect.addLabeledOptionsWidget(_("Threshold:"), self.thresholdSlider)

        self.replaceCheckBox = qt.QCheckBox(_("Replace the slice's contents"))
        self.replaceCheckBox.toolTip = _("Set the slice to exactly the prediction (an empty prediction clears it)")
        self.largestCheckBox = qt.QCheckBox(_("Keep largest region"))
        self.fillHolesCheckBox = qt.QCheckBox(_("Fill holes"))
        options = qt.QHBoxLayout()
        for checkBox in (self.replaceCheckBox, self.largestCheckBox, self.fillHolesCheckBox):
            options.addWidget(checkBox)
        self.scriptedEffect.addOptionsWidget(options)

        self.applyButton = qt.QPushButton(_("Apply"))
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = _("Segment the slice shown in the chosen view")
        self.allSlicesButton = qt.QPushButton(_("All slices"))
        self.allSlicesButton.toolTip = _("Segment every slice along the chosen view's direction (one undo step)")
        self.allFramesButton = qt.QPushButton(_("All frames"))
        self.allFramesButton.toolTip = _("Segment the shown slice in every frame of the sequence")
        buttons = qt.QHBoxLayout()
        for button in (self.applyButton, self.allSlicesButton, self.allFramesButton):
            buttons.addWidget(button)
        self.scriptedEffect.addOptionsWidget(buttons)

        self.undoFramesButton = qt.QPushButton(_("Undo all frames"))
        self.undoFramesButton.toolTip = _(
            "Put every frame's segmentation back as it was before the last 'All frames' "
            "run (Ctrl+Z cannot: the editor's undo history is cleared when the frame changes)"
        )
        self.undoFramesButton.enabled = False
        self.scriptedEffect.addOptionsWidget(self.undoFramesButton)

        self.boxModeCheckBox = qt.QCheckBox(_("Box mode"))
        self.boxModeCheckBox.toolTip = _(
            "Drag a rectangle around a structure on any slice view: on release LiteMedSAM "
            "segments what lies inside it on that slice"
        )
        self.boxFromSegmentButton = qt.QPushButton(_("Box from segment"))
        self.boxFromSegmentButton.toolTip = _(
            "Refine the selected segment on the chosen view's slice: LiteMedSAM "
            "segments the box around it, and the slice becomes that mask"
        )
        boxes = qt.QHBoxLayout()
        boxes.addWidget(self.boxModeCheckBox)
        boxes.addWidget(self.boxFromSegmentButton)
        self.scriptedEffect.addLabeledOptionsWidget(_("Boxes:"), boxes)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        # One widget per option field; the parameter names are SegmentationOptions.PARAMETER_NAMES.
        self.optionWidgets = {
            "modality": self.modalitySelector,
            "threshold": self.thresholdSlider,
            "replace": self.replaceCheckBox,
            "keepLargestComponent": self.largestCheckBox,
            "fillHoles": self.fillHolesCheckBox,
        }
        self.modalitySelector.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.viewSelector.connect("currentIndexChanged(int)", self.onViewChanged)
        self.thresholdSlider.connect("valueChanged(double)", self.updateMRMLFromGUI)
        for checkBox in (self.replaceCheckBox, self.largestCheckBox, self.fillHolesCheckBox):
            checkBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.boxModeCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.boxFromSegmentButton.connect("clicked()", self.onBoxFromSegment)
        self.applyButton.connect("clicked()", self.onApply)
        self.allSlicesButton.connect("clicked()", self.onApplyAllSlices)
        self.allFramesButton.connect("clicked()", self.onApplyAllFrames)
        self.undoFramesButton.connect("clicked()", self.onUndoAllFrames)

    def activate(self):
        if self.sceneCloseObserver is None:
            scene = slicer.mrmlScene
            self.sceneCloseObserver = (scene, scene.AddObserver(scene.StartCloseEvent, self.onSceneStartClose))
        self.worker.activate()  # encode the shown slice ahead while the effect is active

    def deactivate(self):
        self.worker.deactivate()
        self._removeSceneObserver()
        for viewWidget, rubberBand in self.rubberBands.items():
            self.scriptedEffect.removeActor2D(viewWidget, rubberBand.actor)
        self.rubberBands = {}

    def cleanup(self):
        """Called by the editor widget (Slicer 5.10 and later) before it deletes the effect, active or not."""
        self.deactivate()
        self.worker.close()  # its timer stops and its run under way is cancelled: nothing reaches deleted widgets

    def _onDestroyed(self):
        """Slicer 5.8 deletes the effect without cleanup(): the same, from its destruction."""
        self._removeSceneObserver()
        self.worker.close()

    def _removeSceneObserver(self, *_args):
        if self.sceneCloseObserver is not None:
            scene, tag = self.sceneCloseObserver
            scene.RemoveObserver(tag)
            self.sceneCloseObserver = None

    def layoutChanged(self):
        """The layout's slice views changed: list the new ones (the stored view is kept for a layout that has it)."""
        self._fillViewSelector()

    def onSceneStartClose(self, caller, event):
        self.worker.stop()  # the run under way ends, and the worker with its encodings of this scene's slices
        self.logic.clearFramesSnapshot()  # its frames are going; a run in progress stops by itself
        self.undoFramesButton.enabled = False
        self.statusLabel.text = ""

    def sourceVolumeNodeChanged(self):
        # Auto is the default for a volume whose DICOM header names a modality the model knows; any other volume
        # keeps (or gets back) the remembered choice.
        if self.scriptedEffect.parameterSetNode() is None:
            return
        name = SegmentationOptions.PARAMETER_NAMES["modality"]
        hasHeader = headerModality(self._sourceVolume(), fileForInstance) is not None
        shown = self.scriptedEffect.parameter(name)
        modality = defaultModality(hasHeader, shown, self.session.modality)
        if modality != shown:
            self.scriptedEffect.setParameter(name, modality)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor  # no painting: keep the normal cursor

    def setMRMLDefaults(self):
        # The modality is remembered across sessions (by the session) as well as in the scene's parameter node.
        for name, value in SegmentationOptions(modality=self.session.modality).toParameters().items():
            self.scriptedEffect.setParameterDefault(name, value)
        self.scriptedEffect.setParameterDefault(VIEW_PARAMETER, DEFAULT_VIEW)
        self.scriptedEffect.setParameterDefault(BOX_MODE_PARAMETER, "1")

    def updateGUIFromMRML(self):
        options = self._options()
        widgets = (*self.optionWidgets.values(), self.viewSelector, self.boxModeCheckBox)
        blocked = [widget.blockSignals(True) for widget in widgets]
        for field, widget in self.optionWidgets.items():
            value = getattr(options, field)
            if isinstance(widget, qt.QComboBox):
                widget.setCurrentIndex(max(0, widget.findData(value)))
            elif isinstance(widget, qt.QCheckBox):
                widget.checked = value
            else:
                widget.value = value
        self._fillViewSelector()
        self.boxModeCheckBox.checked = self._boxMode()
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        self._updateButtons(running=self.session.busy)

    def updateMRMLFromGUI(self, *_args):
        values = {}
        for field, widget in self.optionWidgets.items():
            if isinstance(widget, qt.QComboBox):
                values[field] = widget.currentData
            elif isinstance(widget, qt.QCheckBox):
                values[field] = widget.checked
            else:
                values[field] = widget.value
        options = SegmentationOptions(**values)
        for name, value in options.toParameters().items():
            self.scriptedEffect.setParameter(name, value)
        if options.modality != AUTO:  # the remembered choice is a modality, for volumes without a header
            self.session.setModality(options.modality)
        self.scriptedEffect.setParameter(BOX_MODE_PARAMETER, "1" if self.boxModeCheckBox.checked else "0")

    def onViewChanged(self, *_args):
        """The user chose a view (only then is it stored: a stored view the layout lacks stays for a layout that has
        it, while the selector shows the view used meanwhile)."""
        if self.viewSelector.currentText:
            self.scriptedEffect.setParameter(VIEW_PARAMETER, self.viewSelector.currentText)

    def _fillViewSelector(self):
        """The layout's slice views, showing the one Apply uses (``resolveView``); writes no parameter."""
        if not hasattr(self, "viewSelector"):  # the editor reports layout changes before the options exist
            return
        wasBlocked = self.viewSelector.blockSignals(True)
        self.viewSelector.clear()
        for viewName in self._layoutViewNames():
            self.viewSelector.addItem(viewName)
        self.viewSelector.currentText = self._viewName() or ""
        self.viewSelector.blockSignals(wasBlocked)

    @staticmethod
    def _layoutViewNames():
        layoutManager = slicer.app.layoutManager()
        return list(layoutManager.sliceViewNames()) if layoutManager is not None else []

    def _viewName(self):
        """The slice view Apply, All slices/frames and Box from segment use: what the view selector shows."""
        storedView = (
            self.scriptedEffect.parameter(VIEW_PARAMETER) if self.scriptedEffect.parameterSetNode() else DEFAULT_VIEW
        )
        return resolveView(storedView, self._layoutViewNames())

    # ------------------------------------------------------------------ box mode: the drag
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        """Box mode: a left-button drag on a slice view shows a rectangle; the release segments it (``onBoxDrawn``,
        after the event has been handled, so that dialogs may open). Returns True for the events it uses, so the view
        does not also act on them (window/level, panning)."""
        if viewWidget.className() != "qMRMLSliceWidget" or not self._boxMode():
            return False
        if eventId == vtk.vtkCommand.MouseMoveEvent:
            self.worker.hoveredSliceNode = viewWidget.mrmlSliceNode()  # the slice to encode ahead for a box
        rubberBand = self._rubberBand(viewWidget)
        xy = callerInteractor.GetEventPosition()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            if callerInteractor.GetShiftKey() or callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
                return False
            if self.session.busy:
                return True
            confirmed = self.scriptedEffect.confirmCurrentSegmentVisible()
            if confirmed in (self.scriptedEffect.NotConfirmed, self.scriptedEffect.ConfirmedWithDialog):
                return True  # as Slicer's Draw effect: a dialog took the button release, so no drag starts
            rubberBand.start(xy)
            return True
        if not rubberBand.dragging:
            return False
        if eventId == vtk.vtkCommand.MouseMoveEvent:
            rubberBand.moveTo(xy)
            return True
        if eventId == vtk.vtkCommand.KeyPressEvent and callerInteractor.GetKeySym() == "Escape":
            rubberBand.finish()
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
            first, last = rubberBand.finish()
            if max(abs(last[0] - first[0]), abs(last[1] - first[1])) < MINIMUM_DRAG:
                self.statusLabel.text = _("Box mode: drag from one corner of the structure to the opposite corner.")
                return True
            corners = [self.xyToRas(point, viewWidget) for point in (first, last)]
            sliceNode = viewWidget.mrmlSliceNode()
            qt.QTimer.singleShot(0, lambda: self.onBoxDrawn(sliceNode, corners))
            return True
        return False

    def _rubberBand(self, viewWidget):
        if viewWidget not in self.rubberBands:
            self.rubberBands[viewWidget] = RubberBand(viewWidget)
            self.scriptedEffect.addActor2D(viewWidget, self.rubberBands[viewWidget].actor)
        return self.rubberBands[viewWidget]

    def _boxMode(self):
        return self.scriptedEffect.parameter(BOX_MODE_PARAMETER) == "1"

    # ------------------------------------------------------------------ actions
    # Each run starts here (views read, inputs checked) and goes on in the background worker (``WorkerDriver``).
    def onApply(self):
        if not self.scriptedEffect.confirmCurrentSegmentVisible():  # as Slicer's own effects ask before they write
            return
        self.worker.run(None, lambda options, writer: self.logic.startSlice(*self._targets(), options, writer))

    def onApplyAllSlices(self):
        if not self.scriptedEffect.confirmCurrentSegmentVisible():  # as Slicer's own effects ask before they write
            return
        self.worker.run(
            _("slices"), lambda options, writer: self.logic.startAllSlices(*self._targets(), options, writer)
        )

    def onApplyAllFrames(self):
        if not self.scriptedEffect.confirmCurrentSegmentVisible():  # as Slicer's own effects ask before they write
            return
        browser = self._sequenceBrowser()
        self.worker.run(
            _("frames"), lambda options, writer: self.logic.startAllFrames(browser, *self._targets(), options, writer)
        )

    def onBoxDrawn(self, sliceNode, corners):
        """Segment the box drawn on ``sliceNode``'s view, ``corners`` two opposite corners in RAS: what the release of
        a drag calls (and the self-test)."""

        def startBox(options, writer):
            source, _chosenView, segmentation, segmentId = self._targets()
            return self.logic.startBox(source, sliceNode, segmentation, segmentId, options, corners, writer)

        self.worker.run(None, startBox, model=BOX)  # the press asked about a hidden segment (processInteractionEvents)

    def onBoxFromSegment(self):
        if not self.scriptedEffect.confirmCurrentSegmentVisible():  # as Slicer's own effects ask before they write
            return
        self.worker.run(
            None, lambda options, writer: self.logic.startBoxFromSegment(*self._targets(), options, writer), model=BOX
        )

    def onUndoAllFrames(self):
        with userErrorDisplay(_("Undoing all frames failed.")), self.session.job(_("undoing all frames")):
            self.statusLabel.text = _("All-frames run undone.") if self.logic.undoLastFrames() else ""
        self._updateButtons(running=False)

    def _run(self, what, action, model=AUTOMATIC):
        """Load ``model`` (asking to install or download), then run ``action(options, writer, progress)`` with the
        buttons disabled; the progress dialog (batch runs) closes also when the run fails. Each caller has asked
        whether to edit a hidden segment (confirmCurrentSegmentVisible) before."""
        with userErrorDisplay(_("De-LightSAM segmentation failed.")), self.session.job(_("segmenting")):
            self._updateButtons(running=True)
            try:
                options, chosen = self._options(), None
                if model == AUTOMATIC:  # Auto: the header's modality, or a message, before any download
                    options, chosen = resolveModality(options, self._sourceVolume(), fileForInstance)
                with DownloadProgressDialog(model) as download:
                    predictor = self.session.predictor(confirmDialog, download.report, model)
                with (
                    ProgressDialog(SegmentationCancelled, _("Stop (keep what is done)")) as progress,
                    slicer.util.WaitCursor(),
                ):

                    def report(done, total):
                        progress.update(
                            done,
                            total,
                            _("De-LightSAM: {done} of {total} {what}").format(done=done, total=total, what=what),
                        )

                    result = action(options, EffectWriter(self.scriptedEffect), report if what else None)
                self.statusLabel.text = self._statusText(result, predictor, self.session.checkpointInUse(model))
                if chosen is not None:
                    self.statusLabel.text += " " + _("Modality from the DICOM header: {reason}.").format(
                        reason=chosen.reason
                    )
            finally:
                self._updateButtons(running=False)

    def _statusText(self, result, predictor, checkpoint):
        """What a finished run wrote; built from the run's own facts only, so it cannot fail after the write."""
        if result.sceneClosed:
            return _("Stopped: the scene was closed.")
        text = _(
            "{state} {description}: {added} voxels added, {removed} removed, {seconds} s ({device}; {checkpoint})"
        ).format(
            state=_("Cancelled after") if result.cancelled else _("Done:"),
            description=result.description,
            added=result.voxelsAdded,
            removed=result.voxelsRemoved,
            seconds=f"{result.seconds:.1f}",
            device=getattr(predictor, "description", ""),
            checkpoint=checkpoint,
        )
        return text

    def _updateButtons(self, running):
        self.applyButton.enabled = self.allSlicesButton.enabled = self.boxFromSegmentButton.enabled = not running
        self.allFramesButton.enabled = not running and self._sequenceBrowser() is not None
        self.undoFramesButton.enabled = not running and self.logic.framesSnapshot is not None

    def _predictor(self, model=AUTOMATIC):
        """The predictor provider of the MRML logic: the session's predictor of ``model`` (loaded by ``_run``)."""
        with DownloadProgressDialog(model) as download:
            return self.session.predictor(confirmDialog, download.report, model)

    def _options(self):
        return SegmentationOptions.fromParameters(
            {name: self.scriptedEffect.parameter(name) for name in SegmentationOptions.PARAMETER_NAMES.values()}
        )

    def _targets(self):
        """(source volume, slice node, segmentation node, segment ID) the editor has selected."""
        parameters = self.scriptedEffect.parameterSetNode()
        return (
            self._sourceVolume(),
            self._sliceNode(),
            parameters.GetSegmentationNode(),
            parameters.GetSelectedSegmentID(),
        )

    def _sourceVolume(self):
        parameters = self.scriptedEffect.parameterSetNode()
        return parameters.GetSourceVolumeNode() if parameters is not None else None

    def _sliceNode(self):
        viewName = self._viewName()
        sliceWidget = slicer.app.layoutManager().sliceWidget(viewName) if viewName else None
        return sliceWidget.mrmlSliceNode() if sliceWidget else None

    def _sequenceBrowser(self):
        volume = self._sourceVolume()
        if volume is None or not hasattr(slicer.modules, "sequences"):
            return None
        return slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(volume)


def fileForInstance(instanceUID):
    """The file of a DICOM instance in Slicer's DICOM database ("" without a database)."""
    database = getattr(slicer, "dicomDatabase", None)  # set by the DICOM module
    return database.fileForInstance(instanceUID) if database is not None and database.isOpen else ""


class RubberBand:
    """The rectangle a slice view shows while a box is dragged: a 2D actor in the view's XY pixels (as Slicer's Draw
    effect shows its outline), hidden when the drag ends."""

    def __init__(self, viewWidget):
        self.viewWidget = viewWidget
        self.first = self.last = None
        self.points = vtk.vtkPoints()
        self.points.SetNumberOfPoints(4)
        outline = vtk.vtkCellArray()
        outline.InsertNextCell(5)
        for corner in (0, 1, 2, 3, 0):
            outline.InsertCellPoint(corner)
        polyData = vtk.vtkPolyData()
        polyData.SetPoints(self.points)
        polyData.SetLines(outline)
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(polyData)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(1, 1, 0)
        self.actor.GetProperty().SetLineWidth(1)
        self.actor.VisibilityOff()

    @property
    def dragging(self):
        return self.first is not None

    def start(self, xy):
        self.first = tuple(xy)
        self.actor.VisibilityOn()
        self.moveTo(xy)

    def moveTo(self, xy):
        self.last = tuple(xy)
        (x0, y0), (x1, y1) = self.first, self.last
        for index, (x, y) in enumerate(((x0, y0), (x1, y0), (x1, y1), (x0, y1))):
            self.points.SetPoint(index, x, y, 0)
        self.points.Modified()
        self.viewWidget.sliceView().scheduleRender()

    def finish(self):
        """Hide the rectangle; returns its (first, last) corners in XY."""
        corners = (self.first, self.last)
        self.first = self.last = None
        self.actor.VisibilityOff()
        self.viewWidget.sliceView().scheduleRender()
        return corners


class EffectWriter:
    """Writes the MRML logic's labelmaps through the effect, in the editor's modifier geometry: the editor's undo,
    editable area, intensity range and overwrite settings apply."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect

    def modifierGeometry(self):
        labelmap = self.scriptedEffect.defaultModifierLabelmap()
        if labelmap is None:
            raise SegmentationError(
                _("the Segment Editor has no geometry for this segmentation yet; select a source volume")
            )
        return ModifierGeometry.fromImage(labelmap)

    def saveStateForUndo(self):
        self.scriptedEffect.saveStateForUndo()

    def add(self, labelmap):
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd
        )

    def remove(self, labelmap):
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove
        )
