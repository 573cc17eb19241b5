"""The modality of a volume loaded from DICOM, read from its files' header: the effect's "Auto (from the DICOM header)".

Slicer's DICOM loaders (DICOMScalarVolumePlugin; DICOMImageSequencePlugin, for each frame of a clip) record the SOP
instance UIDs a volume was read from in its attribute ``DICOM.instanceUIDs``: space-separated, ``Unknown`` for a
file without one. Slicer's DICOM database gives each UID's file (``slicer.dicomDatabase.fileForInstance``); the
caller passes that lookup in, so this runs without a database (and under slicer-core in tests). The library reads
Modality (0008,0060) from the file and maps it (DeLightSAMLib.header_modality).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from DeLightSAMLib.errors import DeLightSAMError
from DeLightSAMLib.header_modality import HeaderModality, is_auto, known_codes, modality_from_header
from DeLightSAMLib.registry import AUTO_MODALITY
from DeLightSAMSlicerLib.i18n import tr as _

AUTO = AUTO_MODALITY  # the modality parameter's value for "Auto (from the DICOM header)"
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
UNKNOWN_UID = "Unknown"  # what DICOMScalarVolumePlugin records for a file without a SOP instance UID

FileForInstance = Callable[[str], str]  # SOP instance UID -> its file ("" when the database has none)


def dicomFile(volumeNode, fileForInstance: FileForInstance) -> Optional[str]:
    """The first file of ``volumeNode``'s DICOM instances that the lookup finds; None for a volume that was not
    loaded from DICOM, or whose files the database no longer has. Modality is the same for every file of a series,
    so one file is enough."""
    if volumeNode is None:
        return None
    for uid in (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split():
        if uid != UNKNOWN_UID:
            path = fileForInstance(uid)
            if path:
                return str(path)
    return None


def requireHeaderModality(volumeNode, fileForInstance: FileForInstance) -> HeaderModality:
    """The modality ``volumeNode``'s DICOM header names; a DeLightSAMError, one line saying what to do, for a volume
    with no header or a header naming nothing the model knows."""
    path = dicomFile(volumeNode, fileForInstance)
    if path is None:
        name = volumeNode.GetName() if volumeNode is not None else _("(no source volume)")
        raise DeLightSAMError(
            _(
                "{name} was not loaded from Slicer's DICOM database, so it has no DICOM header to read the modality "
                "from: choose the modality"
            ).format(name=name)
        )
    return modality_from_header(path)


def headerModality(volumeNode, fileForInstance: FileForInstance) -> Optional[HeaderModality]:
    """The modality ``volumeNode``'s DICOM header names, or None (no header, or nothing the model knows)."""
    try:
        return requireHeaderModality(volumeNode, fileForInstance)
    except DeLightSAMError:
        return None


def resolveModality(options, volumeNode, fileForInstance: FileForInstance):
    """``(options, chosen)``: SegmentationOptions whose modality ``auto`` is replaced by the one the volume's header
    names (``chosen``, a HeaderModality; None when the modality was given). Raises as requireHeaderModality."""
    if not is_auto(options.modality):
        return options, None
    chosen = requireHeaderModality(volumeNode, fileForInstance)
    return dataclasses.replace(options, modality=chosen.modality), chosen


def defaultModality(hasHeaderModality: bool, shown: str, remembered: str) -> str:
    """The modality a front end shows for a newly chosen image: Auto when its DICOM header names a modality the model
    knows; otherwise what was shown, or the modality last chosen by hand where Auto was shown."""
    if hasHeaderModality:
        return AUTO
    return remembered if shown == AUTO else shown


def knownCodes() -> str:
    """What Auto accepts, for the effect's tooltip: "xray (CR, DX, RG), ultrasound (US), ..."."""
    return known_codes()
