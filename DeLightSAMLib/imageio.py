"""Reading images and volumes from disk and writing masks back, through SimpleITK.

Arrays are numpy in SimpleITK's order: a 2D image is (H, W) or (H, W, C); a volume is [k, j, i] or [k, j, i, C].
(MONOCHROME1 DICOM, where low values are bright, comes out of SimpleITK already inverted: higher is brighter.)
Outputs are written to temporary files beside their targets and
renamed into place only when every one of them is written, so a failure never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_file
from .errors import ImageError, first_line
from .filecheck import check_complete

PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
DICOM_SUFFIXES = ("", ".dcm", ".ima", ".dicom")  # a file without a suffix is taken for DICOM
# What a mask is written as: lossless 2D images (0/255; JPEG's compression would blur the edges into other values)
# and single-file volumes (a detached header written under a temporary name would name a temporary data file).
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
VOLUME_MASK_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")


@dataclass
class LoadedImage:
    """Pixels plus the SimpleITK image they came from (for geometry) and whether it is a 2D image; for DICOM, the
    files read, in slice order (what a DICOM SEG references)."""

    array: np.ndarray
    image: sitk.Image
    is_2d: bool
    source: Path
    dicom_files: tuple[Path, ...] = ()

    @property
    def is_dicom(self) -> bool:
        return self.source.is_dir() or self.source.suffix.lower() in DICOM_SUFFIXES


def full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``x.nii.gz``, else the last suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def dicom_series(folder: str | os.PathLike) -> list[list[Path]]:
    """The DICOM series in ``folder`` (not its subfolders), grouped by SeriesInstanceUID with SimpleITK's GDCM, each
    as its files in slice order (patient position); the one reader of DICOM series here."""
    reader = sitk.ImageSeriesReader()
    return [
        [Path(name) for name in reader.GetGDCMSeriesFileNames(str(folder), uid)]
        for uid in reader.GetGDCMSeriesIDs(str(folder))
    ]


def read_image(path: str | os.PathLike) -> LoadedImage:
    """Read a PNG/JPEG/TIFF/BMP, any SimpleITK format (NIfTI, NRRD, MHA, ...), a DICOM file or a DICOM folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ImageError(f"input not found: {path}")
    if path.is_file():
        check_complete(path)  # SimpleITK reads some cut-off files as if the missing voxels were zeros
    try:
        if path.is_dir():
            series = dicom_series(path)
            if not series:
                raise ImageError(f"no DICOM series found in folder {path}; give an image file or a DICOM series folder")
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(name) for name in series[0]])
            image = reader.Execute()
            dicom_files = tuple(series[0])
        else:
            image = sitk.ReadImage(str(path))
            dicom_files = (path,) if path.suffix.lower() in DICOM_SUFFIXES else ()
    except RuntimeError as error:
        if full_suffix(path) == ".png" and "PixelType" in str(error):  # gray + alpha, which SimpleITK cannot take
            from .png import read_png

            pixels = read_png(path)
            return _loaded(pixels, sitk.GetImageFromArray(pixels, isVector=True), path)
        raise ImageError(
            f"cannot read {path} as an image ({first_line(error)[:160]}); use PNG/JPEG/TIFF/BMP, NIfTI, NRRD, MHA "
            "or DICOM"
        ) from error
    return _loaded(sitk.GetArrayFromImage(image), image, path, dicom_files)


def read_dicom_series(files: Sequence[Path], source: Path) -> LoadedImage:
    """Read the DICOM files of one series, in the order given (slice k of the volume is ``files[k]``);
    ``source`` is the folder the result is named after."""
    for file in files:
        check_complete(file)
    try:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(path) for path in files])
        image = reader.Execute()
    except RuntimeError as error:
        raise ImageError(
            f"cannot read the DICOM series in {source} ({first_line(error)[:160]}); check that its files are complete"
        ) from error
    return _loaded(sitk.GetArrayFromImage(image), image, Path(source), tuple(files))


def _loaded(array: np.ndarray, image: sitk.Image, path: Path, dicom_files: tuple[Path, ...] = ()) -> LoadedImage:
    """Check what was read: 2D or 3D, gray (+ alpha), RGB or RGBA, some finite values."""
    components = image.GetNumberOfComponentsPerPixel()
    spatial = array.ndim - (1 if components > 1 else 0)
    if spatial == 3 and array.shape[0] == 1:  # a single-slice volume, e.g. one DICOM file
        array = array[0]
        spatial = 2
    if spatial not in (2, 3):
        raise ImageError(f"{path} has {image.GetDimension()} dimensions; only 2D images and 3D volumes are supported")
    if components == 2 and spatial == 2:  # gray + alpha (a PNG saved with transparency): the gray channel
        array, components = array[..., 0], 1
    if components not in (1, 3, 4):
        raise ImageError(
            f"{path} has {components} values per pixel (a multi-channel or 4D image); expected gray, RGB or RGBA: "
            "save one channel or one time point as a 2D image or 3D volume"
        )
    if np.issubdtype(array.dtype, np.floating) and array.size and not np.isfinite(array).any():
        raise ImageError(f"{path} has no finite pixel values (all NaN or infinite); check how the file was written")
    return LoadedImage(array=array, image=image, is_2d=spatial == 2, source=path, dicom_files=dicom_files)


