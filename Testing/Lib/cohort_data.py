"""Small generated data for the cohort tests: DICOM CT series (pydicom), photos, volumes, a tiny checkpoint, and a
real Orthanc DICOMweb server started on 127.0.0.1 for the duration of a test module."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from DeLightSAMLib.build import build_model
from DeLightSAMLib.config import TINY_CONFIG
from DeLightSAMLib.registry import CheckpointEntry

TINY = CheckpointEntry(name="tiny", filename="tiny.pth", urls=(), description="tiny test model", config=TINY_CONFIG)

# A script that runs `delightsam` with the tiny test model registered as checkpoint 'tiny' (for subprocesses:
# killed runs and torchrun).
CLI_WITH_TINY = """
import sys
from DeLightSAMLib.config import TINY_CONFIG
from DeLightSAMLib.registry import CHECKPOINTS, CheckpointEntry
CHECKPOINTS["tiny"] = CheckpointEntry(name="tiny", filename="tiny.pth", urls=(), description="tiny test model",
                                      config=TINY_CONFIG)
from DeLightSAMLib.cli import main
sys.exit(main(sys.argv[1:]))
"""
# Prepended to CLI_WITH_TINY: the process kills itself (SIGKILL) at its {number}th rename of a finished temporary
# file into place, the worst moment for a kill: a complete result that is not there yet.
KILL_AT_RENAME = """
import os, signal
_replace, _renames = os.replace, []
def _replace_or_die(source, target):
    _renames.append(target)
    if len(_renames) == {number}:
        os.kill(os.getpid(), signal.SIGKILL)
    _replace(source, target)
os.replace = _replace_or_die
"""


def save_tiny_checkpoint(folder: Path, offset: float = -240.0) -> Path:
    """A TINY_CONFIG model's weights as ``folder/tiny.pth`` (the registry entry TINY's file).

    A randomly initialised tiny model's logits are all just above 0 (every mask full); scaling the mask
    hypernetwork's last layer and setting its bias (``offset`` on the last of its four outputs) spreads them around
    0, so that masks cover about half of an image, change from slice to slice and differ between modalities and
    between offsets: equality checks on them can fail.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = build_model(TINY_CONFIG).state_dict()
    last = "mask_decoder.output_hypernetworks_mlps.0.layers.2"
    state[f"{last}.weight"].mul_(100.0)
    state[f"{last}.bias"].copy_(torch.tensor([100.0, -100.0, 100.0, offset]))
    path = folder / TINY.filename
    torch.save(state, path)
    return path


