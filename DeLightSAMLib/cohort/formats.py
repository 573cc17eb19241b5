"""Where a result goes: label maps as before, Slicer segmentations (``.seg.nrrd``) and DICOM Segmentation objects.

The output file's name chooses the writer: ``*.seg.nrrd`` a Slicer segmentation (slicerio), ``*.dcm`` a DICOM SEG
(highdicom) referencing the source series, anything else a label map through ``imageio`` (0/1, 0/255 for PNG).
Writers are ``imageio.Writer``s, so a result lands with the other outputs of a run or not at all.

Labels are numpy [k, j, i] for volumes and (H, W) for 2D images, as ``imageio`` reads them: a bool mask (one
segment) or 0..N with value i for segment i (several boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .. import __version__
from ..errors import ImageError, first_line
from ..imageio import (
    PLAIN_IMAGE_SUFFIXES,
    VOLUME_MASK_SUFFIXES,
    LoadedImage,
    Writer,
    full_suffix,
    mask_writer,
    write_files,
)
from ..overlay import PALETTE
from ..registry import BOX_CHECKPOINT, OFFICIAL_CHECKPOINT, looks_like_path
from . import FORMATS
from .extras import require

SLICER_SUFFIX = FORMATS["seg.nrrd"]
DICOM_SEG_SUFFIX = FORMATS["dicom-seg"]


class SegmentationUnsupportedError(ImageError):
    """DICOM SEG cannot describe this case (its source images lack what a SEG must reference); another format can."""


@dataclass(frozen=True)
class Term:
    """A coded concept (DICOM code sequence item / Slicer terminology triple)."""

    scheme: str
    value: str
    meaning: str


# SNOMED CT concepts (values and meanings as in DICOM's code tables, pydicom.sr.codedict).
ANATOMICAL_STRUCTURE = Term("SCT", "91723000", "Anatomical Structure")
ABNORMAL_STRUCTURE = Term("SCT", "49755003", "Morphologically Abnormal Structure")
TISSUE = Term("SCT", "85756007", "Tissue")
LESION = Term("SCT", "52988006", "Lesion")


@dataclass(frozen=True)
class SegmentLabel:
    """What a segment is: its name, coded category and type (and anatomic region), and its display colour (RGB 0-255)."""

    name: str
    category: Term
    type: Term
    color: tuple[int, int, int]
    region: Optional[Term] = None


# What each modality map of the released model was trained to segment (MODEL.md, section 6: ISIC, Shenzhen CXR,
# breast ultrasound, DRIVE, DSB 2018, CVC-ClinicDB).
MODALITY_SEGMENTS: dict[str, SegmentLabel] = {
    "dermoscopy": SegmentLabel(
        "skin lesion", ABNORMAL_STRUCTURE, LESION, (205, 92, 92), Term("SCT", "39937001", "Skin")
    ),
    "xray": SegmentLabel("lung", ANATOMICAL_STRUCTURE, Term("SCT", "39607008", "Lung"), (197, 165, 145)),
    "ultrasound": SegmentLabel(
        "breast lesion", ABNORMAL_STRUCTURE, LESION, (144, 238, 144), Term("SCT", "76752008", "Breast")
    ),
    "fundus": SegmentLabel(
        "retinal vessels",
        ANATOMICAL_STRUCTURE,
        Term("SCT", "59820001", "Blood Vessel"),
        (216, 101, 79),
        Term("SCT", "5665001", "Retina"),
    ),
    "microscopy": SegmentLabel(
        "cell nuclei", ANATOMICAL_STRUCTURE, Term("SCT", "84640000", "Nucleus"), (111, 184, 210)
    ),
    "colonoscopy": SegmentLabel("polyp", ABNORMAL_STRUCTURE, LESION, (230, 220, 70), Term("SCT", "71854001", "Colon")),
}
GENERIC_SEGMENT = SegmentLabel("segment", TISSUE, TISSUE, (128, 174, 128))


def segment_for(modality_name: Optional[str]) -> SegmentLabel:
    """The segment description for a modality's map; a generic tissue segment for indices of other checkpoints."""
    return MODALITY_SEGMENTS.get(modality_name or "", GENERIC_SEGMENT)


def box_segments(count: int) -> list[SegmentLabel]:
    """Segments "box 1" .. "box N" for the structures in N boxes, coloured as the overlay draws them."""
    return [
        SegmentLabel(f"box {number}", TISSUE, TISSUE, PALETTE[(number - 1) % len(PALETTE)])
        for number in range(1, count + 1)
    ]


@dataclass(frozen=True)
class Provenance:
    """What produced a mask, recorded in DICOM SEG's algorithm identification."""

    model: str  # "De-LightSAM", "LiteMedSAM"
    checkpoint: str  # registry name or file name
    parameters: dict[str, str] = field(default_factory=dict)  # modality or box, threshold


