"""The De-LightSAM Segment Editor effect: the mask of the slice or frame a view shows, with no prompts.

UI and parameters only; the work is done by DeLightSAMMRMLLogic (tested outside Slicer) and written through
this effect's modifySelectedSegmentByLabelmap, so the editor's undo, masking and overwrite settings hold.
"""

import os

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from DeLightSAMLib.registry import MODALITIES

MODALITY_LABELS = {
    "dermoscopy": "Dermoscopy (skin lesion)",
    "xray": "Chest X-ray (lungs)",
    "ultrasound": "Ultrasound (breast lesion)",
    "fundus": "Fundus photograph (vessels)",
    "microscopy": "Microscopy (nuclei)",
    "colonoscopy": "Colonoscopy (polyp)",
}


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Segment the current slice (or all slices / frames) of the source volume with De-LightSAM."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "De-LightSAM"  # untranslated: used as the effect's identifier
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)

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
            "<html>Segment the slice a view shows with <b>De-LightSAM</b>, no prompts needed.<p>"
            "Choose the modality and the view, then <b>Apply</b>: the mask goes into the selected segment, "
            "respecting the editable area and overwrite settings. <b>All slices</b> runs every slice along the "
            "view's direction; <b>All frames</b> runs every frame of a sequence. Undo with Ctrl+Z.</html>"
        )

    def setupOptionsFrame(self):
        self.modalitySelector = qt.QComboBox()
        for name in MODALITIES:
            self.modalitySelector.addItem(MODALITY_LABELS.get(name, name), name)
        self.modalitySelector.toolTip = "The kind of image: selects the matching De-LightSAM modality query"
        self.scriptedEffect.addLabeledOptionsWidget("Modality:", self.modalitySelector)

        self.viewSelector = qt.QComboBox()
        self.viewSelector.toolTip = "The slice view whose slice (or frame) is segmented"
        self.scriptedEffect.addLabeledOptionsWidget("View:", self.viewSelector)

        self.thresholdSlider = slicer.qMRMLSliderWidget()
        self.thresholdSlider.minimum, self.thresholdSlider.maximum = 0.05, 0.95
        self.thresholdSlider.singleStep, self.thresholdSlider.decimals = 0.05, 2
        self.thresholdSlider.toolTip = "Probability above which a pixel is in the mask (0.5 as published)"
        self.scriptedEffect.addLabeledOptionsWidget("Threshold:", self.thresholdSlider)

        self.replaceCheckBox = qt.QCheckBox("Replace the slice's contents")
        self.replaceCheckBox.toolTip = "Set the slice to exactly the prediction (an empty prediction clears it)"
        self.largestCheckBox = qt.QCheckBox("Keep largest region")
        self.fillHolesCheckBox = qt.QCheckBox("Fill holes")
        options = qt.QHBoxLayout()
        for checkBox in (self.replaceCheckBox, self.largestCheckBox, self.fillHolesCheckBox):
            options.addWidget(checkBox)
        self.scriptedEffect.addOptionsWidget(options)

        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = "Segment the slice shown in the chosen view"
        self.allSlicesButton = qt.QPushButton("All slices")
        self.allSlicesButton.toolTip = "Segment every slice along the chosen view's direction (one undo step)"
        self.allFramesButton = qt.QPushButton("All frames")
        self.allFramesButton.toolTip = "Segment the shown slice in every frame of the sequence"
        buttons = qt.QHBoxLayout()
        for button in (self.applyButton, self.allSlicesButton, self.allFramesButton):
            buttons.addWidget(button)
        self.scriptedEffect.addOptionsWidget(buttons)

        self.undoFramesButton = qt.QPushButton("Undo all frames")
        self.undoFramesButton.toolTip = ("Put every frame's segmentation back as it was before the last 'All frames' "
                                         "run (Ctrl+Z only covers the frame on screen)")
        self.undoFramesButton.enabled = False
        self.scriptedEffect.addOptionsWidget(self.undoFramesButton)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        self.modalitySelector.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.viewSelector.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.thresholdSlider.connect("valueChanged(double)", self.updateMRMLFromGUI)
        for checkBox in (self.replaceCheckBox, self.largestCheckBox, self.fillHolesCheckBox):
            checkBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.applyButton.connect("clicked()", self.onApply)
        self.allSlicesButton.connect("clicked()", self.onApplyAllSlices)
        self.allFramesButton.connect("clicked()", self.onApplyAllFrames)
        self.undoFramesButton.connect("clicked()", self.onUndoAllFrames)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor  # no painting: keep the normal cursor

    def setMRMLDefaults(self):
        # The modality is remembered across sessions as well as in the scene's parameter node.
        self.scriptedEffect.setParameterDefault("Modality", qt.QSettings().value("DeLightSAM/Modality", MODALITIES[0]))
        self.scriptedEffect.setParameterDefault("SliceView", "Red")
        self.scriptedEffect.setParameterDefault("Threshold", 0.5)
        self.scriptedEffect.setParameterDefault("Replace", 0)
        self.scriptedEffect.setParameterDefault("KeepLargest", 0)
        self.scriptedEffect.setParameterDefault("FillHoles", 0)

    def updateGUIFromMRML(self):
        widgets = (self.modalitySelector, self.viewSelector, self.thresholdSlider, self.replaceCheckBox,
                   self.largestCheckBox, self.fillHolesCheckBox)
        blocked = [widget.blockSignals(True) for widget in widgets]
        self.modalitySelector.setCurrentIndex(max(0, self.modalitySelector.findData(self.scriptedEffect.parameter("Modality"))))
        self.viewSelector.clear()
        for viewName in slicer.app.layoutManager().sliceViewNames():
            self.viewSelector.addItem(viewName)
        self.viewSelector.currentText = self.scriptedEffect.parameter("SliceView")
        self.thresholdSlider.value = self.scriptedEffect.doubleParameter("Threshold")
        self.replaceCheckBox.checked = self.scriptedEffect.integerParameter("Replace") != 0
        self.largestCheckBox.checked = self.scriptedEffect.integerParameter("KeepLargest") != 0
        self.fillHolesCheckBox.checked = self.scriptedEffect.integerParameter("FillHoles") != 0
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        self.allFramesButton.enabled = self._sequenceBrowser() is not None

    def updateMRMLFromGUI(self, *_):
        modality = self.modalitySelector.currentData
        self.scriptedEffect.setParameter("Modality", modality)
        qt.QSettings().setValue("DeLightSAM/Modality", modality)
        if self.viewSelector.currentText:
            self.scriptedEffect.setParameter("SliceView", self.viewSelector.currentText)
        self.scriptedEffect.setParameter("Threshold", self.thresholdSlider.value)
        self.scriptedEffect.setParameter("Replace", int(self.replaceCheckBox.checked))
        self.scriptedEffect.setParameter("KeepLargest", int(self.largestCheckBox.checked))
        self.scriptedEffect.setParameter("FillHoles", int(self.fillHolesCheckBox.checked))

    # ------------------------------------------------------------------ actions
    def onApply(self):
        self._run(lambda logic, args, options: logic.segmentSlice(*args, **options))

    def onApplyAllSlices(self):
        self._run(lambda logic, args, options: logic.segmentAllSlices(*args, progress=self._progress("slices"), **options))

    def onApplyAllFrames(self):
        browser = self._sequenceBrowser()
        self._run(lambda logic, args, options: logic.segmentAllFrames(browser, *args, progress=self._progress("frames"), **options))

    def onUndoAllFrames(self):
        from DeLightSAM import DeLightSAMLogic

        DeLightSAMLogic.shared().mrmlLogic().undoLastFrames()
        self.undoFramesButton.enabled = False
        self.statusLabel.text = "All-frames run undone."

    def _run(self, action):
        from DeLightSAM import DeLightSAMLogic, userErrorDisplay
        from DeLightSAMMRMLLogic import PostProcessing

        parameters = self.scriptedEffect.parameterSetNode()
        segmentId = parameters.GetSelectedSegmentID()
        args = (self._sourceVolume(), self._sliceNode(), parameters.GetSegmentationNode(), segmentId,
                self.scriptedEffect.parameter("Modality"), EffectWriter(self.scriptedEffect))
        options = dict(
            threshold=self.scriptedEffect.doubleParameter("Threshold"),
            replace=self.scriptedEffect.integerParameter("Replace") != 0,
            postProcessing=PostProcessing(keepLargestComponent=self.scriptedEffect.integerParameter("KeepLargest") != 0,
                                          fillHoles=self.scriptedEffect.integerParameter("FillHoles") != 0),
        )
        logic = DeLightSAMLogic.shared()
        with userErrorDisplay("De-LightSAM segmentation failed."):
            mrmlLogic = logic.mrmlLogic()
            predictor = mrmlLogic.predictor  # loads the model now, asking to install or download if needed
            qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                result = action(mrmlLogic, args, options)
            finally:
                qt.QApplication.restoreOverrideCursor()
            self.undoFramesButton.enabled = mrmlLogic.framesSnapshot is not None
            state = "cancelled after" if result.cancelled else "done:"
            self.statusLabel.text = (
                f"{state} {result.description}, {result.voxelCount} voxels, {result.seconds:.1f} s "
                f"({getattr(predictor, 'description', '')}; {logic.checkpointReference()})"
            )

    def _progress(self, what):
        from DeLightSAMMRMLLogic import SegmentationCancelled

        dialog = slicer.util.createProgressDialog(labelText=f"De-LightSAM: segmenting all {what}...", maximum=100)
        dialog.setCancelButtonText("Stop (keep what is done)")

        def report(done, total):
            dialog.setValue(int(100 * done / max(total, 1)))
            dialog.setLabelText(f"De-LightSAM: {done} of {total} {what}")
            slicer.app.processEvents()
            if done >= total:
                dialog.close()
            elif dialog.wasCanceled:
                dialog.close()
                raise SegmentationCancelled()

        return report

    def _sourceVolume(self):
        parameters = self.scriptedEffect.parameterSetNode()
        getter = getattr(parameters, "GetSourceVolumeNode", None) or parameters.GetMasterVolumeNode
        return getter()

    def _sliceNode(self):
        widget = slicer.app.layoutManager().sliceWidget(self.scriptedEffect.parameter("SliceView"))
        return widget.mrmlSliceNode() if widget else None

    def _sequenceBrowser(self):
        volume = self._sourceVolume()
        if volume is None or not hasattr(slicer.modules, "sequences"):
            return None
        return slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(volume)


class EffectWriter:
    """Writes the MRML logic's labelmaps through the effect: editor undo, masking and overwrite apply."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect

    def saveStateForUndo(self):
        self.scriptedEffect.saveStateForUndo()

    def apply(self, labelmaps, replace):
        effect = slicer.qSlicerSegmentEditorAbstractEffect
        if replace:
            self.scriptedEffect.modifySelectedSegmentByLabelmap(labelmaps.background, effect.ModificationModeRemove)
        if labelmaps.voxelCount:
            self.scriptedEffect.modifySelectedSegmentByLabelmap(labelmaps.mask, effect.ModificationModeAdd)
