"""The De-LightSAM Segment Editor effect: the mask of the slice or frame a view shows, with no prompts.

UI and parameters only. The session (DeLightSAMSlicerLib.Session) owns the predictor and asks, through this file's
dialogs, to install or download; the MRML logic (DeLightSAMSlicerLib.MRMLLogic) segments and writes through this
effect's modifySelectedSegmentByLabelmap in the editor's modifier geometry, so the editor's undo, editable area,
intensity range and overwrite settings hold. Both are Qt-free and tested under slicer-core.
"""

import os

import qt
import slicer
from slicer.i18n import tr as _
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from DeLightSAMSlicerLib.Geometry import SegmentationError
from DeLightSAMSlicerLib.Labelmaps import ModifierGeometry
from DeLightSAMSlicerLib.MRMLLogic import DeLightSAMMRMLLogic, SegmentationCancelled, SegmentationOptions
from DeLightSAMSlicerLib.Session import DeLightSAMSession

VIEW_PARAMETER = "SliceView"  # the slice view whose slice is segmented (the other parameters: SegmentationOptions)
DEFAULT_VIEW = "Red"


def modalityLabels():
    """Modality name -> what the user reads."""
    return {
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
        self.session = DeLightSAMSession.shared()
        self.logic = DeLightSAMMRMLLogic(self._predictor)
        self.sceneCloseObserver = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return "<html>" + _(
            "Segment the slice a view shows with <b>De-LightSAM</b>, no prompts needed.<p>"
            "Choose the modality and the view, then <b>Apply</b>: the mask goes into the selected segment, within the "
            "editor's editable area and intensity range, overwriting other segments as the editor is set to. "
            "<b>All slices</b> runs every slice along the view's direction. Ctrl+Z undoes Apply and All slices.<p>"
            "<b>All frames</b> runs the shown slice in every frame of a sequence; <b>Undo all frames</b> puts every "
            "frame back. Ctrl+Z cannot undo All frames: Slicer clears the editor's undo history whenever the shown "
            "frame changes.") + "</html>"

    def setupOptionsFrame(self):
        self.modalitySelector = qt.QComboBox()
        for name, label in modalityLabels().items():
            self.modalitySelector.addItem(label, name)
        self.modalitySelector.toolTip = _("The kind of image: selects the matching De-LightSAM modality query")
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
        self.undoFramesButton.toolTip = _("Put every frame's segmentation back as it was before the last 'All frames' "
                                          "run (Ctrl+Z cannot: the editor's undo history is cleared when the frame changes)")
        self.undoFramesButton.enabled = False
        self.scriptedEffect.addOptionsWidget(self.undoFramesButton)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        # One widget per option field; the parameter names are SegmentationOptions.PARAMETER_NAMES.
        self.optionWidgets = {"modality": self.modalitySelector, "threshold": self.thresholdSlider,
                              "replace": self.replaceCheckBox, "keepLargestComponent": self.largestCheckBox,
                              "fillHoles": self.fillHolesCheckBox}
        self.modalitySelector.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.viewSelector.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.thresholdSlider.connect("valueChanged(double)", self.updateMRMLFromGUI)
        for checkBox in (self.replaceCheckBox, self.largestCheckBox, self.fillHolesCheckBox):
            checkBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.applyButton.connect("clicked()", self.onApply)
        self.allSlicesButton.connect("clicked()", self.onApplyAllSlices)
        self.allFramesButton.connect("clicked()", self.onApplyAllFrames)
        self.undoFramesButton.connect("clicked()", self.onUndoAllFrames)

    def activate(self):
        if self.sceneCloseObserver is None:
            self.sceneCloseObserver = slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)

    def deactivate(self):
        if self.sceneCloseObserver is not None:
            slicer.mrmlScene.RemoveObserver(self.sceneCloseObserver)
            self.sceneCloseObserver = None

    def onSceneStartClose(self, caller, event):
        self.logic.clearFramesSnapshot()  # its frames are going; a run in progress stops by itself
        self.undoFramesButton.enabled = False
        self.statusLabel.text = ""

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor  # no painting: keep the normal cursor

    def setMRMLDefaults(self):
        # The modality is remembered across sessions (by the session) as well as in the scene's parameter node.
        for name, value in SegmentationOptions(modality=self.session.modality).toParameters().items():
            self.scriptedEffect.setParameterDefault(name, value)
        self.scriptedEffect.setParameterDefault(VIEW_PARAMETER, DEFAULT_VIEW)

    def updateGUIFromMRML(self):
        options = self._options()
        widgets = (*self.optionWidgets.values(), self.viewSelector)
        blocked = [widget.blockSignals(True) for widget in widgets]
        for field, widget in self.optionWidgets.items():
            value = getattr(options, field)
            if isinstance(widget, qt.QComboBox):
                widget.setCurrentIndex(max(0, widget.findData(value)))
            elif isinstance(widget, qt.QCheckBox):
                widget.checked = value
            else:
                widget.value = value
        self.viewSelector.clear()
        for viewName in slicer.app.layoutManager().sliceViewNames():
            self.viewSelector.addItem(viewName)
        self.viewSelector.currentText = self.scriptedEffect.parameter(VIEW_PARAMETER)
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
        self.session.setModality(options.modality)
        if self.viewSelector.currentText:
            self.scriptedEffect.setParameter(VIEW_PARAMETER, self.viewSelector.currentText)

    # ------------------------------------------------------------------ actions
    def onApply(self):
        self._run(None, lambda options, writer, progress: self.logic.segmentSlice(*self._targets(), options, writer))

    def onApplyAllSlices(self):
        self._run(_("slices"), lambda options, writer, progress: self.logic.segmentAllSlices(
            *self._targets(), options, writer, progress=progress))

    def onApplyAllFrames(self):
        browser = self._sequenceBrowser()
        self._run(_("frames"), lambda options, writer, progress: self.logic.segmentAllFrames(
            browser, *self._targets(), options, writer, progress=progress))

    def onUndoAllFrames(self):
        from DeLightSAM import userErrorDisplay

        with userErrorDisplay(_("Undoing all frames failed.")), self.session.job(_("undoing all frames")):
            self.statusLabel.text = _("All-frames run undone.") if self.logic.undoLastFrames() else ""
        self._updateButtons(running=False)

    def _run(self, what, action):
        """Load the model (asking to install or download), then run ``action(options, writer, progress)`` with the
        buttons disabled; the progress dialog (batch runs) closes also when the run fails."""
        from DeLightSAM import DownloadProgressDialog, ProgressDialog, confirmDialog, userErrorDisplay

        with userErrorDisplay(_("De-LightSAM segmentation failed.")), self.session.job(_("segmenting")):
            self._updateButtons(running=True)
            try:
                with DownloadProgressDialog() as download:
                    predictor = self.session.predictor(confirmDialog, download.report)
                with ProgressDialog(SegmentationCancelled, _("Stop (keep what is done)")) as progress, \
                        slicer.util.WaitCursor():
                    def report(done, total):
                        progress.update(done, total, _("De-LightSAM: {done} of {total} {what}").format(
                            done=done, total=total, what=what))

                    result = action(self._options(), EffectWriter(self.scriptedEffect), report if what else None)
                self.statusLabel.text = self._statusText(result, predictor)
            finally:
                self._updateButtons(running=False)

    def _statusText(self, result, predictor):
        if result.sceneClosed:
            return _("Stopped: the scene was closed.")
        text = _("{state} {description}: {added} voxels added, {removed} removed, {seconds} s ({device}; {checkpoint})").format(
            state=_("Cancelled after") if result.cancelled else _("Done:"), description=result.description,
            added=result.voxelsAdded, removed=result.voxelsRemoved, seconds=f"{result.seconds:.1f}",
            device=getattr(predictor, "description", ""), checkpoint=self.session.checkpointReference())
        return text

    def _updateButtons(self, running):
        self.applyButton.enabled = self.allSlicesButton.enabled = not running
        self.allFramesButton.enabled = not running and self._sequenceBrowser() is not None
        self.undoFramesButton.enabled = not running and self.logic.framesSnapshot is not None

    def _predictor(self):
        """The predictor provider of the MRML logic: the session's predictor (loaded by ``_run`` beforehand)."""
        from DeLightSAM import DownloadProgressDialog, confirmDialog

        with DownloadProgressDialog() as download:
            return self.session.predictor(confirmDialog, download.report)

    def _options(self):
        return SegmentationOptions.fromParameters({name: self.scriptedEffect.parameter(name)
                                                   for name in SegmentationOptions.PARAMETER_NAMES.values()})

    def _targets(self):
        """(source volume, slice node, segmentation node, segment ID) the editor has selected."""
        parameters = self.scriptedEffect.parameterSetNode()
        return self._sourceVolume(), self._sliceNode(), parameters.GetSegmentationNode(), parameters.GetSelectedSegmentID()

    def _sourceVolume(self):
        parameters = self.scriptedEffect.parameterSetNode()
        return parameters.GetSourceVolumeNode() if parameters is not None else None

    def _sliceNode(self):
        widget = slicer.app.layoutManager().sliceWidget(self.scriptedEffect.parameter(VIEW_PARAMETER))
        return widget.mrmlSliceNode() if widget else None

    def _sequenceBrowser(self):
        volume = self._sourceVolume()
        if volume is None or not hasattr(slicer.modules, "sequences"):
            return None
        return slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(volume)


class EffectWriter:
    """Writes the MRML logic's labelmaps through the effect, in the editor's modifier geometry: the editor's undo,
    editable area, intensity range and overwrite settings apply."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect

    def modifierGeometry(self):
        labelmap = self.scriptedEffect.defaultModifierLabelmap()
        if labelmap is None:
            raise SegmentationError(_("the Segment Editor has no geometry for this segmentation yet; select a source volume"))
        return ModifierGeometry.fromImage(labelmap)

    def saveStateForUndo(self):
        self.scriptedEffect.saveStateForUndo()

    def add(self, labelmap):
        self.scriptedEffect.modifySelectedSegmentByLabelmap(labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd)

    def remove(self, labelmap):
        self.scriptedEffect.modifySelectedSegmentByLabelmap(labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove)
