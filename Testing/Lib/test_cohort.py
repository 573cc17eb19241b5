"""Cohort runs of `delightsam predict`: discovery, one run over a mixed cohort, resuming after a kill, a corrupt case,
DICOM SEG and Slicer .seg.nrrd outputs read back by highdicom and slicerio, manifests, a real Orthanc DICOMweb
server, and torchrun sharding."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicerio
import torch

from cohort_data import (
    CLI_WITH_TINY,
    KILL_AT_RENAME,
    TINY,
    ct_volume,
    dicom_validator,
    make_ct_series,
    make_mixed_cohort,
    save_tiny_checkpoint,
    start_orthanc,
    stop_orthanc,
    write_volume,
)
from DeLightSAMLib.cli import main
from DeLightSAMLib.cohort.cases import CaseSettings, collect_cases
from DeLightSAMLib.imageio import read_image
from DeLightSAMLib.predictor import Predictor
from DeLightSAMLib.segmentation import by_modality, volume_window
from DeLightSAMLib.registry import CHECKPOINTS


@pytest.fixture()
def one_thread():
    """One torch thread: the tiny model's runs are short and a busy shared machine makes two threads wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def tiny(tmp_path, monkeypatch, one_thread):
    """Checkpoint 'tiny' (a TINY_CONFIG model) in the test's checkpoint cache; returns its predictor."""
    monkeypatch.setitem(CHECKPOINTS, "tiny", TINY)
    path = save_tiny_checkpoint(tmp_path / "cache")
    return Predictor.from_checkpoint(str(path), config=TINY.config, device="cpu")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort") / "data"
    make_mixed_cohort(root)
    return root


TINY_XRAY = ("-m", "xray", "-c", "tiny", "--device", "cpu")  # the tiny test model's xray map, on the CPU


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_summary(stem: Path) -> tuple[list[dict], dict]:
    with open(f"{stem}.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows, json.loads(Path(f"{stem}.json").read_text())


def expected_mask(predictor, path: Path, modality: str = "xray") -> np.ndarray:
    """The mask a single run computes for a file or series folder."""
    loaded = read_image(path)
    if loaded.is_2d:
        predictor.set_image(loaded.array)
        mask = predictor.predict(modality).mask
    else:
        mask = by_modality(predictor, loaded, modality, window=volume_window(loaded, None)).labels
    assert 0.05 < mask.mean() < 0.95, f"the test model's mask of {path} is almost constant: equality would prove little"
    return mask


def seg_pixels(seg, source_files) -> np.ndarray:
    """The SEG's segment 1 as (slices, rows, columns) bool, in the order of ``source_files``."""
    uids = [pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in source_files]
    return seg.get_pixels_by_source_instance(uids, segment_numbers=[1])[..., 0] > 0


def result_pixels(path: Path) -> np.ndarray:
    """Any result file as a bool array (label maps, .seg.nrrd, DICOM SEG frames)."""
    name = path.name
    if name.endswith(".dcm"):
        return highdicom.seg.segread(str(path)).pixel_array > 0
    if name.endswith(".seg.nrrd"):
        return slicerio.read_segmentation(str(path))["voxels"] > 0
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def test_discovery_groups_series_skips_results_and_mirrors_folders(tmp_path, cohort):
    out = tmp_path / "out"
    cases = collect_cases([str(cohort)], CaseSettings(modality="xray"), output_dir=out)
    assert len(cases) == 20
    by_name = {Path(c.name).relative_to(cohort).as_posix() if "[" not in c.name else c.name: c for c in cases}
    ct = by_name["dicom/ct"]
    assert len(ct.dicom_files) == 3 and ct.output == out / "dicom" / "ct_mask.dcm"
    # slice order is the patient position's (GDCM), not the file names'
    assert [f.name for f in ct.dicom_files] == ["IM0003.dcm", "IM0002.dcm", "IM0001.dcm"]
    assert by_name["dicom/radiograph/DX1.dcm"].output == out / "dicom" / "radiograph" / "DX1_mask.dcm"
    assert by_name["dicom/nested/chest"].output == out / "dicom" / "nested" / "chest_mask.dcm"
    assert by_name["photos/photo.jpg"].output == out / "photos" / "photo_mask.png"
    assert by_name["volumes/nifti/ct0.nii.gz"].output == out / "volumes" / "nifti" / "ct0_mask.nii.gz"
    assert by_name["volumes/scan.mha"].output == out / "volumes" / "scan_mask.mha"
    assert "photos/old_mask.png" not in by_name and "notes.txt" not in by_name
    # without an output folder results go beside their inputs; --format picks the suffix
    beside = collect_cases([str(cohort / "volumes")], CaseSettings(modality="xray", format="seg.nrrd"))
    assert {c.output for c in beside} >= {cohort / "volumes" / "scan0_mask.seg.nrrd"}

    # two series in one folder are two cases, told apart by series number
    mixed = tmp_path / "two"
    rng = np.random.default_rng(0)
    make_ct_series(mixed, ct_volume(rng, 2), series_number=4, names=["a1.dcm", "a2.dcm"])
    make_ct_series(mixed, ct_volume(rng, 3), series_number=9, names=["b1.dcm", "b2.dcm", "b3.dcm"])
    two = collect_cases([str(mixed)], CaseSettings(modality="xray"))
    assert sorted(c.output.name for c in two) == ["two_S4_mask.dcm", "two_S9_mask.dcm"]
    assert sorted(len(c.dicom_files) for c in two) == [2, 3]


def test_mixed_cohort_one_command_summary_resume_and_corrupt_case(capsys, tmp_path, cohort, tiny):
    out = tmp_path / "out"
    code, stdout, err = run(capsys, "predict", cohort, *TINY_XRAY, "--output-dir", out)
    assert code == 1, err  # one case failed
    assert "20 cases: 19 done, 0 skipped, 1 failed" in stdout
    failure_lines = [line for line in err.splitlines() if "broken.nii.gz failed:" in line]
    assert len(failure_lines) == 1 and "cannot read" in failure_lines[0]
    rows, summary = read_summary(out / "delightsam-summary")
    assert len(rows) == 20 and summary["done"] == 19 and summary["failed"] == 1 and summary["cases_per_minute"] > 0
    assert {row["status"] for row in rows if "broken" not in row["case"]} == {"done"}
    broken = next(row for row in rows if "broken" in row["case"])
    assert broken["status"] == "failed" and "cannot read" in broken["reason"] and broken["voxels"] == ""
    assert not (out / "volumes" / "broken_mask.nii.gz").exists()

    # outputs equal what a single run computes, in the format that follows the input
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "photos" / "rgb2_mask.png")))
    assert set(np.unique(png)) <= {0, 255}
    np.testing.assert_array_equal(png == 255, expected_mask(tiny, cohort / "photos" / "rgb2.png"))
    row = next(r for r in rows if r["case"].endswith("rgb2.png"))
    assert int(row["voxels"]) == int((png == 255).sum()) and int(row["total_voxels"]) == png.size
    volume_out = sitk.ReadImage(str(out / "volumes" / "nifti" / "ct2_mask.nii.gz"))
    volume_in = sitk.ReadImage(str(cohort / "volumes" / "nifti" / "ct2.nii.gz"))
    assert np.allclose(volume_out.GetDirection(), volume_in.GetDirection())
    assert np.allclose(volume_out.GetOrigin(), volume_in.GetOrigin())
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(volume_out) > 0, expected_mask(tiny, cohort / "volumes" / "nifti" / "ct2.nii.gz")
    )
    seg = highdicom.seg.segread(str(out / "dicom" / "ct_mask.dcm"))
    case = next(c for c in collect_cases([str(cohort)], CaseSettings(modality="xray")) if c.name.endswith("dicom/ct"))
    np.testing.assert_array_equal(seg_pixels(seg, case.dicom_files), expected_mask(tiny, cohort / "dicom" / "ct"))
    radiograph = highdicom.seg.segread(str(out / "dicom" / "radiograph" / "DX1_mask.dcm"))
    assert radiograph.pixel_array.shape[-2:] == (36, 30)

    # a second run finds everything done; the corrupt case fails again, nothing is rewritten
    stamp = (out / "dicom" / "ct_mask.dcm").stat().st_mtime_ns
    code, stdout, _ = run(capsys, "predict", cohort, *TINY_XRAY, "--output-dir", out)
    assert code == 1 and "20 cases: 0 done, 19 skipped, 1 failed" in stdout
    rows, _ = read_summary(out / "delightsam-summary")
    skipped = next(r for r in rows if r["case"].endswith("rgb2.png"))
    assert skipped["status"] == "skipped" and int(skipped["voxels"]) == int((png == 255).sum())
    assert (out / "dicom" / "ct_mask.dcm").stat().st_mtime_ns == stamp
    # --overwrite redoes one case's result
    code, stdout, _ = run(
        capsys,
        "predict",
        cohort / "photos" / "gray0.png",
        cohort / "photos" / "gray1.png",
        *TINY_XRAY,
        "--output-dir",
        out / "photos",
        "--overwrite",
    )
    assert code == 0 and "2 cases: 2 done" in stdout


