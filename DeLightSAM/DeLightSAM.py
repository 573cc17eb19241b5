"""De-LightSAM module for 3D Slicer: model, device and dependency settings; the shared predictor.

The segmentation itself happens in the Segment Editor (effect "De-LightSAM", module SegmentEditorDeLightSAM);
all MRML work is in DeLightSAMMRMLLogic, which is tested outside Slicer. This file is glue.
"""

import contextlib
import logging
import traceback

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from DeLightSAMLib.errors import DeLightSAMError
from DeLightSAMLib.registry import CHECKPOINTS, OFFICIAL_CHECKPOINT

#
# DeLightSAM
#


class DeLightSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "De-LightSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["De-LightSAM for Slicer contributors"]
        self.parent.helpText = (
            "Prompt-free segmentation of dermoscopy, chest X-ray, ultrasound, fundus, microscopy and colonoscopy "
            "images with De-LightSAM (IEEE TCSVT 2025). Choose the checkpoint and device here; segment in the "
            "Segment Editor with the 'De-LightSAM' effect."
        )
        self.parent.acknowledgementText = (
            "De-LightSAM: Modality-Decoupled Lightweight SAM for Generalizable Medical Segmentation "
            "(arXiv 2407.14153). The extension reimplements the published network in PyTorch."
        )


#
# DeLightSAMWidget
#


class DeLightSAMWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = DeLightSAMLogic.shared()

        form = qt.QFormLayout()
        box = qt.QGroupBox("Model")
        box.setLayout(form)
        self.layout.addWidget(box)

        self.checkpointSelector = qt.QComboBox()
        for entry in CHECKPOINTS.values():
            self.checkpointSelector.addItem(entry.description, entry.name)
        self.checkpointSelector.addItem("Local file...", LOCAL_FILE)
        self.checkpointSelector.toolTip = "Which De-LightSAM weights to use"
        form.addRow("Checkpoint:", self.checkpointSelector)

        self.checkpointPath = qt.QLineEdit()
        self.checkpointPath.placeholderText = "path to a .pth checkpoint"
        self.browseButton = qt.QPushButton("Browse...")
        pathRow = qt.QHBoxLayout()
        pathRow.addWidget(self.checkpointPath)
        pathRow.addWidget(self.browseButton)
        form.addRow("File:", pathRow)

        self.downloadButton = qt.QPushButton("Download weights")
        self.downloadButton.toolTip = "Download the selected checkpoint into the per-user cache (asks first)"
        form.addRow(self.downloadButton)

        self.deviceSelector = qt.QComboBox()
        for device in DEVICES:
            self.deviceSelector.addItem(device)
        form.addRow("Device:", self.deviceSelector)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)

        self.installButton = qt.QPushButton("Install dependencies")
        self.installButton.toolTip = "Install PyTorch (through the PyTorch extension) and the other Python packages"
        form.addRow(self.installButton)
        self.layout.addStretch(1)

        self.checkpointSelector.setCurrentIndex(max(0, self.checkpointSelector.findData(self.logic.checkpointChoice)))
        self.checkpointPath.text = self.logic.localCheckpointPath
        self.deviceSelector.currentText = self.logic.device

        self.checkpointSelector.connect("currentIndexChanged(int)", self.updateLogicFromGUI)
        self.checkpointPath.connect("editingFinished()", self.updateLogicFromGUI)
        self.deviceSelector.connect("currentIndexChanged(int)", self.updateLogicFromGUI)
        self.browseButton.connect("clicked()", self.onBrowse)
        self.downloadButton.connect("clicked()", self.onDownload)
        self.installButton.connect("clicked()", self.onInstall)
        self.updateGUIFromLogic()

    def updateLogicFromGUI(self, *_):
        self.logic.setSettings(self.checkpointSelector.currentData, self.checkpointPath.text.strip(),
                               self.deviceSelector.currentText)
        self.updateGUIFromLogic()

    def updateGUIFromLogic(self):
        local = self.logic.checkpointChoice == LOCAL_FILE
        self.checkpointPath.enabled = self.browseButton.enabled = local
        self.downloadButton.enabled = not local
        self.statusLabel.text = self.logic.statusText()

    def onBrowse(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, "De-LightSAM checkpoint", "", "PyTorch checkpoints (*.pth *.pt);;All files (*)")
        if path:
            self.checkpointPath.text = path
            self.updateLogicFromGUI()

    def onDownload(self):
        with userErrorDisplay("Download failed."):
            self.logic.downloadCheckpoint(self.logic.checkpointChoice, confirm=True)
        self.updateGUIFromLogic()

    def onInstall(self):
        with userErrorDisplay("Installing dependencies failed."):
            self.logic.setupPythonRequirements(askConfirmation=True)
        self.updateGUIFromLogic()


#
# DeLightSAMLogic
#

