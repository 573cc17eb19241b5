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
        self.parent.dependencies = ["Segmentations", "DeLightSAM"]  # the effect uses its DeLightSAMQt and path
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
    """The effect end to end in Slicer on generated data, with stand-in models whose answers depend only on position
    (the top-left quadrant of the view; the box itself), so the test needs no weights or network: the shown slice is
    written, in a segmentation oversampled x2 too (the editor's modifier geometry); a box dragged on the Red view
    (through the effect's interaction handler) and "Box from segment" write their boxes; Ctrl+Z takes each back; a
    stored view the layout lacks is not used; a deleted editor widget leaves no observer behind.

    ctest runs each test_ method on its own (unittest's loadTestsFromName); runTest (Reload and Test) runs them all.
    In testing mode an error inside an action propagates (DeLightSAMQt.Dialogs.userErrorDisplay), so it fails the
    test by itself rather than as a mismatch later."""

    IJK_TO_RAS = ((-0.8, 0, 0, 0), (0, -0.6, 0, 0), (0, 0, 2.0, 0), (0, 0, 0, 1))

    def setUp(self):
        slicer.mrmlScene.Clear(0)
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        self.editorWidgets = []

    def tearDown(self):
        for editorWidget in self.editorWidgets:  # deleted with the effect active, as scripts do
            editorWidget.delete()
        self.editorWidgets = []

    def runTest(self):
        for name in sorted(name for name in dir(self) if name.startswith("test_")):
            self.setUp()
            try:
                getattr(self, name)()
            finally:
                self.tearDown()

    def _scene(self, oversampling=1):
        """A 12 x 10 x 4 volume on the Red view (axial: i runs rightwards, j downwards), slice k = 2 shown; a
        segmentation (oversampled if asked) with one segment; an editor widget on them."""
        import numpy as np

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
        self.editorWidgets.append(editorWidget)
        return volume, segmentation, segmentId, sliceNode, editorWidget

    def _effect(self, editorWidget):
        editorWidget.setActiveEffectByName("De-LightSAM")
        effect = editorWidget.activeEffect()
        self.assertIsNotNone(effect, "the De-LightSAM effect is not registered")
        effect.setParameter("SliceView", "Red")
        return effect

    def test_effect_writes_the_shown_slice_and_undoes(self):
        self._writesTheShownSliceAndUndoes(oversampling=1)

    def test_effect_writes_the_shown_slice_in_an_oversampled_segmentation(self):
        self._writesTheShownSliceAndUndoes(oversampling=2)

    def _writesTheShownSliceAndUndoes(self, oversampling):
        import numpy as np

        from DeLightSAMQt.SlicerApp import sharedSession

        volume, segmentation, segmentId, sliceNode, editorWidget = self._scene(oversampling)
        with sharedSession().temporaryPredictor(QuadrantPredictor()):  # restored also if a check fails
            effect = self._effect(editorWidget)
            effect.setParameter("Modality", "xray")
            effect.self().onApply()

            written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
            expected = np.zeros_like(written)
            expected[2, :5, :6] = 1  # axial view of this geometry: i runs rightwards, j downwards
            np.testing.assert_array_equal(written, expected)
            labelmap = slicer.vtkOrientedImageData()
            slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
                segmentation, segmentId, labelmap, False
            )
            self.assertAlmostEqual(labelmap.GetSpacing()[0], 0.8 / oversampling)  # written in the editor's geometry
            editorWidget.undo()
            self.assertEqual(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume).sum(), 0)
        self.delayDisplay("De-LightSAM effect test passed")

    def test_box_dragged_on_the_view_is_segmented_and_undone(self):
        """Press, move and release on the Red view through the effect's interaction handler: the rubber band shows,
        and the release segments the box (run right after the event) with the box model."""
        import numpy as np
        import vtk

        from DeLightSAMQt.SlicerApp import sharedSession
        from DeLightSAMSlicerLib.Models import BOX

        volume, segmentation, segmentId, sliceNode, editorWidget = self._scene()
        sliceWidget = slicer.app.layoutManager().sliceWidget("Red")
        interactor = sliceWidget.interactorStyle().GetInteractor()
        xyToRAS = slicer.util.arrayFromVTKMatrix(sliceNode.GetXYToRAS())
        ijkToRAS = np.array(self.IJK_TO_RAS)
        # the screen positions of two points of slice k = 2, between voxel centres
        first, last = (
            np.rint((np.linalg.inv(xyToRAS) @ ijkToRAS @ [i, j, 2, 1])[:2]).astype(int)
            for i, j in ((2.4, 1.3), (7.6, 6.7))
        )
        boxModel = BoxAsMask()
        with sharedSession().temporaryPredictor(boxModel, BOX):
            effect = self._effect(editorWidget)
            effect.setParameter("BoxMode", "1")
            for eventId, xy in (
                (vtk.vtkCommand.LeftButtonPressEvent, first),
                (vtk.vtkCommand.MouseMoveEvent, (first + last) // 2),
                (vtk.vtkCommand.MouseMoveEvent, last),
                (vtk.vtkCommand.LeftButtonReleaseEvent, last),
            ):
                interactor.SetEventPosition(int(xy[0]), int(xy[1]))
                self.assertTrue(effect.self().processInteractionEvents(interactor, eventId, sliceWidget))
                if eventId == vtk.vtkCommand.MouseMoveEvent:
                    self.assertTrue(effect.self().rubberBands[sliceWidget].actor.GetVisibility())
            self.assertFalse(effect.self().rubberBands[sliceWidget].actor.GetVisibility())
            for _attempt in range(20):  # the release runs the box once the event is handled
                slicer.app.processEvents()
                if boxModel.boxes:
                    break
            self.assertEqual(len(boxModel.boxes), 1, "the release did not segment the box")

            corners = [np.linalg.inv(ijkToRAS) @ xyToRAS @ [x, y, 0, 1] for x, y in (first, last)]
            low, high = np.minimum(*corners)[:3], np.maximum(*corners)[:3]
            expected = np.zeros((4, 10, 12), np.uint8)
            j, i = np.mgrid[0:10, 0:12]
            expected[2] = (i >= low[0]) & (i <= high[0]) & (j >= low[1]) & (j <= high[1])
            written = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume)
            np.testing.assert_array_equal(written, expected)
            editorWidget.undo()
            self.assertEqual(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume).sum(), 0)
        self.delayDisplay("De-LightSAM box mode test passed")

    def test_box_from_segment_refines_the_slice(self):
        import numpy as np

        from DeLightSAMQt.SlicerApp import sharedSession
        from DeLightSAMSlicerLib.Models import BOX

        volume, segmentation, segmentId, sliceNode, editorWidget = self._scene()
        blob = np.zeros((4, 10, 12), np.uint8)
        blob[2, 3, 4] = blob[2, 4, 4:7] = blob[2, 6, 5] = 1  # an irregular shape spanning rows 3..6, columns 4..6
        blob[0, 1, 1] = 1  # another slice
        slicer.util.updateSegmentBinaryLabelmapFromArray(blob, segmentation, segmentId, volume)
        boxModel = BoxAsMask()
        with sharedSession().temporaryPredictor(boxModel, BOX):
            effect = self._effect(editorWidget)
            effect.self().onBoxFromSegment()
            self.assertEqual(boxModel.boxes, [(4.0, 3.0, 7.0, 7.0)])
            expected = blob.copy()
            expected[2, 3:7, 4:7] = 1  # the slice became the box's mask
            np.testing.assert_array_equal(
                slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume), expected
            )
            editorWidget.undo()
            np.testing.assert_array_equal(
                slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume), blob
            )
        self.delayDisplay("De-LightSAM box from segment test passed")

    def test_a_stored_view_missing_from_the_layout_is_not_used(self):
        """The parameter names Green, the layout shows Red only: the selector shows Red and Apply segments Red's slice;
        back in a layout with Green, the selector (refilled by layoutChanged) shows Green again."""
        import numpy as np

        from DeLightSAMQt.SlicerApp import sharedSession

        volume, segmentation, segmentId, sliceNode, editorWidget = self._scene()
        layoutManager = slicer.app.layoutManager()
        with sharedSession().temporaryPredictor(QuadrantPredictor()):
            effect = self._effect(editorWidget)
            effect.setParameter("Modality", "xray")
            effect.setParameter("SliceView", "Green")
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView)
            slicer.app.processEvents()
            selector = effect.self().viewSelector
            self.assertEqual([selector.itemText(index) for index in range(selector.count)], ["Red"])
            self.assertEqual(selector.currentText, "Red")
            effect.self().onApply()
            expected = np.zeros((4, 10, 12), np.uint8)
            expected[2, :5, :6] = 1  # Red's slice k = 2, as in the first test
            np.testing.assert_array_equal(
                slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume), expected
            )
            self.assertEqual(effect.parameter("SliceView"), "Green")  # kept for a layout that has it
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
            slicer.app.processEvents()
            self.assertIn("Green", [selector.itemText(index) for index in range(selector.count)])
            self.assertEqual(selector.currentText, "Green")

    def test_a_deleted_editor_widget_leaves_no_scene_observer(self):
        """The editor widget deletes its effects without deactivating them (5.8), or after cleanup() (5.10 and later):
        either way the effect's scene-close observer goes with it, and a later scene close runs none of its code."""
        volume, segmentation, segmentId, sliceNode, editorWidget = self._scene()
        pythonEffect = self._effect(editorWidget).self()
        scene, tag = pythonEffect.sceneCloseObserver
        self.assertIsNotNone(scene.GetCommand(tag))
        self.editorWidgets.remove(editorWidget)
        editorWidget.delete()
        slicer.app.processEvents()
        self.assertIsNone(pythonEffect.sceneCloseObserver)
        self.assertIsNone(scene.GetCommand(tag))
        self.assertTrue(pythonEffect.worker.closed)  # its timer stopped, its run (none here) cancelled
        self.assertFalse(pythonEffect.worker.timer.isActive())
        slicer.mrmlScene.Clear(0)  # nothing of the deleted effect runs


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


class BoxAsMask:
    """Stand-in box model: the pixels whose centre lies in the box; it records the boxes it is given."""

    description = "box test stand-in"

    def __init__(self):
        self.boxes = []

    def set_image(self, image, window=None):
        self.shape = image.shape[:2]

    def predict(self, boxes, threshold=0.5, **kwargs):
        import types

        import numpy as np

        x0, y0, x1, y1 = (float(value) for value in np.asarray(boxes, float).reshape(4))
        self.boxes.append((x0, y0, x1, y1))
        rows, cols = np.mgrid[0 : self.shape[0], 0 : self.shape[1]] + 0.5
        return types.SimpleNamespace(mask=(cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1))
