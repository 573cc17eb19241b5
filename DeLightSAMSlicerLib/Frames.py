"""Sequences: the frames of a clip, each with its own segmentation item, and the snapshot that undoes an
all-frames run."""

from __future__ import annotations

import slicer


class FramesSnapshot:
    """Copies of every frame's segmentation before an all-frames run, to undo the whole run at once.

    Restoring goes through the proxy node, as the user's own edits do, so that the browser's proxies and
    items never share a half-restored state; frames that had no item get an empty one.
    """

    def __init__(self, browserNode, sequenceNode, segmentationNode, indexValues: list) -> None:
        self.browserNode = browserNode
        self.sequenceNode = sequenceNode
        self.segmentationNode = segmentationNode
        self.empty = _emptyCopy(segmentationNode)
        self.items = []
        for value in indexValues:
            node = sequenceNode.GetDataNodeAtValue(value, True)
            self.items.append(_copyNode(node) if node is not None else None)

    def inScene(self) -> bool:
        """False once the scene was closed (its nodes are removed from it): there is nothing left to restore."""
        return all(node.GetScene() is not None for node in (self.browserNode, self.sequenceNode, self.segmentationNode))

    def restore(self) -> None:
        browser, sequence = self.browserNode, self.sequenceNode
        current, saveChanges = browser.GetSelectedItemNumber(), browser.GetSaveChanges(sequence)
        browser.SetSaveChanges(sequence, True)
        try:
            for item, saved in enumerate(self.items):
                browser.SetSelectedItemNumber(item)
                self.segmentationNode.GetSegmentation().DeepCopy((saved or self.empty).GetSegmentation())
        finally:
            browser.SetSelectedItemNumber(current)
            browser.SetSaveChanges(sequence, saveChanges)


def _copyNode(node):
    copy = node.CreateNodeInstance()
    copy.Copy(node)
    if node.IsA("vtkMRMLSegmentationNode"):
        segmentation = slicer.vtkSegmentation()
        segmentation.DeepCopy(node.GetSegmentation())
        copy.SetAndObserveSegmentation(segmentation)
    return copy


def fillMissingItems(sequenceNode, segmentationNode, indexValues: list) -> None:
    """Give every frame without a segmentation item an empty copy of ``segmentationNode``'s segments."""
    for value in indexValues:
        if sequenceNode.GetDataNodeAtValue(value, True) is None:
            sequenceNode.SetDataNodeAtValue(_emptyCopy(segmentationNode), value)


def _emptyCopy(segmentationNode):
    """The same segments (names, colours, IDs) with no voxels."""
    empty = _copyNode(segmentationNode)
    for segmentId in list(empty.GetSegmentation().GetSegmentIDs()):
        empty.GetSegmentation().ClearSegment(segmentId)
    return empty
