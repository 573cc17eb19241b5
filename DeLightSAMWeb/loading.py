"""Images into the scene: files named on the command line and uploads from the browser, read by the library's one
reader (``DeLightSAMLib.imageio``) and turned into MRML volume nodes (a photo is a single-slice RGB vector volume, as
Slicer loads it). The ``LoadedImage`` is kept beside the node: saving writes on its grid with the cohort writers.

A ``dicomweb://`` address names one series on a DICOMweb service, as the command line takes it
(``DeLightSAMLib.cohort``: the same search, the same fetch into a temporary folder, the same series reader).

Uploads are written into the session's temporary folder only, under names the server makes (never a path the
browser sends), limited in size and type; a zip holds one DICOM series and is unpacked the same way.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from DeLightSAMLib.errors import ImageError, first_line
from DeLightSAMLib.imageio import (
    DICOM_SUFFIXES,
    PLAIN_IMAGE_SUFFIXES,
    VOLUME_SUFFIXES,
    LoadedImage,
    full_suffix,
)

MAX_UPLOAD_BYTES = 512 * 1024 * 1024  # per upload, all files together
UPLOAD_SUFFIXES = tuple(s for s in PLAIN_IMAGE_SUFFIXES + VOLUME_SUFFIXES + DICOM_SUFFIXES + (".zip",) if s) + ("",)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class UploadError(ImageError):
    """An upload the server refuses (type, size, content); the message says what to send instead."""


@dataclass
class LoadedVolume:
    node: object  # vtkMRMLScalarVolumeNode or vtkMRMLVectorVolumeNode
    image: LoadedImage
    dicomweb: Optional[object] = None  # the DicomwebSeries it was fetched from (Save can store back to it)
    name: str = ""  # what the page calls it (a fetched series: its series UID, not the temporary folder's name)


@dataclass
class FetchedSeries:
    """A DICOMweb series fetched the command line's way: its image (files in a temporary folder that ``close``
    removes), the series and how many series the address named (the first is shown)."""

    image: LoadedImage
    series: object  # DeLightSAMLib.cohort.dicomweb.DicomwebSeries
    count: int
    scratch: object  # the CaseImage holding the temporary folder

    def close(self) -> None:
        self.scratch.close()


def fetch_dicomweb(address: str) -> FetchedSeries:
    """The first image series a ``dicomweb://`` address names (sorted as the command line sorts them), fetched.
    Raises a DeLightSAMError (one line) for an unreachable server, a refused request or no image series."""
    from DeLightSAMLib.cohort.cases import CaseSettings, collect_cases
    from DeLightSAMLib.cohort.runner import load_case

    cases = collect_cases([address], CaseSettings(), store_only=True)
    fetched = load_case(cases[0])
    return FetchedSeries(fetched.loaded, cases[0].source, len(cases), fetched)


def ijk_to_ras(image: LoadedImage) -> np.ndarray:
    from DeLightSAMLib.cohort.formats import ijk_to_lps

    return LPS_TO_RAS @ ijk_to_lps(image)


def volume_node(scene, image: LoadedImage, name: str):
    """A scalar ([k, j, i]) or RGB vector ([k, j, i, c]) volume node holding ``image`` (a 2D image: one slice)."""
    import vtk
    from vtk.util import numpy_support

    voxels = image.array[None] if image.is_2d else image.array
    vector = voxels.ndim == 4
    if vector and voxels.shape[3] == 4:  # RGBA photo: the colour channels, as Slicer shows them
        voxels = voxels[..., :3]
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode" if vector else "vtkMRMLScalarVolumeNode", name)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(voxels.shape[2], voxels.shape[1], voxels.shape[0])
    flat = np.ascontiguousarray(voxels).reshape(-1, voxels.shape[3]) if vector else np.ascontiguousarray(voxels).ravel()
    imageData.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True))
    node.SetAndObserveImageData(imageData)
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(ijk_to_ras(image)[row, column]))
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None and not vector:
        finite = voxels[np.isfinite(voxels)] if np.issubdtype(voxels.dtype, np.floating) else voxels
        low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(float(low), float(high) if high > low else float(low) + 1.0)
    return node


def safe_name(name: str, taken: set) -> str:
    """A file name the server chooses from the browser's: no folders, only plain characters, the suffix kept, a
    number added when it is already ``taken`` (a series zipped from several folders)."""
    base = Path(str(name).replace("\\", "/")).name
    suffix = full_suffix(Path(base))
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", base[: len(base) - len(suffix)])[:60].lstrip(".") or "upload"
    candidate, number = f"{stem}{suffix}", 1
    while candidate in taken:
        candidate, number = f"{stem}-{number}{suffix}", number + 1
    taken.add(candidate)
    return candidate


class UploadFolder:
    """The session's temporary folder; each upload gets a fresh sub-folder. ``keep`` removes the others once an image
    is shown: a refused upload never takes away the files of the image still on screen (Save as DICOM SEG and Auto's
    header lookup read them)."""

    def __init__(self, maxBytes: int = MAX_UPLOAD_BYTES) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="delightsam-web-"))
        self.maxBytes = maxBytes
        self._count = 0

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def store(self, files: list[tuple[str, bytes]]) -> Path:
        """Write the uploaded (name, content) pairs; returns what to read: the one file, or the folder of a DICOM
        series (several files or one zip)."""
        if not files:
            raise UploadError("the upload was empty; choose an image file")
        total = sum(len(content) for _name, content in files)
        if total > self.maxBytes:
            raise UploadError(
                f"the upload is {total / 2**20:.0f} MB, more than the server's limit of {self.maxBytes / 2**20:.0f} MB"
            )
        for name, _content in files:
            if full_suffix(Path(name)) not in UPLOAD_SUFFIXES:
                raise UploadError(
                    f"'{Path(name).name}' is not a supported upload; send PNG/JPEG, NIfTI, NRRD, MHA, DICOM files or "
                    "a zipped DICOM series"
                )
        self._count += 1
        folder = self.root / f"upload-{self._count}"
        folder.mkdir()
        paths, taken = [], set()
        for name, content in files:
            path = folder / safe_name(name, taken)
            path.write_bytes(content)
            paths.append(path)
        if len(paths) == 1 and full_suffix(paths[0]) == ".zip":
            return self._unzip(paths[0], folder / "series")
        if len(paths) == 1:
            return paths[0]
        if any(full_suffix(path) not in DICOM_SUFFIXES for path in paths):
            raise UploadError("several files are read as one DICOM series; send one image file, or only DICOM files")
        return folder

    def keep(self, *kept: Optional[Path]) -> None:
        """Remove every upload folder except those holding a path in ``kept`` (the image on screen, uploads still
        being read; None or a file outside the uploads keeps none)."""
        kept = [Path(path).resolve() for path in kept if path is not None]
        for folder in self.root.glob("upload-*"):
            if not any(path.is_relative_to(folder.resolve()) for path in kept):
                shutil.rmtree(folder, ignore_errors=True)

    def _unzip(self, archive: Path, target: Path) -> Path:
        try:
            with zipfile.ZipFile(archive) as bundle:
                members = [info for info in bundle.infolist() if not info.is_dir()]
                if sum(info.file_size for info in members) > self.maxBytes:
                    raise UploadError(f"'{archive.name}' unpacks to more than the server's upload limit")
                target.mkdir()
                taken = set()
                for info in members:
                    (target / safe_name(info.filename, taken)).write_bytes(bundle.read(info))
        except (zipfile.BadZipFile, OSError) as error:
            raise UploadError(
                f"'{archive.name}' is not a readable zip file ({first_line(error)}); zip the DICOM series again"
            )
        if not members:
            raise UploadError(f"'{archive.name}' is empty; zip the folder of one DICOM series")
        return target


def instance_files(image: LoadedImage) -> tuple[list[str], dict[str, str]]:
    """The SOP instance UIDs of ``image``'s DICOM files (``Unknown`` for a file without one) and UID -> file: the
    server's own record of the files it read, which stands in for Slicer's DICOM database in HeaderModality's lookup.
    Reads the files' headers only; no MRML (it may run off the event loop). Empty for an image not read from DICOM."""
    import SimpleITK as sitk

    from DeLightSAMSlicerLib.HeaderModality import UNKNOWN_UID

    files: dict[str, str] = {}
    uids = []
    for path in image.dicom_files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
            uid = reader.GetMetaData("0008|0018").strip().rstrip("\x00") if reader.HasMetaDataKey("0008|0018") else ""
        except RuntimeError:
            uid = ""
        uids.append(uid or UNKNOWN_UID)
        if uid:
            files[uid] = str(path)
    return uids, files


def record_instances(node, image: LoadedImage, instances: Optional[tuple] = None) -> dict[str, str]:
    """Mark ``node`` as Slicer's DICOM loaders do (attribute ``DICOM.instanceUIDs``) and return UID -> file;
    ``instances``: what ``instance_files(image)`` returned already (read off the event loop)."""
    from DeLightSAMSlicerLib.HeaderModality import INSTANCE_UIDS_ATTRIBUTE

    uids, files = instances if instances is not None else instance_files(image)
    if uids:
        node.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(uids))
    return files