def provenance_for(
    checkpoint: Optional[str], threshold: float, modality: Optional[str] = None, boxes: Optional[np.ndarray] = None
) -> Provenance:
    """De-LightSAM by ``modality``, or LiteMedSAM by ``boxes``, with ``checkpoint`` (a registry name, or a path:
    its file name; None: the model's default)."""
    checkpoint = checkpoint or (BOX_CHECKPOINT if boxes is not None else OFFICIAL_CHECKPOINT)
    label = Path(checkpoint).name if looks_like_path(checkpoint) else checkpoint
    parameters = {"threshold": f"{threshold:g}"}
    if modality is not None:
        parameters["modality"] = modality
    if boxes is not None:
        parameters["boxes"] = "; ".join(" ".join(f"{value:g}" for value in box) for box in np.asarray(boxes))
    return Provenance("LiteMedSAM" if boxes is not None else "De-LightSAM", label, parameters)


def default_suffix(source: Path, is_dicom: bool) -> str:
    """The output suffix that follows the input: DICOM -> DICOM SEG, a PNG/JPEG/... photo -> PNG, a NIfTI/NRRD/MHA
    file -> a label map in the same format, a detached header (.nhdr, .mhd) -> NRRD (see VOLUME_MASK_SUFFIXES)."""
    if is_dicom:
        return DICOM_SEG_SUFFIX
    suffix = full_suffix(source)
    if suffix in PLAIN_IMAGE_SUFFIXES:
        return ".png"
    return suffix if suffix in VOLUME_MASK_SUFFIXES else ".nrrd"


def output_kind(target: Path) -> str:
    """ "dicom-seg", "seg.nrrd" or "labelmap", from the file name."""
    name = target.name.lower()
    if name.endswith(SLICER_SUFFIX):
        return "seg.nrrd"
    if name.endswith(DICOM_SEG_SUFFIX):
        return "dicom-seg"
    return "labelmap"


def packages_for(kind: str) -> tuple[tuple[str, str], ...]:
    """(module, purpose) pairs that writing ``kind`` (or talking to a DICOMweb server: "dicom-web") needs, to
    check before a run starts."""
    if kind == "seg.nrrd":
        return (("slicerio", "Slicer segmentation output (.seg.nrrd)"),)
    if kind == "dicom-seg":
        return (("pydicom", "DICOM SEG output"), ("highdicom", "DICOM SEG output"))
    if kind == "dicom-web":
        return (("pydicom", "DICOMweb input and --store-to"), ("dicomweb_client", "DICOMweb input and --store-to"))
    return ()


@dataclass
class Result:
    """Labels (bool, or 0..N) with what each label is (``segments[i - 1]`` for label i) and what made them."""

    labels: np.ndarray
    segments: Sequence[SegmentLabel]
    provenance: Provenance


def result_writer(result: Result, target: Path, loaded: LoadedImage, dicom_files: Sequence[Path] = ()):
    """(the Writer for ``target`` in the format its name says, the DICOM SEG dataset or None)."""
    kind = output_kind(target)
    if kind == "labelmap":
        return mask_writer(result.labels, target, reference=loaded, labels=len(result.segments) > 1), None
    if kind == "seg.nrrd":
        return slicer_writer(result.labels, loaded, result.segments), None
    dataset = dicom_segmentation(result, dicom_files, loaded.source)
    return dicom_writer(dataset), dataset


def write_output(result: Result, target: Path, loaded: LoadedImage, dicom_files: Sequence[Path] = ()):
    """Write one result (see ``result_writer``); the DICOM SEG dataset when one was written, else None."""
    writer, dataset = result_writer(result, target, loaded, dicom_files)
    write_files([(target, writer)])
    return dataset


# ---------------------------------------------------------------------------------------------- Slicer
def ijk_to_lps(loaded: LoadedImage) -> np.ndarray:
    """4 x 4 matrix from voxel (i, j, k) to LPS millimetres; a 2D image is one slice at k = 0."""
    image = loaded.image
    dimension = image.GetDimension()
    direction = np.eye(3)
    direction[:dimension, :dimension] = np.reshape(image.GetDirection(), (dimension, dimension))
    spacing = np.ones(3)
    spacing[:dimension] = image.GetSpacing()
    origin = np.zeros(3)
    origin[:dimension] = image.GetOrigin()
    matrix = np.eye(4)
    matrix[:3, :3] = direction * spacing  # column c is axis c's direction times its spacing
    matrix[:3, 3] = origin
    return matrix


def slicer_terminology(segment: SegmentLabel) -> dict:
    terminology = {
        "contextName": "Segmentation category and type - DICOM master list",
        "category": [segment.category.scheme, segment.category.value, segment.category.meaning],
        "type": [segment.type.scheme, segment.type.value, segment.type.meaning],
    }
    if segment.region is not None:
        terminology["anatomicContextName"] = "Anatomic codes - DICOM master list"
        terminology["anatomicRegion"] = [segment.region.scheme, segment.region.value, segment.region.meaning]
    return terminology


