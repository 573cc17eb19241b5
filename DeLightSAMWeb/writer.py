"""The MRML logic's ``LabelmapWriter`` over trame-slicer's segment editor.

trame-slicer keeps its own undo stack (py-undo-stack) instead of Slicer's segmentation history, and writes through
its ``SegmentModifier.apply_labelmap``, which runs ``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`` with the
editor node's editable area, intensity range and overwrite settings, and pushes one undo command per call. A run's
writes are grouped into one undo step by :class:`UndoGroup`, opened before the run's first write and closed after
its last (a run spans several turns of the event loop).
"""

from __future__ import annotations

import contextlib

from DeLightSAMSlicerLib.Geometry import SegmentationError
from DeLightSAMSlicerLib.Labelmaps import ModifierGeometry


class SegmentEditorWriter:
    """Writes labelmaps into ``segmentId`` through trame-slicer's active segment modifier. The modifier geometry is
    the segmentation's reference geometry: the lattice the editor logic builds its modifier labelmap, editable-area
    mask and aligned source volume in, so masking and intensity range apply voxel for voxel."""

    def __init__(self, segmentationEditor, segmentId: str) -> None:
        self.editor = segmentationEditor
        self.segmentId = segmentId

    @property
    def modifier(self):
        modifier = self.editor.active_segment_modifier
        if modifier is None:
            raise SegmentationError("no segmentation is being edited; load an image first")
        return modifier

    def modifierGeometry(self) -> ModifierGeometry:
        logic = self.editor.editor_logic
        logic.UpdateReferenceGeometryImage()
        geometry = logic.GetReferenceImageGeometryString()
        if not geometry:
            raise SegmentationError("the segmentation has no reference geometry; load an image first")
        return ModifierGeometry.fromSerialized(geometry)

    def saveStateForUndo(self) -> None:
        """Nothing to save: each ``apply_labelmap`` pushes its own undo command, grouped by :class:`UndoGroup`."""

    def add(self, labelmap) -> None:
        self._apply(labelmap, "Add")

    def remove(self, labelmap) -> None:
        self._apply(labelmap, "Remove")

    def _apply(self, labelmap, mode: str) -> None:
        from trame_slicer.segmentation import ModificationMode

        if self.editor.get_segment(self.segmentId) is None:
            raise SegmentationError(f"segment '{self.segmentId}' was deleted during the run; nothing more is written")
        self.modifier.apply_labelmap(labelmap, segment_id=self.segmentId, modification_mode=ModificationMode[mode])


class UndoGroup:
    """One undo step for a whole run: trame-slicer's ``group_undo_commands`` entered at ``open()`` and left at
    ``close()``. Its context manager has no ``finally``, so an exception must never pass through it: ``close()``
    always leaves it normally."""

    def __init__(self, segmentationEditor, text: str) -> None:
        self.editor = segmentationEditor
        self.text = text
        self._stack = contextlib.ExitStack()

    def open(self) -> "UndoGroup":
        modifier = self.editor.active_segment_modifier
        if modifier is not None:
            self._stack.enter_context(modifier.group_undo_commands(self.text))
        return self

    def close(self) -> None:
        self._stack.close()
