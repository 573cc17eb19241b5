"""De-LightSAM module for 3D Slicer: the panel for both models' weights (De-LightSAM, LiteMedSAM), the device and the
Python packages.

Segmentation happens in the Segment Editor (effect "De-LightSAM", module SegmentEditorDeLightSAM). The work is in
the Qt-free package DeLightSAMSlicerLib, tested under slicer-core: ``Session`` owns a user's settings, installs and
downloads over the process's loaded predictors; ``MRMLLogic`` writes masks. The dialogs both panels share and the
adapters to the Slicer application are in the package DeLightSAMQt beside this file. This file is glue.

DeLightSAMLib (the library) is imported inside functions only: importing DeLightSAMSlicerLib first is what makes it
importable when Slicer runs the module from a source checkout.
"""

import importlib.util
import os
import sys

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)


def addSourceCheckoutOfTheLogicToPath(moduleFile):
    """From a source checkout Slicer puts only this module's folder on sys.path; the MRML logic both front ends share
    (DeLightSAMSlicerLib) sits one folder up, beside the library. A built extension installs both into
    qt-scripted-modules, which is on sys.path already. Runs before the imports below (and before the effect's)."""
    if importlib.util.find_spec("DeLightSAMSlicerLib") is not None:
        return
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(moduleFile)))
    if os.path.isfile(os.path.join(checkout, "DeLightSAMSlicerLib", "__init__.py")) and checkout not in sys.path:
        sys.path.append(checkout)
        importlib.invalidate_caches()


addSourceCheckoutOfTheLogicToPath(__file__)

from DeLightSAMSlicerLib.Models import AUTOMATIC, BOX, MODELS, modelTitle
from DeLightSAMSlicerLib.Session import DEVICES, LOCAL_FILE
from DeLightSAMQt.Dialogs import DownloadProgressDialog, confirmDialog, userErrorDisplay
from DeLightSAMQt.SlicerApp import sharedSession

#
# DeLightSAM
#


class DeLightSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("De-LightSAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["De-LightSAM for Slicer contributors"]
        self.parent.helpText = _(
            "Prompt-free segmentation of dermoscopy, chest X-ray, ultrasound, fundus, microscopy and colonoscopy "
            "images with De-LightSAM (IEEE TCSVT 2025), and box-prompted segmentation of any slice with LiteMedSAM. "
            "Choose both models' weights and the device here; segment in the Segment Editor with the 'De-LightSAM' "
            "effect."
        )
        self.parent.acknowledgementText = _(
            "De-LightSAM: Modality-Decoupled Lightweight SAM for Generalizable Medical Segmentation "
            "(arXiv 2407.14153). LiteMedSAM: bowang-lab/MedSAM (Apache-2.0). The extension reimplements both networks "
            "in PyTorch."
        )


#
# DeLightSAMWidget
#


class DeLightSAMWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.session = sharedSession()

        self.weights = {model: WeightsWidgets(self, model) for model in MODELS}
        for widgets in self.weights.values():
            self.layout.addWidget(widgets.box)

        form = qt.QFormLayout()
        box = qt.QGroupBox(_("Device and Python packages"))
        box.setLayout(form)
        self.layout.addWidget(box)
        self.deviceSelector = qt.QComboBox()
        for device in DEVICES:
            self.deviceSelector.addItem(device)
        form.addRow(_("Device:"), self.deviceSelector)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)

        self.installButton = qt.QPushButton(_("Install dependencies"))
        self.installButton.toolTip = _("Install PyTorch (through the PyTorch extension) and the other Python packages")
        form.addRow(self.installButton)
        self.layout.addStretch(1)

        self.deviceSelector.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.installButton.connect("clicked()", self.onInstall)
        self.updateGUIFromSession()

    def enter(self):
        # Packages or weights may have changed since the panel was last shown. Read from package metadata and files:
        # nothing is imported (loaded torch files can block an uninstall on Windows).
        self.updateGUIFromSession()

    def updateSessionFromGUI(self, model):
        widgets = self.weights[model]
        self.session.setCheckpoint(widgets.checkpointSelector.currentData, widgets.checkpointPath.text.strip(), model)
        self.updateGUIFromSession()

    def onDeviceChanged(self, *_args):
        self.session.setDevice(self.deviceSelector.currentText)
        self.updateGUIFromSession()

    def updateGUIFromSession(self):
        for widgets in self.weights.values():
            widgets.updateFromSession()
        wasBlocked = self.deviceSelector.blockSignals(True)
        self.deviceSelector.currentText = self.session.device
        self.deviceSelector.blockSignals(wasBlocked)
        self.installButton.enabled = not self.session.busy
        self.statusLabel.text = self.session.environmentStatus() or _("PyTorch and the Python packages are installed.")

    def onBrowse(self, model):
        path = qt.QFileDialog.getOpenFileName(
            self.parent,
            _("{model} checkpoint").format(model=modelTitle(model)),
            "",
            _("PyTorch checkpoints") + " (*.pth *.pt);;" + _("All files") + " (*)",
        )
        if path:
            self.weights[model].checkpointPath.text = path
            self.updateSessionFromGUI(model)

    def onDownload(self, model):
        with userErrorDisplay(_("Download failed.")), self.session.job(_("downloading weights")):
            with DownloadProgressDialog(model) as progress:
                self.session.downloadCheckpoint(confirmDialog, progress.report, model)
        self.updateGUIFromSession()

    def onInstall(self):
        with userErrorDisplay(_("Installing dependencies failed.")), self.session.job(_("installing packages")):
            with slicer.util.WaitCursor():
                self.session.installRequirements(confirmDialog)
        self.updateGUIFromSession()