def slicer_writer(labels: np.ndarray, loaded: LoadedImage, segments: Sequence[SegmentLabel]) -> Writer:
    """A ``.seg.nrrd`` on the image's grid, segment i where the labels are i: Slicer loads it as a segmentation
    with the segments' names, colours and terminology."""
    slicerio = require("slicerio", "Slicer segmentation output (.seg.nrrd)")
    volume = np.asarray(labels) if labels.ndim == 3 else np.asarray(labels)[None]
    voxels = np.ascontiguousarray(np.transpose(volume, (2, 1, 0)).astype(np.uint8))  # [k, j, i] -> (i, j, k)
    entries = []
    for number, segment in enumerate(segments, start=1):
        extent = [0, -1, 0, -1, 0, -1]
        if np.any(voxels == number):
            extent = [int(v) for axis in np.nonzero(voxels == number) for v in (axis.min(), axis.max())]
        entries.append(
            {
                "id": f"Segment_{number}",
                "labelValue": number,
                "layer": 0,
                "name": segment.name,
                "color": [round(c / 255, 6) for c in segment.color],
                "extent": extent,
                "terminology": slicer_terminology(segment),
            }
        )
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": ijk_to_lps(loaded),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "segments": entries,
    }
    return lambda temporary: slicerio.write_segmentation(str(temporary), segmentation)


# ---------------------------------------------------------------------------------------------- DICOM SEG
def read_dicom_headers(files: Sequence[Path]) -> list:
    pydicom = require("pydicom", "DICOM SEG output")
    return [pydicom.dcmread(str(path), stop_before_pixels=True) for path in files]


def check_dicom_input(target: Optional[Path], is_dicom: bool, source) -> None:
    """A DICOM SEG references its source images: refuse one (``target``, or ``None`` for "a DICOM SEG") for an input
    that is not DICOM, naming the input and the formats that fit."""
    if is_dicom or (target is not None and output_kind(target) != "dicom-seg"):
        return
    what = f"a DICOM SEG ({target.name})" if target is not None else "a DICOM SEG"
    raise ImageError(f"{what} needs DICOM input; {source} is not DICOM: choose --format nrrd, nii.gz or seg.nrrd")


def dicom_segmentation(result: Result, dicom_files: Sequence[Path], source: Path):
    """A binary DICOM Segmentation of the series ``dicom_files`` (in slice order: ``labels[k]`` is file k), segment
    i where the labels are i."""
    labels, segments, provenance = result.labels, result.segments, result.provenance
    check_dicom_input(None, bool(dicom_files), source)
    hd = require("highdicom", "DICOM SEG output")
    from pydicom.sr.coding import Code

    sources = read_dicom_headers(dicom_files)
    frames = np.asarray(labels) if labels.ndim == 3 else np.asarray(labels)[None]
    if len(sources) != frames.shape[0]:
        raise SegmentationUnsupportedError(
            f"the series has {len(sources)} DICOM files but the volume {frames.shape[0]} slices (multi-frame "
            "files?); DICOM SEG output needs one file per slice: choose --format nrrd or seg.nrrd"
        )

    def code(term: Term) -> Code:
        return Code(term.value, term.scheme, term.meaning)

    algorithm = hd.AlgorithmIdentificationSequence(
        name=provenance.model,
        family=Code("123110", "DCM", "Artificial Intelligence"),
        version=f"DeLightSAMLib {__version__}",
        parameters={"checkpoint": provenance.checkpoint, **provenance.parameters},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.name,
            segmented_property_category=code(segment.category),
            segmented_property_type=code(segment.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[code(segment.region)] if segment.region else None,
            display_color=hd.color.CIELabColor.from_rgb(*segment.color),
        )
        for number, segment in enumerate(segments, start=1)
    ]
    try:
        return hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames.astype(np.uint8),  # a label map: value i is segment i
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 9000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="De-LightSAM project",
            manufacturer_model_name=provenance.model,
            software_versions=f"DeLightSAMLib {__version__}",
            device_serial_number="none",
            series_description=f"{provenance.model} {', '.join(s.name for s in segments)}"[:64],
            content_label="DELIGHTSAM",
            content_description=f"{provenance.model} ({provenance.checkpoint})"[:64],
            omit_empty_frames=False,
        )
    except (ValueError, AttributeError, TypeError) as error:  # highdicom's checks of the source images
        raise SegmentationUnsupportedError(
            f"cannot make a DICOM SEG for {source} ({first_line(error)[:160]}); choose --format nrrd or seg.nrrd"
        ) from error


def dicom_writer(dataset) -> Writer:
    return lambda temporary: dataset.save_as(str(temporary), enforce_file_format=True)
