"""Real DICOM headers from pydicom-data, and copies of a real file with Modality (0008,0060) changed to the codes no
public sample has (the tests of the modality read from a header)."""

from __future__ import annotations

from pathlib import Path

import data_store
import pydicom

SAMPLES = Path(data_store.__file__).parent / "data"
CR = SAMPLES / "RG1_UNCR.dcm"  # a computed radiograph, 1841 x 1955
US = SAMPLES / "US1_UNCR.dcm"  # an RGB ultrasound frame
CT = SAMPLES / "693_UNCR.dcm"
MR = SAMPLES / "MR2_UNCR.dcm"
PHOTO = SAMPLES / "SC_rgb.dcm"  # a 100 x 100 RGB secondary capture (OT): the base of the changed copies


def with_modality(folder: Path, code, name: str = "") -> Path:
    """A copy of PHOTO whose Modality is ``code`` (None: the element removed)."""
    dataset = pydicom.dcmread(PHOTO)
    if code is None:
        del dataset.Modality
    else:
        dataset.Modality = code
    path = folder / (name or f"{code or 'none'}.dcm")
    dataset.save_as(path)
    return path