LOCAL_FILE = "local-file"
DEVICES = ("auto", "cuda", "mps", "cpu")
SETTINGS_PREFIX = "DeLightSAM/"
# Packages pip installs besides torch (which comes through the PyTorch extension). Pinned to the versions
# the extension is tested with: gdown >= 6 has the progress callback the download dialog needs; tqdm is
# gdown's own dependency, used by the library's command line.
PIP_REQUIREMENTS = {"gdown": "gdown==6.5.1", "tqdm": "tqdm>=4.60"}
MINIMUM_TORCH_VERSION = "2.1"


class DeLightSAMLogic(ScriptedLoadableModuleLogic):
    """Settings, dependencies and the one predictor of the session (shared by the module and the effect)."""

    _shared = None

    @classmethod
    def shared(cls):
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        settings = qt.QSettings()
        self.checkpointChoice = settings.value(SETTINGS_PREFIX + "Checkpoint", OFFICIAL_CHECKPOINT)
        self.localCheckpointPath = settings.value(SETTINGS_PREFIX + "CheckpointPath", "")
        self.device = settings.value(SETTINGS_PREFIX + "Device", "auto")
        self._predictor = None
        self._mrmlLogic = None

    # ------------------------------------------------------------------ settings
    def setSettings(self, checkpointChoice, localCheckpointPath, device):
        if (checkpointChoice, localCheckpointPath, device) != (self.checkpointChoice, self.localCheckpointPath, self.device):
            self._predictor = None  # reloaded on next use
            if self._mrmlLogic is not None:
                self._mrmlLogic.predictor = None
        self.checkpointChoice, self.localCheckpointPath, self.device = checkpointChoice, localCheckpointPath, device
        settings = qt.QSettings()
        settings.setValue(SETTINGS_PREFIX + "Checkpoint", checkpointChoice)
        settings.setValue(SETTINGS_PREFIX + "CheckpointPath", localCheckpointPath)
        settings.setValue(SETTINGS_PREFIX + "Device", device)

    def checkpointReference(self):
        """Registry name or file path the predictor loads."""
        return self.localCheckpointPath if self.checkpointChoice == LOCAL_FILE else self.checkpointChoice

    def statusText(self):
        missing = self.missingRequirements()
        if missing:
            return f"Missing Python packages: {', '.join(missing)}. Click 'Install dependencies' (asks first)."
        from DeLightSAMLib.checkpoint import resolve_checkpoint

        try:
            path, _ = resolve_checkpoint(self.checkpointReference())
        except DeLightSAMError as error:
            return f"Checkpoint: {error}"
        text = f"Checkpoint: {path}"
        if self._predictor is not None:
            text += f" — loaded on {self._predictor.description}"
        from DeLightSAMLib.predictor import select_device

        try:
            device = self._predictor.device if self._predictor is not None else select_device(self.device)
        except DeLightSAMError as error:
            return f"{text}\nDevice: {error}"
        if device.type == "cpu":
            text += "\nRunning on the CPU (no GPU selected or found): expect a few seconds per slice."
        return text

    # ------------------------------------------------------------------ dependencies
    @staticmethod
    def missingRequirements():
        import importlib.util

        return [name for name in ("torch", *PIP_REQUIREMENTS) if importlib.util.find_spec(name) is None]

    def setupPythonRequirements(self, askConfirmation=True):
        """Install what is missing, only on request: torch through PyTorchUtils, the rest with pip."""
        missing = self.missingRequirements()
        if not missing:
            return
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            f"De-LightSAM needs these Python packages: {', '.join(missing)}. Install them now? "
            "This needs a network connection and may take several minutes.",
            "De-LightSAM dependencies",
        ):
            raise DeLightSAMError("installation cancelled; De-LightSAM cannot run without its Python packages")
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise DeLightSAMError("De-LightSAM needs the PyTorch extension: install it from the Extensions Manager, restart Slicer, then try again")
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
                if torch is None:
                    raise DeLightSAMError("PyTorch was not installed; open the PyTorch module to install it, then try again")
        for name, requirement in PIP_REQUIREMENTS.items():
            if name in missing:
                slicer.util.pip_install(requirement)
        still = self.missingRequirements()
        if still:
            raise DeLightSAMError(f"{', '.join(still)} could not be imported after installation; restart Slicer and try again")

    # ------------------------------------------------------------------ weights
    def downloadCheckpoint(self, name, confirm=True):
        from DeLightSAMLib.checkpoint import cached_path, download_checkpoint, remote_size
        from DeLightSAMLib.registry import get_checkpoint_entry

        self.setupPythonRequirements(askConfirmation=True)
        entry = get_checkpoint_entry(name)
        size = entry.size_bytes or remote_size(entry.urls[0])
        sizeText = f"{size / 1e6:.0f} MB" if size else "about 52 MB (the publisher does not state the size)"
        if confirm and not slicer.util.confirmOkCancelDisplay(
            f"Download '{entry.description}' ({sizeText}) to {cached_path(name)}?", "De-LightSAM weights"
        ):
            return None
        progress = slicer.util.createProgressDialog(labelText=f"Downloading {entry.filename}...", maximum=100)
        try:
            def report(done, total):
                progress.setValue(int(100 * done / total) if total else 0)
                progress.setLabelText(f"Downloading {entry.filename}: {done / 1e6:.1f} MB")
                slicer.app.processEvents()
                if progress.wasCanceled:
                    raise DeLightSAMError("download cancelled; nothing was saved")
            return download_checkpoint(name, progress=report)
        finally:
            progress.close()

    # ------------------------------------------------------------------ prediction
    def predictor(self):
        """The session's predictor, loaded on first use (asks to install packages or download weights)."""
        if self._predictor is None:
            self.setupPythonRequirements(askConfirmation=True)
            from DeLightSAMLib.checkpoint import resolve_checkpoint
            from DeLightSAMLib.errors import CheckpointError
            from DeLightSAMLib.predictor import Predictor

            reference = self.checkpointReference()
            try:
                resolve_checkpoint(reference)
            except CheckpointError:
                if self.checkpointChoice == LOCAL_FILE or self.downloadCheckpoint(reference, confirm=True) is None:
                    raise
            with slicer.util.WaitCursor():
                self._predictor = Predictor.from_checkpoint(reference, device=self.device)
            logging.info(f"De-LightSAM loaded {reference} on {self._predictor.description}")
        return self._predictor

    def mrmlLogic(self):
        """The MRML logic the effect uses, bound to this session's predictor."""
        if self._mrmlLogic is None:
            from DeLightSAMMRMLLogic import DeLightSAMMRMLLogic

            self._mrmlLogic = DeLightSAMMRMLLogic(predictorFactory=self.predictor)
        return self._mrmlLogic


