from .SegmentEditorEffect import SegmentEditorEffect

__all__ = ["SegmentEditorEffect"]
