"""The effect's "Auto (from the DICOM header)": a volume node's DICOM.instanceUIDs, looked up as Slicer's DICOM
database does, give the file whose Modality (0008,0060) chooses the modality (real headers from pydicom-data)."""

from __future__ import annotations

from pathlib import Path

import data_store
import pydicom
import pytest

import slicer
from DeLightSAMLib.errors import DeLightSAMError
from DeLightSAMSlicerLib.HeaderModality import (
    INSTANCE_UIDS_ATTRIBUTE,
    dicomFile,
    headerModality,
    knownCodes,
    requireHeaderModality,
    resolveModality,
)
from DeLightSAMSlicerLib.MRMLLogic import SegmentationOptions

SAMPLES = Path(data_store.__file__).parent / "data"
CR, US, CT = SAMPLES / "RG1_UNCR.dcm", SAMPLES / "US1_UNCR.dcm", SAMPLES / "693_UNCR.dcm"


def uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture()
def database():
    """What slicer.dicomDatabase.fileForInstance answers: the file of each instance it holds, "" for others."""
    files = {uid(path): str(path) for path in (CR, US, CT)}
    return lambda instanceUID: files.get(instanceUID, "")


def volume(scene, instanceUIDs=None):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "image")
    if instanceUIDs is not None:
        node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, instanceUIDs)
    return node


def test_a_volume_loaded_from_dicom_gets_its_header_s_modality(scene, database):
    # as DICOMScalarVolumePlugin writes it: one UID per file, "Unknown" where a file had none; a UID the database
    # no longer has a file for is passed over
    node = volume(scene, f"Unknown 1.2.3.4 {uid(CR)}")
    assert dicomFile(node, database) == str(CR)
    chosen = headerModality(node, database)
    assert (chosen.modality, chosen.reason) == ("xray", "Modality (0008,0060) = CR -> xray")
    assert headerModality(volume(scene, uid(US)), database).modality == "ultrasound"


def test_no_header_or_an_unknown_one_gives_none_and_a_one_line_reason(scene, database):
    for node in (volume(scene), volume(scene, ""), volume(scene, "Unknown 1.2.3.4"), None):
        assert dicomFile(node, database) is None and headerModality(node, database) is None
        with pytest.raises(DeLightSAMError, match="has no DICOM header to read the modality from: choose the modality"):
            requireHeaderModality(node, database)
    ct = volume(scene, uid(CT))
    assert headerModality(ct, database) is None
    with pytest.raises(DeLightSAMError, match=r"Modality \(0008,0060\) is CT, which De-LightSAM was not trained on"):
        requireHeaderModality(ct, database)


def test_auto_options_are_resolved_for_the_run_and_stored_as_auto(scene, database):
    auto = SegmentationOptions.fromParameters({"Modality": "auto", "Threshold": "0.4"})
    assert auto.modality == "auto" and auto.toParameters()["Modality"] == "auto"  # the effect's parameter keeps it
    options, chosen = resolveModality(auto, volume(scene, uid(CR)), database)
    assert options == SegmentationOptions(modality="xray", threshold=0.4) and chosen.code == "CR"
    given = SegmentationOptions(modality="fundus")
    assert resolveModality(given, volume(scene, uid(CR)), database) == (given, None)  # a chosen modality stays
    with pytest.raises(DeLightSAMError, match="image was not loaded from Slicer's DICOM database"):
        resolveModality(auto, volume(scene), database)


def test_the_tooltip_lists_every_code_auto_accepts():
    assert knownCodes().startswith("xray (CR, DX, RG), ultrasound (US), fundus (OP), colonoscopy (ES), dermoscopy")


def test_both_faces_default_to_auto_for_a_header_and_back_to_the_remembered_choice():
    from DeLightSAMSlicerLib.HeaderModality import AUTO, defaultModality

    assert defaultModality(True, "fundus", "xray") == AUTO
    assert defaultModality(False, AUTO, "xray") == "xray"
    assert defaultModality(False, "fundus", "xray") == "fundus"
