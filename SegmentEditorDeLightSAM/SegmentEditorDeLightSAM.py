"""Hidden module that registers the De-LightSAM Segment Editor effect once Slicer has started, and its self-test."""

import os

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class SegmentEditorDeLightSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Segment Editor De-LightSAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "DeLightSAM"]  # the effect uses DeLightSAM's session
        self.parent.contributors = ["De-LightSAM for Slicer contributors"]
        self.parent.hidden = True
        self.parent.helpText = _("Registers the De-LightSAM effect in the Segment Editor.")
        self.parent.acknowledgementText = _(
            "De-LightSAM: Modality-Decoupled Lightweight SAM for Generalizable Medical Segmentation "
            "(arXiv 2407.14153). The effect follows Slicer's scripted segment editor effect template."
        )
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

        instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        effectFilename = os.path.join(os.path.dirname(__file__), self.__class__.__name__ + "Lib/SegmentEditorEffect.py")
        instance.setPythonSource(effectFilename.replace("\\", "/"))
        instance.self().register()


class SegmentEditorDeLightSAMTest(ScriptedLoadableModuleTest):
    """The effect end to end in Slicer on generated data, with a stand-in model whose answer depends only on position
    (the top-left quadrant of the view), so the test needs no weights or network: the shown slice is written, in a
    segmentation oversampled x2 too (the editor's modifier geometry), and Ctrl+Z takes it back."""

    IJK_TO_RAS = ((-0.8, 0, 0, 0), (0, -0.6, 0, 0), (0, 0, 2.0, 0), (0, 0, 0, 1))

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_effect_writes_the_shown_slice_and_undoes(oversampling=1)
        self.setUp()
        self.test_effect_writes_the_shown_slice_and_undoes(oversampling=2)

    def test_effect_writes_the_shown_slice_and_undoes(self, oversampling=1):
        import numpy as np

        from DeLightSAMSlicerLib.Session import DeLightSAMSession

        voxels = (np.arange(4 * 10 * 12) % 255).reshape(4, 10, 12).astype(np.int16)
        ijkToRAS = np.array(self.IJK_TO_RAS)
        volume = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRAS, name="DeLightSAMTest")
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        if oversampling != 1:
            geometryLogic = slicer.vtkSlicerSegmentationGeometryLogic()
            geometryLogic.SetInputSegmentationNode(segmentation)
            geometryLogic.SetSourceGeometryNode(volume)
            geometryLogic.SetOversamplingFactor(oversampling)
            geometryLogic.CalculateOutputGeometry()
            geometryLogic.SetReferenceImageGeometryInSegmentationNode()
        segmentId = segmentation.GetSegmentation().AddEmptySegment("lesion")
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        sliceNode.SetOrientation("Axial")
        sliceNode.JumpSliceByCentering(*(ijkToRAS @ [6, 5, 2, 1])[:3])

        editorWidget = slicer.qMRMLSegmentEditorWidget()
        editorWidget.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorWidget.setMRMLSegmentEditorNode(editorNode)
        editorWidget.setSegmentationNode(segmentation)
        editorWidget.setSourceVolumeNode(volume)
        editorWidget.setCurrentSegmentID(segmentId)
        with DeLightSAMSession.shared().temporaryPredictor(QuadrantPredictor()):  # restored also if a check fails
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
            labelmap = slicer.vtkOrientedImageData()
            slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation, segmentId, labelmap, False)
            self.assertAlmostEqual(labelmap.GetSpacing()[0], 0.8 / oversampling)  # written in the editor's geometry
            editorWidget.undo()
            self.assertEqual(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume).sum(), 0)
        self.delayDisplay("De-LightSAM effect test passed")


class QuadrantPredictor:
    """Stand-in model: the top-left quadrant of whatever image it is given."""

    description = "test stand-in"

    def set_image(self, image, window=None):
        self.shape = image.shape[:2]

    def predict(self, modality, threshold=0.5, **kwargs):
        import types

        import numpy as np

        rows, cols = np.mgrid[0 : self.shape[0], 0 : self.shape[1]]
        return types.SimpleNamespace(mask=(rows < self.shape[0] / 2) & (cols < self.shape[1] / 2))
