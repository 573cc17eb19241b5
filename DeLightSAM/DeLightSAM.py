"""De-LightSAM module for 3D Slicer: the panel for the weights, the device and the Python packages.

Segmentation happens in the Segment Editor (effect "De-LightSAM", module SegmentEditorDeLightSAM). The work is in
the Qt-free package DeLightSAMSlicerLib, tested under slicer-core: ``Session`` owns the settings, installs,
downloads and the predictor; ``MRMLLogic`` writes masks. This file is glue, and the dialogs both panels share.

DeLightSAMLib (the library) is imported inside functions only: importing DeLightSAMSlicerLib first is what makes it
importable when Slicer runs the module from a source checkout.
"""

import contextlib
import logging
import traceback

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget

from DeLightSAMSlicerLib.Session import DEVICES, LOCAL_FILE, DeLightSAMSession

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
            "images with De-LightSAM (IEEE TCSVT 2025). Choose the checkpoint and device here; segment in the "
            "Segment Editor with the 'De-LightSAM' effect."
        )
        self.parent.acknowledgementText = _(
            "De-LightSAM: Modality-Decoupled Lightweight SAM for Generalizable Medical Segmentation "
            "(arXiv 2407.14153). The extension reimplements the published network in PyTorch."
        )


#
# DeLightSAMWidget
#


class DeLightSAMWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.session = DeLightSAMSession.shared()

        form = qt.QFormLayout()
        box = qt.QGroupBox(_("Model"))
        box.setLayout(form)
        self.layout.addWidget(box)

        self.checkpointSelector = qt.QComboBox()
        for name, description in self.session.checkpointChoices():
            self.checkpointSelector.addItem(description, name)
        self.checkpointSelector.addItem(_("Local file..."), LOCAL_FILE)
        self.checkpointSelector.toolTip = _("Which De-LightSAM weights to use")
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

        self.checkpointSelector.connect("currentIndexChanged(int)", self.updateSessionFromGUI)
        self.checkpointPath.connect("editingFinished()", self.updateSessionFromGUI)
        self.deviceSelector.connect("currentIndexChanged(int)", self.updateSessionFromGUI)
        self.browseButton.connect("clicked()", self.onBrowse)
        self.downloadButton.connect("clicked()", self.onDownload)
        self.installButton.connect("clicked()", self.onInstall)
        self.updateGUIFromSession()

    def enter(self):
        self.updateGUIFromSession()  # packages or weights may have changed since the panel was last shown

    def updateSessionFromGUI(self, *_args):
        self.session.setModelSettings(self.checkpointSelector.currentData, self.checkpointPath.text.strip(),
                                      self.deviceSelector.currentText)
        self.updateGUIFromSession()

    def updateGUIFromSession(self):
        widgets = (self.checkpointSelector, self.checkpointPath, self.deviceSelector)
        blocked = [widget.blockSignals(True) for widget in widgets]
        self.checkpointSelector.setCurrentIndex(max(0, self.checkpointSelector.findData(self.session.checkpointChoice)))
        self.checkpointPath.text = self.session.localCheckpointPath
        self.deviceSelector.currentText = self.session.device
        for widget, wasBlocked in zip(widgets, blocked):
            widget.blockSignals(wasBlocked)
        local = self.session.checkpointChoice == LOCAL_FILE
        self.checkpointPath.enabled = self.browseButton.enabled = local
        self.downloadButton.enabled = not local and not self.session.busy
        self.installButton.enabled = not self.session.busy
        self.statusLabel.text = self.session.statusText()

    def onBrowse(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, _("De-LightSAM checkpoint"), "",
                                              _("PyTorch checkpoints") + " (*.pth *.pt);;" + _("All files") + " (*)")
        if path:
            self.checkpointPath.text = path
            self.updateSessionFromGUI()

    def onDownload(self):
        with userErrorDisplay(_("Download failed.")), self.session.job(_("downloading weights")):
            with DownloadProgressDialog() as progress:
                self.session.downloadCheckpoint(confirmDialog, progress.report)
        self.updateGUIFromSession()

    def onInstall(self):
        with userErrorDisplay(_("Installing dependencies failed.")), self.session.job(_("installing packages")):
            with slicer.util.WaitCursor():
                self.session.installRequirements(confirmDialog)
        self.updateGUIFromSession()