class WeightsWidgets:
    """One model's weights in the panel: the checkpoint (registry entries of that model, or a local file), the file,
    Download, and a line saying where the weights are, where they came from and whether they are loaded."""

    def __init__(self, panel, model):
        self.panel = panel
        self.session = panel.session
        self.model = model
        session = self.session
        form = qt.QFormLayout()
        purpose = _("automatic, by modality: Apply") if model == AUTOMATIC else _("by box: box mode, Box from segment")
        self.box = qt.QGroupBox(_("{model} weights ({purpose})").format(model=modelTitle(model), purpose=purpose))
        self.box.setLayout(form)

        self.checkpointSelector = qt.QComboBox()
        for name, description in session.checkpointChoices(model):
            self.checkpointSelector.addItem(description, name)
        self.checkpointSelector.addItem(_("Local file..."), LOCAL_FILE)
        self.checkpointSelector.toolTip = _("Which {model} weights to use").format(model=modelTitle(model))
        form.addRow(_("Checkpoint:"), self.checkpointSelector)

        self.checkpointPath = qt.QLineEdit()
        self.checkpointPath.placeholderText = _("path to a .pth checkpoint")
        self.browseButton = qt.QPushButton(_("Browse..."))
        pathRow = qt.QHBoxLayout()
        pathRow.addWidget(self.checkpointPath)
        pathRow.addWidget(self.browseButton)
        form.addRow(_("File:"), pathRow)

        self.downloadButton = qt.QPushButton(_("Download weights"))
        self.downloadButton.toolTip = _("Download the selected checkpoint into the per-user cache (asks first)")
        form.addRow(self.downloadButton)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)

        self.checkpointSelector.connect("currentIndexChanged(int)", self.onChanged)
        self.checkpointPath.connect("editingFinished()", self.onChanged)
        self.browseButton.connect("clicked()", self.onBrowse)
        self.downloadButton.connect("clicked()", self.onDownload)

    def onChanged(self, *_args):
        self.panel.updateSessionFromGUI(self.model)

    def onBrowse(self):
        self.panel.onBrowse(self.model)

    def onDownload(self):
        self.panel.onDownload(self.model)

    def updateFromSession(self):
        widgets = (self.checkpointSelector, self.checkpointPath)
        blocked = [widget.blockSignals(True) for widget in widgets]
        choice = self.session.checkpointChoice(self.model)
        self.checkpointSelector.setCurrentIndex(max(0, self.checkpointSelector.findData(choice)))
        self.checkpointPath.text = self.session.localCheckpointPath(self.model)
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        local = choice == LOCAL_FILE
        self.checkpointPath.enabled = self.browseButton.enabled = local
        self.downloadButton.enabled = not local and not self.session.busy
        self.statusLabel.text = self.session.weightsStatus(self.model)


#
# DeLightSAMTest
#


class DeLightSAMTest(ScriptedLoadableModuleTest):
    """The module panel in Slicer: it opens and states what is missing, for each model; an empty local path says so.
    The segmentation itself is tested by SegmentEditorDeLightSAMTest (module SegmentEditorDeLightSAM)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_panel_states_the_checkpoint_problem()

    def test_panel_states_the_checkpoint_problem(self):
        session = sharedSession()
        saved = {model: (session.checkpointChoice(model), session.localCheckpointPath(model)) for model in MODELS}
        try:
            slicer.util.selectModule("DeLightSAM")
            widget = slicer.modules.delightsam.widgetRepresentation().self()
            session.setCheckpoint(LOCAL_FILE, "", AUTOMATIC)
            session.setCheckpoint("litemedsam", "", BOX)
            widget.enter()
            automatic, box = widget.weights[AUTOMATIC], widget.weights[BOX]
            self.assertIn("De-LightSAM weights: no checkpoint file chosen", automatic.statusLabel.text)
            self.assertFalse(automatic.downloadButton.enabled)
            self.assertTrue(automatic.browseButton.enabled)
            self.assertTrue(box.statusLabel.text.startswith("LiteMedSAM weights: "))
            self.assertEqual(box.checkpointSelector.currentData, "litemedsam")
            self.assertEqual(box.checkpointSelector.count, 2)  # LiteMedSAM's registry entry and Local file...
            self.assertTrue(box.downloadButton.enabled)
        finally:
            for model, (choice, path) in saved.items():
                session.setCheckpoint(choice, path, model)
        self.delayDisplay(_("De-LightSAM module test passed"))