Writer = Callable[[Path], None]  # writes one output into the temporary path it is given


def mask_writer(
    mask: np.ndarray, target: str | os.PathLike, reference: Optional[LoadedImage] = None, labels: bool = False
) -> Writer:
    """How to write a mask to ``target``. PNG/JPEG/BMP/TIFF get 0/255 uint8; other formats 0/1 uint8 with the
    geometry of ``reference`` (origin, spacing, direction). ``labels=True`` writes the values as they are (a label
    image 0..N; uint8, or uint16 beyond 255)."""
    suffix = full_suffix(Path(target))
    mask = np.asarray(mask)
    plain = suffix in PLAIN_IMAGE_SUFFIXES
    if plain and mask.ndim != 2:
        raise ImageError(f"cannot write a 3D mask as {suffix}: use .nrrd, .nii.gz or .mha for {target}")
    if labels:
        values = mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16)
    else:
        values = (mask > 0).astype(np.uint8) * (255 if plain else 1)
    ref = reference.image if reference is not None and not plain else None
    if ref is not None and ref.GetDimension() == 3 and values.ndim == 2 and ref.GetSize()[2] == 1:
        values = values[None]  # a single-slice volume (one DICOM file): one slice, keeping its place in space
    image = sitk.GetImageFromArray(values)
    if ref is not None and ref.GetDimension() == image.GetDimension() and ref.GetSize() == image.GetSize():
        image.CopyInformation(ref)  # origin (z too), spacing, direction
    return lambda temporary: sitk.WriteImage(image, str(temporary), True)


def array_writer(array: np.ndarray) -> Writer:
    """How to save a numpy array (``.npy``)."""

    def save(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.save(handle, array)

    return save


def rgb_writer(rgb: np.ndarray) -> Writer:
    """How to write an (H, W, 3) uint8 picture (PNG)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(rgb, dtype=np.uint8), isVector=True)
    return lambda temporary: sitk.WriteImage(image, str(temporary))


def write_files(outputs: Sequence[tuple[str | os.PathLike, Writer]]) -> list[Path]:
    """Write every output to a temporary file beside its target; rename them all into place only when all are
    written. On any failure no target is created or changed."""
    targets = [Path(target).expanduser() for target, _ in outputs]
    for target in targets:
        folder = target.parent if str(target.parent) else Path(".")
        if not folder.is_dir():
            raise ImageError(f"output folder does not exist: {folder}")
    try:
        with contextlib.ExitStack() as stack:
            for target, (_, write) in zip(targets, outputs):
                # the suffix picks the file format for SimpleITK
                write(stack.enter_context(atomic_file(target, suffix=full_suffix(target))))
    except RuntimeError as error:
        raise ImageError(f"cannot write {target} ({first_line(error)[:160]}); nothing was written") from error
    except OSError as error:
        raise ImageError(f"cannot write {target} ({error.strerror or error}); nothing was written") from error
    return targets


def write_mask(
    mask: np.ndarray, target: str | os.PathLike, reference: Optional[LoadedImage] = None, labels: bool = False
) -> Path:
    """Write a mask atomically (see ``mask_writer``)."""
    return write_files([(target, mask_writer(mask, target, reference, labels))])[0]


def write_array(array: np.ndarray, target: str | os.PathLike) -> Path:
    """Save a numpy array (``.npy``) atomically."""
    return write_files([(target, array_writer(array))])[0]


def check_output_path(
    target: str | os.PathLike, suffixes: Sequence[str], what: str, taken: Sequence[Path] = ()
) -> Path:
    """Fail early, before any work, if ``target`` cannot be written: wrong suffix, missing or read-only folder,
    a folder in its place, or a path already used by another output or the input (``taken``)."""
    target = Path(target).expanduser()
    suffix = full_suffix(target)
    if suffix not in suffixes:
        why = (
            " (JPEG is lossy: a mask would not stay 0/255, its edges would blur into other values)"
            if suffix in LOSSY_SUFFIXES
            else ""
        )
        raise ImageError(
            f"{what} {target}: unsupported file type '{suffix or '(none)'}'{why}; use {', '.join(suffixes)}"
        )
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ImageError(f"{what} {target}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImageError(f"{what} {target}: the folder {folder} is not writable; choose another place")
    if target.is_dir():
        raise ImageError(f"{what} {target} is a folder; give a file name")
    for other in taken:
        if _same_path(target, other):
            raise ImageError(f"{what} {target} is also the input or another output; give each file its own name")
    return target


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
