"""The modality an image is segmented with, read from its own DICOM header (the modality ``auto``).

A DICOM image says what made it in Modality (0008,0060): ``CR`` for a computed radiograph, ``OP`` for a fundus
camera, ``US`` for ultrasound. ``registry.DICOM_MODALITY_CODES`` says which codes each of the model's modalities
was trained on; this module reads the code and looks it up. Files are read with SimpleITK (GDCM), the reader
``imageio`` uses for DICOM, header only; a pydicom Dataset, when a caller has one, is read as it is (pydicom is an
optional extra and is never imported here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from .errors import HeaderModalityError
from .registry import AUTO_MODALITY, DICOM_MODALITY_CODES, OFFICIAL_MODALITY_MAP

MODALITY_TAG = "Modality (0008,0060)"
_GDCM_KEY = "0008|0060"

Header = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], object]  # a path, a series' files, a Dataset


@dataclass(frozen=True)
class HeaderModality:
    """The modality a header chose: ``modality`` (a name of registry.MODALITIES), the header's ``code`` ("CR") and
    the ``source`` read (a file, or "the dataset")."""

    modality: str
    code: str
    source: str

    @property
    def reason(self) -> str:
        """Which tag chose the modality: "Modality (0008,0060) = CR -> xray"."""
        return f"{MODALITY_TAG} = {self.code} -> {self.modality}"


def is_auto(modality: object) -> bool:
    """Whether ``modality`` asks for the header's modality ("auto", in any case or spacing)."""
    return isinstance(modality, str) and modality.strip().lower() == AUTO_MODALITY


def modality_from_header(header: Header, modality_map: Optional[dict[str, int]] = None) -> HeaderModality:
    """The modality the DICOM header of ``header`` names: a DICOM file, a DICOM series folder (its first series, as
    ``imageio.read_image`` reads it), the files of one series (Modality is the same for all: the first is read) or a
    pydicom Dataset. Only modalities of ``modality_map`` (default: the released model's) count.

    Raises HeaderModalityError, with one line saying what to do, for an input with no DICOM header, a header without
    Modality, or a code the model was not trained on.
    """
    modality_map = OFFICIAL_MODALITY_MAP if modality_map is None else modality_map
    if isinstance(header, (str, os.PathLike)):
        source = Path(header)
        code = _code_of_file(_first_file(source, modality_map) if source.is_dir() else source, modality_map)
    elif isinstance(header, (list, tuple)):
        if not header:
            raise HeaderModalityError(f"no DICOM file to read the modality from; {_choose(modality_map)}")
        source = Path(header[0])
        code = _code_of_file(source, modality_map)
    else:
        source = "the dataset"
        value = header.get("Modality") if hasattr(header, "get") else None
        code = str(value or "")
    return modality_for_code(code, str(source), modality_map)


def modality_for_code(code: str, source: str, modality_map: Optional[dict[str, int]] = None) -> HeaderModality:
    """The modality for a Modality (0008,0060) value read elsewhere (a DICOMweb search result), ``source`` naming
    where it was read; HeaderModalityError when the model knows no such code."""
    modality_map = OFFICIAL_MODALITY_MAP if modality_map is None else modality_map
    code = code.strip().upper()
    if not code:
        raise HeaderModalityError(f"{source}: its DICOM header has no {MODALITY_TAG}; {_choose(modality_map)}")
    for name, codes in DICOM_MODALITY_CODES.items():
        if code in codes and name in modality_map:
            return HeaderModality(name, code, source)
    raise HeaderModalityError(
        f"{source}: {MODALITY_TAG} is {code}, which De-LightSAM was not trained on; it knows "
        f"{known_codes(modality_map)}: choose the modality instead of {AUTO_MODALITY}"
    )


def known_codes(modality_map: Optional[dict[str, int]] = None) -> str:
    """ "xray (CR, DX, RG), ultrasound (US), ...": what ``auto`` accepts, for messages and help."""
    modality_map = OFFICIAL_MODALITY_MAP if modality_map is None else modality_map
    return ", ".join(
        f"{name} ({', '.join(codes)})" for name, codes in DICOM_MODALITY_CODES.items() if name in modality_map
    )


def _choose(modality_map: dict[str, int]) -> str:
    names = ", ".join(sorted(modality_map, key=modality_map.get))
    return f"{AUTO_MODALITY} reads the modality from a DICOM image's header: choose one of {names}"


def _first_file(folder: Path, modality_map: dict[str, int]) -> Path:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise HeaderModalityError(f"{folder} holds no DICOM series; {_choose(modality_map)}")
    return Path(reader.GetGDCMSeriesFileNames(str(folder), series[0])[0])


def _code_of_file(path: Path, modality_map: dict[str, int]) -> str:
    """The file's Modality value ("" when the header has none); HeaderModalityError when it is not DICOM."""
    import SimpleITK as sitk

    if not path.is_file():
        raise HeaderModalityError(f"{path}: no such file to read the modality from")
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")  # only a DICOM header counts, never a PNG's or NRRD's
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise HeaderModalityError(f"{path} has no DICOM header; {_choose(modality_map)}") from None
    return reader.GetMetaData(_GDCM_KEY).strip() if reader.HasMetaDataKey(_GDCM_KEY) else ""
