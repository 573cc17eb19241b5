"""The modality read from an image's own DICOM header (``auto``): real headers from pydicom-data, and copies of a
real file with Modality (0008,0060) changed to the codes no public sample has."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from header_samples import CR, CT, MR, PHOTO, US, with_modality
from DeLightSAMLib.errors import DeLightSAMError, HeaderModalityError
from DeLightSAMLib.header_modality import is_auto, modality_for_code, modality_from_header
from DeLightSAMLib.registry import DICOM_MODALITY_CODES, MODALITIES, OFFICIAL_MODALITY_MAP, resolve_modality


@pytest.mark.parametrize("path, modality, code", [(CR, "xray", "CR"), (US, "ultrasound", "US")])
def test_real_headers_choose_the_modality_and_say_which_tag(path, modality, code):
    chosen = modality_from_header(path)
    assert (chosen.modality, chosen.code, chosen.source) == (modality, code, str(path))
    assert chosen.reason == f"Modality (0008,0060) = {code} -> {modality}"
    assert modality_from_header(str(path)).modality == modality  # a str as well as a Path
    assert modality_from_header(pydicom.dcmread(path, stop_before_pixels=True)).modality == modality  # a Dataset


@pytest.mark.parametrize(
    "code, modality",
    [
        ("OP", "fundus"),
        ("ES", "colonoscopy"),
        ("XC", "dermoscopy"),
        ("DMS", "dermoscopy"),
        ("SM", "microscopy"),
        ("GM", "microscopy"),
        ("DX", "xray"),
        ("RG", "xray"),
    ],
)
def test_every_code_the_model_knows_chooses_its_modality(tmp_path, code, modality):
    path = with_modality(tmp_path, code)
    assert sitk.ReadImage(str(path)).GetSize()[:2] == (100, 100)  # still an image the CLI can read
    chosen = modality_from_header(path)
    assert (chosen.modality, chosen.code) == (modality, code)
    assert chosen.reason == f"Modality (0008,0060) = {code} -> {modality}"


def test_the_code_map_names_only_modalities_of_the_released_model():
    assert set(DICOM_MODALITY_CODES) == set(MODALITIES)
    codes = [code for group in DICOM_MODALITY_CODES.values() for code in group]
    assert len(codes) == len(set(codes))  # no code chooses two modalities
    with pytest.raises(DeLightSAMError, match="unknown modality 'auto'"):
        resolve_modality("auto")  # never a modality name of its own


@pytest.mark.parametrize("path, code", [(CT, "CT"), (MR, "MR"), (PHOTO, "OT")])
def test_a_header_naming_nothing_the_model_knows_is_one_line(path, code):
    with pytest.raises(HeaderModalityError) as raised:
        modality_from_header(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: Modality (0008,0060) is {code}, which De-LightSAM was not trained on")
    assert "xray (CR, DX, RG), ultrasound (US), fundus (OP), colonoscopy (ES)" in message
    assert message.endswith("choose the modality instead of auto")


def test_no_header_is_one_line(tmp_path, reference_image_path):
    for path in (reference_image_path, tmp_path / "volume.nrrd"):
        if path.suffix == ".nrrd":
            sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 5, 6), np.int16)), str(path))
        with pytest.raises(HeaderModalityError, match=r"has no DICOM header; auto reads the modality from a DICOM"):
            modality_from_header(path)
    with pytest.raises(HeaderModalityError, match=r"has no Modality \(0008,0060\); auto reads"):
        modality_from_header(with_modality(tmp_path, None))
    with pytest.raises(HeaderModalityError, match="no DICOM file to read the modality from"):
        modality_from_header([])
    with pytest.raises(HeaderModalityError, match="no such file"):
        modality_from_header(tmp_path / "missing.dcm")


def test_a_series_and_its_folder_are_read_from_their_files(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    path = with_modality(folder, "ES", "frame.dcm")
    assert modality_from_header([path, CT]).modality == "colonoscopy"  # the first file: Modality is per series
    assert modality_from_header(folder).reason == "Modality (0008,0060) = ES -> colonoscopy"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HeaderModalityError, match="holds no DICOM series"):
        modality_from_header(empty)


def test_a_checkpoint_without_a_modality_refuses_its_codes(tmp_path):
    without_fundus = {name: index for name, index in OFFICIAL_MODALITY_MAP.items() if name != "fundus"}
    with pytest.raises(HeaderModalityError, match=r"is OP, which De-LightSAM was not trained on") as raised:
        modality_from_header(with_modality(tmp_path, "OP"), without_fundus)
    assert "fundus" not in str(raised.value)
    assert modality_for_code(" us ", "series 1").reason == "Modality (0008,0060) = US -> ultrasound"
    with pytest.raises(HeaderModalityError, match=r"series 1: its DICOM header has no Modality"):
        modality_for_code("", "series 1")


def test_auto_is_recognised_in_any_case_but_nothing_else():
    assert is_auto("auto") and is_auto(" Auto ") and is_auto("AUTO")
    assert not any(is_auto(value) for value in ("xray", "automatic", "", None, 0))


def test_pydicom_is_not_needed_to_read_files(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_pydicom(name, *args, **kwargs):
        if name.split(".")[0] == "pydicom":
            raise ImportError("no pydicom here")
        return real_import(name, *args, **kwargs)

    path = with_modality(tmp_path, "SM")
    monkeypatch.setattr(builtins, "__import__", without_pydicom)
    assert modality_from_header(shutil.copy(path, tmp_path / "copy.dcm")).modality == "microscopy"