def make_ct_series(
    folder: Path,
    volume: np.ndarray,
    *,
    series_number: int = 3,
    study_uid: str | None = None,
    spacing=(0.8, 0.7, 2.5),
    names=None,
) -> list[Path]:
    """Write ``volume`` [k, j, i] as a CT series of single-frame files (slice k at z = 10 + k * spacing[2])."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    paths = []
    for k, plane in enumerate(np.asarray(volume, dtype=np.int16)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "CT",
            "Cohort^Test",
            "P1",
            "",
            "O",
        )
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
            "20240101",
            "120000",
            "1",
            "",
            "",
        )
        ds.SeriesNumber, ds.InstanceNumber = series_number, k + 1
        ds.ImagePositionPatient = [-100.0, -120.0, 10.0 + spacing[2] * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = plane.tobytes()
        # file names in reverse slice order: the series must be ordered by position, not by name
        path = folder / (names[k] if names else f"IM{len(volume) - k:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ct_volume(rng: np.random.Generator, slices: int = 3, rows: int = 40, columns: int = 48) -> np.ndarray:
    """Noise with a bright block that moves from slice to slice, [k, j, i] int16."""
    volume = rng.normal(0, 60, size=(slices, rows, columns))
    for k in range(slices):
        top, left = rows // 5 + 3 * k, columns // 4 + 4 * k
        volume[k, top : top + rows // 2, left : left + columns // 3] += 700
    return volume.astype(np.int16)


def write_volume(path: Path, volume: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.9, 0.8, 3.0))
    image.SetOrigin((4.0, -7.0, 12.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def make_mixed_cohort(root: Path, seed: int = 7) -> dict[str, int]:
    """20 cases under ``root``: 9 photos (PNG RGB and gray, JPEG), 7 volumes (NIfTI .nii.gz and .nii, NRRD, MHA) in
    subfolders, a 3-slice DICOM CT series, a one-file DICOM image, a second CT series in a nested folder, and one
    corrupt .nii.gz. Also files that are not inputs (a note, a result-like name). Returns counts by kind."""
    rng = np.random.default_rng(seed)
    photos = root / "photos"
    photos.mkdir(parents=True)
    for index in range(6):
        rgb = rng.integers(0, 256, size=(36 + 4 * index, 44, 3), dtype=np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(photos / f"rgb{index}.png"))
    for index in range(2):
        gray = rng.integers(0, 256, size=(40, 30 + 6 * index), dtype=np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(gray), str(photos / f"gray{index}.png"))
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.integers(0, 256, size=(32, 40, 3), dtype=np.uint8), isVector=True),
        str(photos / "photo.jpg"),
    )
    for index in range(3):
        write_volume(root / "volumes" / "nifti" / f"ct{index}.nii.gz", ct_volume(rng, slices=2 + index))
    write_volume(root / "volumes" / "nifti" / "mr.nii", ct_volume(rng, slices=2).astype(np.float32))
    for index in range(2):
        write_volume(root / "volumes" / f"scan{index}.nrrd", ct_volume(rng, slices=3))
    write_volume(root / "volumes" / "scan.mha", ct_volume(rng, slices=2))
    make_ct_series(root / "dicom" / "ct", ct_volume(rng, slices=3))
    make_ct_series(root / "dicom" / "nested" / "chest", ct_volume(rng, slices=2, rows=32, columns=32), series_number=5)
    make_ct_series(root / "dicom" / "radiograph", ct_volume(rng, slices=1, rows=36, columns=30), names=["DX1.dcm"])
    (root / "volumes" / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a volume")
    (root / "notes.txt").write_text("not an input")
    (root / "photos" / "old_mask.png").write_bytes(b"a result of an earlier run, not an input")
    return {"photos": 9, "volumes": 7, "dicom": 3, "corrupt": 1}


# ---------------------------------------------------------------------------------------------- Orthanc
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _orthanc_files() -> tuple[str | None, str | None]:
    executable = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.exists(p)), None
    )
    plugin = os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
    if not plugin:
        try:  # the Debian package's own file list says where the plugin is
            listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True).stdout.split()
        except OSError:
            listing = []
        plugin = next((p for p in listing if os.path.basename(p).startswith("libOrthancDicomWeb.so")), None)
    return executable, plugin


def unavailable(reason: str, packages: str = "orthanc and orthanc-dicomweb"):
    """Skip, saying what to install (CI's $DELIGHTSAM_REQUIRE_ALL turns the skip into a failure: conftest.py)."""
    pytest.skip(f"{reason}; install the Debian packages {packages} to run this test")


def dicom_validator() -> str:
    """dciodvfy (dicom3tools): checks a DICOM file against its IOD, the standard's definition of that object."""
    executable = shutil.which("dciodvfy")
    if executable is None:
        unavailable("dciodvfy was not found", "dicom3tools")
    return executable


def start_orthanc(folder: Path):
    """An Orthanc with the DICOMweb plugin on 127.0.0.1 (free port, no DICOM port, local access only, no
    authentication); returns (process, DICOMweb root URL). Stop it with ``stop_orthanc``."""
    executable, plugin = _orthanc_files()
    if executable is None or plugin is None:
        unavailable(f"the Orthanc executable ({executable}) or its DICOMweb plugin ({plugin}) was not found")
    port = free_port()
    config = {
        "Name": "DeLightSAMTest",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "SaveJobs": False,
        "HttpThreadsCount": 4,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen([executable, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/dicom-web"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{url}/studies", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_orthanc(process)
            unavailable(f"Orthanc did not start (exit {process.poll()}): {(folder / 'orthanc.log').read_text()[-800:]}")
        time.sleep(0.3)


def stop_orthanc(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