@contextlib.contextmanager
def userErrorDisplay(message):
    """Like slicer.util.tryWithErrorDisplay, but a user's mistake (DeLightSAMError) shows as a plain message
    without details; anything else shows with its traceback. The exception does not propagate."""
    try:
        yield
    except Exception as error:
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
    """Runs the De-LightSAM effect end to end in Slicer on generated data, with a stand-in model whose answer
    depends only on position (the top-left quadrant of the view), so the test needs no weights or network."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_effect_writes_the_shown_slice_and_undoes()

    def test_effect_writes_the_shown_slice_and_undoes(self):
        import types

        import numpy as np

        class QuadrantPredictor:
            description = "test stand-in"

            def set_image(self, image):
                self.shape = image.shape[:2]

            def predict(self, modality, threshold=0.5, **kwargs):
                rows, cols = np.mgrid[0:self.shape[0], 0:self.shape[1]]
                mask = (rows < self.shape[0] / 2) & (cols < self.shape[1] / 2)
                return types.SimpleNamespace(mask=mask)  # all the MRML logic reads of a prediction

        voxels = (np.arange(4 * 10 * 12) % 255).reshape(4, 10, 12).astype(np.int16)
        volume = slicer.util.addVolumeFromArray(voxels, ijkToRAS=np.diag([-0.8, -0.6, 2.0, 1.0]), name="DeLightSAMTest")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        segmentId = segmentation.GetSegmentation().AddEmptySegment("lesion")
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        sliceNode.SetOrientation("Axial")
        sliceNode.JumpSliceByCentering(*(np.diag([-0.8, -0.6, 2.0, 1.0]) @ [6, 5, 2, 1])[:3])

        logic = DeLightSAMLogic.shared()
        logic.mrmlLogic().predictor = QuadrantPredictor()

        editorWidget = slicer.qMRMLSegmentEditorWidget()
        editorWidget.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorWidget.setMRMLSegmentEditorNode(editorNode)
        editorWidget.setSegmentationNode(segmentation)
        editorWidget.setSourceVolumeNode(volume)
        editorWidget.setCurrentSegmentID(segmentId)
        editorWidget.setActiveEffectByName("De-LightSAM")
        effect = editorWidget.activeEffect()
        self.assertIsNotNone(effect, "the De-LightSAM effect is not registered")
        effect.setParameter("SliceView", "Red")
        effect.setParameter("Modality", "xray")
        effect.self().onApply()

        written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
        expected = np.zeros_like(written)
        expected[2, :5, :6] = 1  # axial view of this geometry: i runs rightwards, j downwards
        np.testing.assert_array_equal(written, expected)

        editorWidget.undo()
        self.assertEqual(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume).sum(), 0)
        logic.mrmlLogic().predictor = None
        self.delayDisplay("De-LightSAM effect test passed")