def test_killed_run_resumes_where_it_stopped(tmp_path, cohort, one_thread):
    """A run killed (SIGKILL) while renaming its fifth result into place, then the same command again: finished
    cases are skipped, the rest done, no temporary file is left, and every result equals an uninterrupted run's."""
    save_tiny_checkpoint(tmp_path / "cache")
    script = tmp_path / "delightsam_tiny.py"
    script.write_text(CLI_WITH_TINY)
    killed_script = tmp_path / "delightsam_killed.py"
    killed_script.write_text(KILL_AT_RENAME.format(number=5) + CLI_WITH_TINY)
    env = {**os.environ, "DELIGHTSAM_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def command(program: Path, out: Path) -> list[str]:
        return [
            sys.executable,
            str(program),
            "predict",
            str(cohort),
            *TINY_XRAY,
            "--output-dir",
            str(out),
        ]

    reference = subprocess.run(command(script, tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 1, reference.stderr[-2000:]

    out = tmp_path / "out"
    killed = subprocess.run(command(killed_script, out), env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    results = sorted(p.relative_to(out) for p in out.rglob("*_mask.*") if not p.name.startswith("."))
    assert len(results) == 4
    assert len(list(out.rglob(".*.part*"))) == 1  # the fifth result, complete but never renamed into place
    state = out / "delightsam-summary.state"
    assert sum(len(p.read_text().splitlines()) for p in state.glob("rank-*.jsonl")) == 4

    resumed = subprocess.run(command(script, out), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 1, resumed.stderr[-2000:]
    summary = json.loads((out / "delightsam-summary.json").read_text())
    assert (summary["skipped"], summary["done"], summary["failed"]) == (4, 15, 1)
    assert not list(out.rglob(".*.part*"))
    expected = sorted(p.relative_to(tmp_path / "ref") for p in (tmp_path / "ref").rglob("*_mask.*"))
    assert sorted(p.relative_to(out) for p in out.rglob("*_mask.*")) == expected and len(expected) == 19
    for relative in expected:
        np.testing.assert_array_equal(
            result_pixels(out / relative), result_pixels(tmp_path / "ref" / relative), err_msg=str(relative)
        )


def test_slicer_segmentation_reads_back_with_names_colours_and_terminology(capsys, tmp_path, tiny):
    rng = np.random.default_rng(1)
    volume_path = write_volume(tmp_path / "in" / "ct.nrrd", ct_volume(rng, slices=3))
    photo_path = tmp_path / "in" / "skin.png"
    sitk.WriteImage(
        sitk.GetImageFromArray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), isVector=True), str(photo_path)
    )
    code, stdout, err = run(
        capsys,
        "predict",
        volume_path,
        photo_path,
        *TINY_XRAY,
        "--format",
        "seg.nrrd",
        "--output-dir",
        tmp_path / "out",
    )
    assert code == 0, err
    segmentation = slicerio.read_segmentation(str(tmp_path / "out" / "ct_mask.seg.nrrd"))
    (segment,) = segmentation["segments"]
    assert segment["name"] == "lung" and segment["labelValue"] == 1
    assert np.allclose(segment["color"], np.array([197, 165, 145]) / 255, atol=1e-5)
    assert segment["terminology"]["category"] == ["SCT", "91723000", "Anatomical Structure"]
    assert segment["terminology"]["type"] == ["SCT", "39607008", "Lung"]
    voxels = np.transpose(segmentation["voxels"], (2, 1, 0)) > 0  # (i, j, k) -> [k, j, i]
    np.testing.assert_array_equal(voxels, expected_mask(tiny, volume_path))
    image = sitk.ReadImage(str(volume_path))
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"])
    assert np.allclose(ijk_to_lps[:3, 3], image.GetOrigin())
    assert np.allclose(ijk_to_lps[:3, :3], np.reshape(image.GetDirection(), (3, 3)) * image.GetSpacing())
    photo = slicerio.read_segmentation(str(tmp_path / "out" / "skin_mask.seg.nrrd"))
    assert photo["voxels"].shape == (40, 30, 1)
    np.testing.assert_array_equal(photo["voxels"][:, :, 0].T > 0, expected_mask(tiny, photo_path))

    # a single input takes --format too, and a DICOM SEG records what made it
    series = tmp_path / "series"
    make_ct_series(series, ct_volume(rng, slices=2))
    code, stdout, err = run(capsys, "predict", series, *TINY_XRAY, "--format", "dicom-seg")
    assert code == 0 and stdout.startswith(str(tmp_path / "series_mask.dcm")), err
    seg = highdicom.seg.segread(str(tmp_path / "series_mask.dcm"))
    description = seg.SegmentSequence[0]
    assert description.SegmentLabel == "lung" and description.SegmentAlgorithmType == "AUTOMATIC"
    algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "De-LightSAM"
    assert "tiny" in str(algorithm.AlgorithmParameters) and "xray" in str(algorithm.AlgorithmParameters)
    assert list(description.RecommendedDisplayCIELabValue)  # a colour
    source = pydicom.dcmread(str(sorted(series.iterdir())[0]), stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.StudyInstanceUID == source.StudyInstanceUID


def test_dicom_seg_passes_the_standards_validator(tmp_path):
    """dciodvfy (dicom3tools) checks every attribute the Segmentation IOD requires: no error, no warning, for a
    series and for a one-image DICOM, empty masks included."""
    from DeLightSAMLib.cohort.formats import Result, provenance_for, segment_for, write_output

    rng = np.random.default_rng(3)
    for name, volume in (("series", ct_volume(rng, slices=3)), ("single", ct_volume(rng, slices=1))):
        files = make_ct_series(tmp_path / name, volume)
        order = collect_cases([str(tmp_path / name)], CaseSettings(modality="xray"))[0].dicom_files
        loaded = read_image(tmp_path / name) if len(files) > 1 else read_image(files[0])
        mask = loaded.array > 300
        mask[..., :2, :] = False
        for label, values in (("mask", mask), ("empty", np.zeros_like(mask))):
            target = tmp_path / f"{name}_{label}.dcm"
            result = Result(values, [segment_for("xray")], provenance_for("tiny", 0.5, modality="xray"))
            write_output(result, target, loaded, order)
            checked = subprocess.run([dicom_validator(), str(target)], capture_output=True, text=True)
            report = (checked.stdout + checked.stderr).strip().splitlines()
            assert checked.returncode == 0 and report == ["Segmentation"], report
            np.testing.assert_array_equal(
                seg_pixels(highdicom.seg.segread(str(target)), order), values if values.ndim == 3 else values[None]
            )


@pytest.fixture()
def tinybox(tiny, tmp_path, monkeypatch):
    """Checkpoint 'tinybox' (a TINY_LITEMEDSAM_CONFIG LiteMedSAM) in the test's checkpoint cache; its predictor."""
    from DeLightSAMLib.box_predictor import BoxPredictor
    from DeLightSAMLib.build import build_model
    from DeLightSAMLib.config import TINY_LITEMEDSAM_CONFIG
    from DeLightSAMLib.registry import CheckpointEntry

    monkeypatch.setitem(
        CHECKPOINTS,
        "tinybox",
        CheckpointEntry(
            name="tinybox",
            filename="tinybox.pth",
            urls=(),
            description="tiny LiteMedSAM",
            config=TINY_LITEMEDSAM_CONFIG,
            modality_map={},
        ),
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(build_model(TINY_LITEMEDSAM_CONFIG).state_dict(), tmp_path / "cache" / "tinybox.pth")
    return BoxPredictor.from_checkpoint("tinybox", device="cpu")


def test_several_boxes_give_one_segment_each_in_dicom_seg_and_slicer_files(capsys, tmp_path, tinybox):
    series = tmp_path / "ct"
    make_ct_series(series, ct_volume(np.random.default_rng(8), slices=2))
    boxes = ["--box", "2", "3", "20", "25", "--box", "15", "10", "40", "35"]
    code, out, err = run(capsys, "predict", series, *boxes, "-c", "tinybox", "--device", "cpu", "--format", "dicom-seg")
    assert code == 0 and out.startswith(str(tmp_path / "ct_mask.dcm")), err
    code, out, err = run(
        capsys, "predict", series, *boxes, "-c", "tinybox", "--device", "cpu", "-o", tmp_path / "ct.seg.nrrd"
    )
    assert code == 0, err
    code, out, err = run(
        capsys, "predict", series, *boxes, "-c", "tinybox", "--device", "cpu", "-o", tmp_path / "ct.nrrd"
    )
    assert code == 0, err
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ct.nrrd")))
    assert set(np.unique(labels)) == {0, 1, 2}  # the label map the box mode always wrote

    order = collect_cases([str(series)], CaseSettings(box=(0, 0, 1, 1)))[0].dicom_files
    seg = highdicom.seg.segread(str(tmp_path / "ct_mask.dcm"))
    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["box 1", "box 2"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "LiteMedSAM" and "2 3 20 25; 15 10 40 35" in str(algorithm.AlgorithmParameters)
    uids = [pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in order]
    for number in (1, 2):
        pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[number])[..., 0] > 0
        np.testing.assert_array_equal(pixels, labels == number, err_msg=f"segment {number}")
    checked = subprocess.run([dicom_validator(), str(tmp_path / "ct_mask.dcm")], capture_output=True, text=True)
    assert (checked.stdout + checked.stderr).strip().splitlines() == ["Segmentation"]
    segmentation = slicerio.read_segmentation(str(tmp_path / "ct.seg.nrrd"))
    assert [(s["name"], s["labelValue"]) for s in segmentation["segments"]] == [("box 1", 1), ("box 2", 2)]
    np.testing.assert_array_equal(np.transpose(segmentation["voxels"], (2, 1, 0)), labels)


def test_manifest_rows_choose_checkpoint_modality_box_format_and_output(capsys, tmp_path, tiny, tinybox, monkeypatch):
    import DeLightSAMLib.predictor as predictor_module
    from DeLightSAMLib.intensity import robust_window

    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b", "c", "e"):
        sitk.WriteImage(
            sitk.GetImageFromArray(rng.integers(0, 256, (30, 36), dtype=np.uint8)), str(data / f"{name}.png")
        )
    volume = ct_volume(rng, slices=3)
    write_volume(data / "d.nrrd", volume)
    other = save_tiny_checkpoint(tmp_path / "other", offset=-180.0)
    manifest = data / "cohort.csv"
    manifest.write_text(
        "input,output,checkpoint,modality,box,slices,format\n"
        "a.png,results/a_fundus.png,,fundus,,,\n"
        f"b.png,,{other},xray,,,seg.nrrd\n"
        "c.png,,tinybox,,10 5 20 25,,\n"
        "d.nrrd,,tinybox,,5 5 30 30,1 1,\n"
        "e.png,,,,10 5 20 25,,\n"  # a box for the command line's De-LightSAM checkpoint: refused
    )
    loads = []
    real = predictor_module.load_predictor

    def counting(checkpoint=None, **kwargs):
        loads.append(str(checkpoint))
        if str(checkpoint) == str(other):  # a path: the file does not say it is the tiny variant
            return Predictor.from_checkpoint(checkpoint, config=TINY.config, **kwargs)
        return real(checkpoint, **kwargs)

    monkeypatch.setattr(predictor_module, "load_predictor", counting)
    (data / "results").mkdir()
    code, stdout, err = run(capsys, "predict", manifest, "-c", "tiny", "--device", "cpu", "--summary", tmp_path / "run")
    assert code == 1 and "5 cases: 4 done, 0 skipped, 1 failed" in stdout, err
    assert sorted(loads) == sorted(["tiny", str(other), "tinybox"])  # each checkpoint loaded once
    tiny.set_image(sitk.GetArrayFromImage(sitk.ReadImage(str(data / "a.png"))))
    np.testing.assert_array_equal(result_pixels(data / "results" / "a_fundus.png"), tiny.predict("fundus").mask)
    other_predictor = Predictor.from_checkpoint(str(other), config=TINY.config, device="cpu")
    other_predictor.set_image(sitk.GetArrayFromImage(sitk.ReadImage(str(data / "b.png"))))
    np.testing.assert_array_equal(
        result_pixels(data / "b_mask.seg.nrrd")[:, :, 0].T, other_predictor.predict("xray").mask
    )
    box_predictor = tinybox
    box_predictor.set_image(sitk.GetArrayFromImage(sitk.ReadImage(str(data / "c.png"))))
    np.testing.assert_array_equal(result_pixels(data / "c_mask.png"), box_predictor.predict([10, 5, 20, 25]).masks[0])
    labels = result_pixels(data / "d_mask.nrrd")
    assert labels[1].any() and not labels[0].any() and not labels[2].any()  # only slice 1 was asked for
    box_predictor.set_image(volume[1], robust_window(volume))
    np.testing.assert_array_equal(labels[1], box_predictor.predict([5, 5, 30, 30]).masks[0])
    rows, _ = read_summary(tmp_path / "run")
    assert (
        "is a De-LightSAM model, which takes no box" in next(r for r in rows if r["case"].endswith("e.png"))["reason"]
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ("input,modality\nmissing.png,xray\n", "input not found"),
        ("input,modality\na.png,brain\n", "row 2: unknown modality 'brain'"),
        ("image,modality\na.png,xray\n", "expected 'input'"),
        ("input,box\na.png,1 2 3\n", "row 2: box '1 2 3' is not four numbers"),
        ("input,format\na.png,jpeg\n", "row 2: unknown format 'jpeg'"),
    ],
)
def test_bad_manifest_is_one_line_and_writes_nothing(capsys, tmp_path, content, message):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(tmp_path / "a.png"))
    (tmp_path / "m.csv").write_text(content)
    before = sorted(tmp_path.iterdir())
    code, _, err = run(capsys, "predict", tmp_path / "m.csv", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(tmp_path.iterdir()) == before


def test_cohort_command_mistakes_are_one_line(capsys, tmp_path, tiny, monkeypatch):
    for name in ("a", "b"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(tmp_path / f"{name}.png"))
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    cases = [
        (["--output", tmp_path / "x.png"], "use --output-dir"),
        (["--logits", tmp_path / "x.npy"], "--logits works with one input"),
        (["--store-to", "ftp://server"], "not a DICOMweb address"),
        (["--format", "dicom-seg"], "a.png is not DICOM"),
    ]
    for extra, message in cases:
        code, out, err = run(
            capsys,
            "predict",
            *images,
            *TINY_XRAY,
            "--summary",
            tmp_path / "s",
            *extra,
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.glob("s*"))
    code, _, err = run(capsys, "predict", *images, "-c", "tiny", "--device", "cpu")
    assert code == 2 and "no modality for" in err
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if the cohort extra were not installed
    series = tmp_path / "series"
    make_ct_series(series, ct_volume(np.random.default_rng(0), 2))
    code, _, err = run(capsys, "predict", series, images[0], *TINY_XRAY)
    assert code == 2 and "pip install 'DeLightSAMLib[cohort]'" in err and len(err.strip().splitlines()) == 1


def test_single_dicom_folder_still_runs_as_a_single_input(capsys, tmp_path, tiny, monkeypatch):
    series = tmp_path / "ct"
    make_ct_series(series, ct_volume(np.random.default_rng(4), 2))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "predict", "ct", *TINY_XRAY)
    assert code == 0, err
    assert out.startswith("ct_mask.nrrd  (") and "pixels in the mask" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ct", "ct_mask.nrrd"]  # no summary, no state
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "predict", "empty", *TINY_XRAY)
    assert code == 2 and "no DICOM series found in folder empty" in err


# ---------------------------------------------------------------------------------------------- DICOMweb
@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    process, url = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield url
    stop_orthanc(process)


def test_orthanc_round_trip_segments_a_study_and_stores_a_seg_referencing_it(capsys, tmp_path, tiny, orthanc):
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(orthanc)
    address = orthanc.replace("http://", "dicomweb://")
    studies = []
    for number in (1, 2):
        files = make_ct_series(tmp_path / f"ct{number}", ct_volume(np.random.default_rng(number), slices=2 + number))
        client.store_instances([pydicom.dcmread(str(f)) for f in files])
        studies.append(pydicom.dcmread(str(files[0]), stop_before_pixels=True))

    def segs(study) -> list:
        found = client.search_for_series(study.StudyInstanceUID, search_filters={"Modality": "SEG"})
        return [client.retrieve_series(study.StudyInstanceUID, item["0020000E"]["Value"][0])[0] for item in found]

    def predict(study, *options):
        return run(
            capsys,
            "predict",
            f"{address}?StudyInstanceUID={study.StudyInstanceUID}",
            *TINY_XRAY,
            "--summary",
            tmp_path / "run",
            *options,
        )

    # study 1: segmented through DICOMweb, the SEG stored back to the server only
    first = studies[0]
    code, stdout, err = predict(first, "--store-to", address)
    assert code == 0 and "1 cases: 1 done" in stdout, err
    (stored,) = segs(first)
    seg = highdicom.seg.Segmentation.from_dataset(stored)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert seg.StudyInstanceUID == first.StudyInstanceUID and seg.PatientID == first.PatientID
    order = collect_cases([str(tmp_path / "ct1")], CaseSettings(modality="xray"))[0].dicom_files
    np.testing.assert_array_equal(seg_pixels(seg, order), expected_mask(tiny, tmp_path / "ct1"))
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "De-LightSAM"
    # again: the run's state remembers the stored result, and the SEG series on the server is not a case
    code, stdout, err = predict(first, "--store-to", address)
    assert code == 0 and "1 cases: 0 done, 1 skipped" in stdout, err
    assert len(segs(first)) == 1

    # study 2: into files first; then --store-to stores the file already written, without segmenting again
    second = studies[1]
    code, stdout, err = predict(second, "--output-dir", tmp_path / "files")
    assert code == 0, err
    written = tmp_path / "files" / second.StudyInstanceUID / f"{second.SeriesInstanceUID}_mask.dcm"
    order = collect_cases([str(tmp_path / "ct2")], CaseSettings(modality="xray"))[0].dicom_files
    np.testing.assert_array_equal(
        seg_pixels(highdicom.seg.segread(str(written)), order), expected_mask(tiny, tmp_path / "ct2")
    )
    assert segs(second) == []
    code, stdout, err = predict(second, "--output-dir", tmp_path / "files", "--store-to", address)
    assert code == 0 and "1 cases: 1 done" in stdout, err
    rows, _ = read_summary(tmp_path / "run")
    assert rows[0]["reason"] == "stored the existing result"
    (stored,) = segs(second)
    assert stored.SOPInstanceUID == pydicom.dcmread(str(written)).SOPInstanceUID

    # without a study: every image series on the server that matches the filters
    cases = collect_cases([f"{address}?Modality=CT"], CaseSettings(modality="xray"), output_dir=tmp_path / "all")
    assert sorted(case.source.series for case in cases) == sorted(s.SeriesInstanceUID for s in studies)


def test_unreachable_dicomweb_server_is_one_line(capsys, tmp_path, tiny):
    from cohort_data import free_port

    code, _, err = run(
        capsys,
        "predict",
        f"dicomweb://127.0.0.1:{free_port()}/dicom-web?StudyInstanceUID=1.2.3",
        "-m",
        "xray",
        "-c",
        "tiny",
        "--output-dir",
        tmp_path / "out",
    )
    assert code == 2 and "cannot reach the DICOMweb server" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- torchrun
def test_torchrun_two_processes_give_the_single_process_outputs(tmp_path, cohort, one_thread):
    save_tiny_checkpoint(tmp_path / "cache")
    script = tmp_path / "delightsam_tiny.py"
    script.write_text(CLI_WITH_TINY)
    env = {**os.environ, "DELIGHTSAM_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    arguments = ["predict", str(cohort), *TINY_XRAY, "--output-dir"]
    single = subprocess.run(
        [sys.executable, str(script), *arguments, str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 1, single.stderr[-2000:]
    sharded = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            *arguments,
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert sharded.returncode != 0 and "20 cases: 19 done, 0 skipped, 1 failed" in sharded.stdout, sharded.stderr[
        -2000:
    ]
    assert sharded.stdout.count("20 cases:") == 1  # rank 0 alone reports and writes the summary
    rows, summary = read_summary(tmp_path / "two" / "delightsam-summary")
    assert summary["processes"] == 2 and {row["rank"] for row in rows} == {"0", "1"}
    one_rows, _ = read_summary(tmp_path / "one" / "delightsam-summary")
    assert [(r["case"], r["status"], r["voxels"]) for r in rows] == [
        (r["case"], r["status"], r["voxels"]) for r in one_rows
    ]
    expected = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*_mask.*"))
    assert sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*_mask.*")) == expected
    for relative in expected:
        np.testing.assert_array_equal(
            result_pixels(tmp_path / "two" / relative), result_pixels(tmp_path / "one" / relative)
        )


def test_torchrun_module_entry_point_with_reference_weights(
    tmp_path, reference_image_path, reference_weights_path, reference_outputs
):
    """`torchrun -m DeLightSAMLib predict` as documented: two ranks, one image each, each mask the reference's."""
    for name in ("first", "second"):
        (tmp_path / f"{name}.png").write_bytes(reference_image_path.read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "DeLightSAMLib",
            "predict",
            str(tmp_path / "first.png"),
            str(tmp_path / "second.png"),
            "-m",
            "dermoscopy",
            "-c",
            str(reference_weights_path),
            "--device",
            "cpu",
            "--output-dir",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows, _ = read_summary(tmp_path / "out" / "delightsam-summary")
    assert sorted(row["rank"] for row in rows) == ["0", "1"]
    logits = reference_outputs["mask_logits_1024_modality0"]
    decided = np.abs(logits) > 1e-4
    for name in ("first", "second"):
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{name}_mask.png"))) == 255
        np.testing.assert_array_equal(mask[decided], (logits >= 0)[decided])


def test_resume_state_keeps_the_records_after_a_line_cut_short(tmp_path):
    from DeLightSAMLib.cohort.cases import Case
    from DeLightSAMLib.cohort.runner import CaseResult, RunState

    cases = [
        Case(
            name=f"c{index}",
            source=tmp_path / f"c{index}.png",
            settings=CaseSettings(modality="xray"),
            output=tmp_path / f"c{index}_mask.png",
        )
        for index in range(3)
    ]
    state = RunState(tmp_path / "state", 0)
    state.record(cases[0], CaseResult(case="c0", status="done", voxels=5), stored=False)
    state.close()
    with open(tmp_path / "state" / "rank-0.jsonl", "a") as handle:
        handle.write('{"key": "cut short by a ki')  # the process was killed mid-write
    state = RunState(tmp_path / "state", 0)
    state.record(cases[1], CaseResult(case="c1", status="done", voxels=7), stored=True)
    state.close()
    again = RunState(tmp_path / "state", 0)
    again.close()
    assert again.get(cases[0])["voxels"] == 5 and again.get(cases[1])["stored"] is True and again.get(cases[2]) is None


def test_a_checkpoint_that_fails_to_load_fails_each_of_its_cases_with_the_reason():
    from DeLightSAMLib.cohort.runner import _Models

    calls = []

    def load(checkpoint):
        calls.append(checkpoint)
        raise RuntimeError("CUDA out of memory")

    models = _Models(load)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="CUDA out of memory"):
            models.get("big.pth")
    assert calls == ["big.pth"]  # loaded once, the reason kept for the next case


@pytest.mark.parametrize(
    "name, is_dicom, suffix",
    [
        ("a.png", False, ".png"),
        ("a.jpg", False, ".png"),
        ("a.nii.gz", False, ".nii.gz"),
        ("a.mha", False, ".mha"),
        ("a.nhdr", False, ".nrrd"),
        ("a.mhd", False, ".nrrd"),
        ("series", True, ".dcm"),
    ],
)
def test_default_result_format_follows_the_input_as_one_file(name, is_dicom, suffix):
    from DeLightSAMLib.cohort.formats import default_suffix

    assert default_suffix(Path(name), is_dicom) == suffix


# ---------------------------------------------------------------------------------------------- issue 21: faults
def write_png(path: Path, seed: int = 0, shape=(30, 36)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(path))
    return path


def tree(folder: Path) -> dict:
    """Every file below ``folder`` with its bytes (the test cache aside)."""
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and "cache" not in p.parts}


@pytest.mark.parametrize(
    "rows, extra, message",
    [
        ("a.png,a.png\n", [], "row 2 ("),  # its own input
        ("a.png,a.png\n", ["--overwrite"], "row 2 ("),
        ("a.png,b.png\nb.png,\n", [], "would overwrite the input of manifest"),  # another row's input
        ("a.png,m.csv\n", [], "would overwrite the manifest"),
        ("a.png,sub\n", [], "would overwrite a folder"),
        ("a.png,tiny.pth\n", ["-c", "{folder}/tiny.pth"], "would overwrite the checkpoint"),
    ],
)
def test_a_result_that_would_land_on_an_input_is_refused_up_front(capsys, tmp_path, tiny, rows, extra, message):
    write_png(tmp_path / "a.png", 1)
    write_png(tmp_path / "b.png", 2)
    (tmp_path / "sub").mkdir()
    save_tiny_checkpoint(tmp_path)
    (tmp_path / "m.csv").write_text("input,output\n" + rows)
    before = tree(tmp_path)
    extra = [value.format(folder=tmp_path) for value in extra]
    code, _, err = run(capsys, "predict", tmp_path / "m.csv", *TINY_XRAY, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert tree(tmp_path) == before  # nothing written, no input replaced


def test_an_input_named_like_another_inputs_result_is_refused(capsys, tmp_path, tiny):
    write_png(tmp_path / "a.png", 1)
    write_png(tmp_path / "a_mask.png", 2)
    before = tree(tmp_path)
    code, _, err = run(capsys, "predict", tmp_path / "a.png", tmp_path / "a_mask.png", *TINY_XRAY, "--overwrite")
    assert code == 2 and "would overwrite the input of" in err and len(err.strip().splitlines()) == 1, err
    assert tree(tmp_path) == before


def test_manifest_results_are_mirrored_under_the_output_folder(capsys, tmp_path, tiny):
    write_png(tmp_path / "data" / "left" / "a.png", 1)
    write_png(tmp_path / "data" / "right" / "a.png", 2)
    (tmp_path / "data" / "m.csv").write_text("input\nleft/a.png\nright/a.png\n")
    code, out, err = run(capsys, "predict", tmp_path / "data" / "m.csv", *TINY_XRAY, "--output-dir", tmp_path / "out")
    assert code == 0, err
    for side in ("left", "right"):
        tiny.set_image(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "data" / side / "a.png"))))
        mask = result_pixels(tmp_path / "out" / side / "a_mask.png")
        np.testing.assert_array_equal(mask, tiny.predict("xray").mask)


def test_an_output_folder_that_is_a_file_is_one_line(capsys, tmp_path, tiny):
    write_png(tmp_path / "a.png", 1)
    write_png(tmp_path / "b.png", 2)
    (tmp_path / "taken").write_text("a file")
    before = tree(tmp_path)
    for folder in (tmp_path / "taken", tmp_path / "taken" / "below"):
        code, _, err = run(
            capsys, "predict", tmp_path / "a.png", tmp_path / "b.png", *TINY_XRAY, "--output-dir", folder
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"--output-dir {folder}" in err, err
        assert "Errno" not in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "content, message",
    [
        ("input,box,slices\nv.nrrd,5 5 20 20,2 1\n", "row 2: slices '2 1' is inverted"),
        ("input,box\nv.nrrd,20 5 5 20\n", "row 2: box '20 5 5 20' is empty or inverted"),
    ],
)
def test_every_manifest_row_is_checked_before_anything_runs(capsys, tmp_path, tinybox, content, message):
    write_volume(tmp_path / "v.nrrd", ct_volume(np.random.default_rng(0), slices=3))
    (tmp_path / "m.csv").write_text(content)
    before = tree(tmp_path)
    code, _, err = run(capsys, "predict", tmp_path / "m.csv", "-c", "tinybox", "--device", "cpu")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert tree(tmp_path) == before


def test_a_missing_checkpoint_stops_a_cohort_once_before_any_case(capsys, tmp_path, one_thread):
    write_png(tmp_path / "a.png", 1)
    write_png(tmp_path / "b.png", 2)
    before = tree(tmp_path)
    for checkpoint, message in (("delightsam", "is not downloaded yet"), (tmp_path / "no.pth", "not found")):
        code, out, err = run(
            capsys, "predict", tmp_path / "a.png", tmp_path / "b.png", "-m", "xray", "-c", checkpoint, "--device", "cpu"
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and not out, err
    assert tree(tmp_path) == before


def one_ct_slice(path: Path, *, frame_of_reference: bool = True, patient: str = "Cohort^Test", z: float = 47.0):
    """One CT slice as one DICOM file (as pydicom-data's ct_head.dcm: optionally without a Frame of Reference)."""
    make_ct_series(path.parent, ct_volume(np.random.default_rng(3), slices=1), names=[path.name])
    dataset = pydicom.dcmread(str(path))
    dataset.ImagePositionPatient = [-100.0, -120.0, z]
    dataset.PatientName = patient
    if not frame_of_reference:
        del dataset.FrameOfReferenceUID
    dataset.save_as(str(path), enforce_file_format=True)
    return path


def test_format_auto_falls_back_to_seg_nrrd_when_dicom_seg_cannot_describe_a_case(capsys, tmp_path, tiny):
    one_ct_slice(tmp_path / "data" / "one" / "head.dcm", frame_of_reference=False)
    one_ct_slice(tmp_path / "data" / "two" / "head.dcm", frame_of_reference=False)
    make_ct_series(tmp_path / "data" / "ct", ct_volume(np.random.default_rng(5), slices=2))
    code, out, err = run(capsys, "predict", tmp_path / "data", *TINY_XRAY, "--output-dir", tmp_path / "out")
    assert code == 0 and "3 cases: 3 done" in out, err
    assert err.count("written as .seg.nrrd") == 1, err  # said once
    for name in ("one", "two"):
        assert not (tmp_path / "out" / name / "head_mask.dcm").exists()
        labels = slicerio.read_segmentation(str(tmp_path / "out" / name / "head_mask.seg.nrrd"))
        assert labels["voxels"].shape[2] == 1 and labels["ijkToLPS"][2, 3] == 47.0  # the slice's place kept
    assert (tmp_path / "out" / "ct_mask.dcm").is_file()  # DICOM SEG wherever it can be made
    rows, _ = read_summary(tmp_path / "out" / "delightsam-summary")
    fell_back = [r for r in rows if r["output"].endswith(".seg.nrrd")]
    assert len(fell_back) == 2 and all("DICOM SEG cannot describe it" in r["reason"] for r in fell_back)
    code, out, _ = run(capsys, "predict", tmp_path / "data", *TINY_XRAY, "--output-dir", tmp_path / "out")
    assert code == 0 and "3 skipped" in out  # the fallback result counts as there


def test_library_warnings_go_to_the_log_not_the_console(capsys, tmp_path, tiny):
    one_ct_slice(tmp_path / "data" / "a.dcm", patient="CQ500-CT-310")
    write_png(tmp_path / "data" / "b.png", 1)
    code, out, err = run(capsys, "predict", tmp_path / "data", *TINY_XRAY, "--output-dir", tmp_path / "out")
    assert code == 0, err
    assert "CQ500" not in err and "Warning" not in err, err
    log = (tmp_path / "out" / "delightsam-summary.state" / "rank-0.log").read_text()
    assert "CQ500-CT-310" in log and "UserWarning" in log


def test_a_single_dicom_slice_keeps_its_place_in_space(capsys, tmp_path, tiny):
    path = one_ct_slice(tmp_path / "head.dcm", z=47.0)
    code, out, err = run(capsys, "predict", path, *TINY_XRAY, "--output", tmp_path / "head_mask.nrrd")
    assert code == 0, err
    mask = sitk.ReadImage(str(tmp_path / "head_mask.nrrd"))
    source = sitk.ReadImage(str(path))
    assert mask.GetDimension() == 3 and mask.GetSize() == source.GetSize() and mask.GetSize()[2] == 1
    assert mask.GetOrigin() == pytest.approx(source.GetOrigin()) and mask.GetOrigin()[2] == 47.0
    assert mask.GetDirection() == pytest.approx(source.GetDirection())
    assert mask.GetSpacing() == pytest.approx(source.GetSpacing())


class _PagingServer:
    """A DICOMweb search that ignores ``offset``: the same two series on every page (empty after 60 requests, so
    that a client that keeps asking ends, and a test can count)."""

    def __init__(self):
        import http.server
        import threading

        self.requests = 0
        series = [
            {"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "0020000E": {"vr": "UI", "Value": [f"1.2.3.{n}"]}}
            for n in (1, 2)
        ]
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.requests += 1
                body = json.dumps(series if owner.requests <= 60 else []).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"dicomweb://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_server_that_ignores_paging_gets_a_bounded_number_of_requests(tmp_path):
    server = _PagingServer()
    try:
        cases = collect_cases([server.url], CaseSettings(modality="xray"), output_dir=tmp_path / "out")
    finally:
        server.close()
    assert sorted(c.name for c in cases) == ["1.2.3/1.2.3.1", "1.2.3/1.2.3.2"]
    assert server.requests <= 3


def test_a_server_that_never_answers_is_given_up_with_one_line(tmp_path):
    import socket
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connections are accepted by the kernel; nothing ever answers
    url = f"dicomweb://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
    env = {**os.environ, "DELIGHTSAM_DICOMWEB_TIMEOUT": "1.5"}
    try:
        start = time.monotonic()
        completed = subprocess.run(
            [sys.executable, "-m", "DeLightSAMLib", "predict", url, "-m", "xray", "--output-dir", tmp_path / "out"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        seconds = time.monotonic() - start
    finally:
        listener.close()
    err = completed.stderr
    assert completed.returncode == 2 and seconds < 30, (seconds, err)
    lines = err.strip().splitlines()
    assert "waiting for the DICOMweb server" in lines[0] and "to search for series" in lines[0], err
    assert lines[-1].startswith("delightsam: error:") and "did not answer within 1.5 s" in lines[-1], err
    assert len(lines) == 2 and not (tmp_path / "out").exists()
