"""The segmentation out of the scene, written by the cohort writers the command line uses
(``DeLightSAMLib.cohort.formats``): a Slicer ``.seg.nrrd``, a DICOM SEG for DICOM inputs, or a label map. Labels are
exported on the loaded image's own grid (the source volume's), so a file the browser downloads matches what
``delightsam predict`` writes for the same image."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from DeLightSAMLib.cohort.formats import TISSUE, Provenance, Result, SegmentLabel, dicom_segmentation, write_output
from DeLightSAMLib.imageio import full_suffix
from DeLightSAMSlicerLib.Geometry import SegmentationError, voxelArray

FORMATS = {"seg.nrrd": ".seg.nrrd", "dicom-seg": ".dcm", "labelmap": ".nrrd"}
DICOMWEB = "dicomweb"  # the save kind that stores a DICOM SEG to the DICOMweb service the image came from


def segment_labels(scene, segmentationsLogic, segmentationNode, volumeNode, segmentIds) -> np.ndarray:
    """uint8 [k, j, i] on ``volumeNode``'s grid: segment n of ``segmentIds`` is label n (later ones win overlaps)."""
    import vtk

    ids = vtk.vtkStringArray()
    for segmentId in segmentIds:
        ids.InsertNextValue(segmentId)
    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        if not segmentationsLogic.ExportSegmentsToLabelmapNode(segmentationNode, ids, labelNode, volumeNode):
            raise SegmentationError("the segmentation could not be exported on the image's grid")
        return np.array(voxelArray(labelNode), dtype=np.uint8)
    finally:
        scene.RemoveNode(labelNode)


def segment_descriptions(segmentationNode, segmentIds) -> list[SegmentLabel]:
    segmentation = segmentationNode.GetSegmentation()
    labels = []
    for segmentId in segmentIds:
        segment = segmentation.GetSegment(segmentId)
        color = tuple(int(round(255 * value)) for value in segment.GetColor())
        labels.append(SegmentLabel(segment.GetName(), TISSUE, TISSUE, color))
    return labels


def file_name(loaded, kind: str, stem: str = "") -> str:
    source = loaded.source
    stem = stem or (source.name if source.is_dir() else source.name[: len(source.name) - len(full_suffix(source))])
    return f"{stem or 'image'}_segmentation{FORMATS[kind]}"


def _checked(labels: np.ndarray, loaded, kind: str) -> np.ndarray:
    """The labels on the image's spatial grid; a SegmentationError for what ``kind`` cannot hold."""
    if kind == "dicom-seg" and not loaded.dicom_files:
        raise SegmentationError("a DICOM SEG needs a DICOM image; save as .seg.nrrd or a label map")
    spatial = loaded.array.shape[: 2 if loaded.is_2d else 3]
    labels = labels[0] if loaded.is_2d else labels
    if labels.shape != spatial:
        raise SegmentationError(f"the segmentation's grid {labels.shape} is not the image's {spatial}")
    if kind == "dicom-seg" and not labels.any():
        raise SegmentationError("the segmentation is empty; a DICOM SEG needs at least one segmented voxel")
    return labels


def write_segmentation(
    labels: np.ndarray, loaded, segments, kind: str, provenance: Provenance, stem: str = ""
) -> tuple[str, bytes]:
    """(file name, bytes) of the labels written as ``kind`` through the cohort writers."""
    labels = _checked(labels, loaded, kind)
    name = file_name(loaded, kind, stem)
    with tempfile.TemporaryDirectory(prefix="delightsam-save-") as folder:
        target = Path(folder) / name
        write_output(Result(labels, segments, provenance), target, loaded, loaded.dicom_files)
        return name, target.read_bytes()


def dicom_seg_dataset(labels: np.ndarray, loaded, segments, provenance: Provenance):
    """The DICOM SEG dataset of the labels on ``loaded``'s series, built by the writer the command line stores to a
    DICOMweb service (``--store-to``)."""
    labels = _checked(labels, loaded, "dicom-seg")
    return dicom_segmentation(Result(labels, segments, provenance), loaded.dicom_files, loaded.source)