#
# Dialogs shared by the module panel and the effect
#


def confirmDialog(text):
    """The session's ``confirm`` callback: an OK/Cancel question."""
    return slicer.util.confirmOkCancelDisplay(text, _("De-LightSAM"))


class ProgressDialog:
    """A modal progress dialog with a cancel button, shown from the first ``update`` on (a run that reports nothing
    shows nothing) and closed when the block ends, also when it fails.

    ``update(done, total, text)`` shows progress and raises ``cancelled()`` once the user has cancelled.
    """

    def __init__(self, cancelled, cancelText=None):
        self.cancelled = cancelled
        self.cancelText = cancelText
        self.dialog = None

    def __enter__(self):
        return self

    def update(self, done, total, text):
        if self.dialog is None:
            self.dialog = slicer.util.createProgressDialog(labelText=text, maximum=100, windowTitle=_("De-LightSAM"))
            if self.cancelText:
                self.dialog.setCancelButtonText(self.cancelText)
        self.dialog.setValue(int(100 * done / total) if total else 0)
        self.dialog.setLabelText(text)
        slicer.app.processEvents()
        if self.dialog.wasCanceled:
            raise self.cancelled()

    def __exit__(self, *exc):
        if self.dialog is not None:
            self.dialog.close()
            self.dialog = None


class DownloadProgressDialog(ProgressDialog):
    def __init__(self):
        from DeLightSAMLib.errors import DownloadError

        super().__init__(lambda: DownloadError(_("download cancelled; nothing was saved")))

    def report(self, done, total):
        self.update(done, total, _("Downloading the De-LightSAM weights: {megabytes} MB").format(
            megabytes=f"{done / 1e6:.1f}"))


@contextlib.contextmanager
def userErrorDisplay(message):
    """Like slicer.util.tryWithErrorDisplay, but a user's mistake (DeLightSAMError) shows as a plain message
    without details; anything else shows with its traceback. The exception does not propagate."""
    try:
        yield
    except Exception as error:
        from DeLightSAMLib.errors import DeLightSAMError

        while qt.QApplication.overrideCursor():
            qt.QApplication.restoreOverrideCursor()
        if isinstance(error, DeLightSAMError):
            slicer.util.errorDisplay(f"{message}\n\n{error}")
        else:
            logging.exception(message)
            slicer.util.errorDisplay(f"{message}\n\n{error}", detailedText=traceback.format_exc())


#
# DeLightSAMTest
#


class DeLightSAMTest(ScriptedLoadableModuleTest):
    """The module panel in Slicer: it opens and states what is missing; an empty local path says so. The
    segmentation itself is tested by SegmentEditorDeLightSAMTest (module SegmentEditorDeLightSAM)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_panel_states_the_checkpoint_problem()

    def test_panel_states_the_checkpoint_problem(self):
        session = DeLightSAMSession.shared()
        saved = (session.checkpointChoice, session.localCheckpointPath, session.device)
        try:
            slicer.util.selectModule("DeLightSAM")
            widget = slicer.modules.delightsam.widgetRepresentation().self()
            session.setModelSettings(LOCAL_FILE, "", "cpu")
            widget.enter()
            self.assertIn("no checkpoint file chosen", widget.statusLabel.text)
            self.assertFalse(widget.downloadButton.enabled)
            self.assertTrue(widget.browseButton.enabled)
        finally:
            session.setModelSettings(*saved)
        self.delayDisplay(_("De-LightSAM module test passed"))
