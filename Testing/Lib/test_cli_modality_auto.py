"""`delightsam predict --modality auto` and manifests' ``auto``: the modality from each input's own DICOM header, on
real headers (pydicom-data) and tag-changed copies; one-line refusals that write nothing."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from cohort_data import TINY, save_tiny_checkpoint
from header_samples import CR, CT, US, with_modality
from DeLightSAMLib.cli import main
from DeLightSAMLib.cohort.cases import Case, CaseSettings, choose_modalities
from DeLightSAMLib.cohort.dicomweb import DicomwebSeries
from DeLightSAMLib.errors import HeaderModalityError
from DeLightSAMLib.imageio import read_image
from DeLightSAMLib.predictor import Predictor
from DeLightSAMLib.registry import CHECKPOINTS


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, message):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("delightsam: error: ") and message in lines[0], err
    assert "Traceback" not in err


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network was set up before the header was checked")

    monkeypatch.setattr(Predictor, "from_checkpoint", refuse)


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    """Checkpoint 'tiny' (a TINY_CONFIG model) in the test's cache; returns its predictor."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setitem(CHECKPOINTS, "tiny", TINY)
    path = save_tiny_checkpoint(tmp_path / "cache")
    yield Predictor.from_checkpoint(str(path), config=TINY.config, device="cpu")
    torch.set_num_threads(threads)


def test_auto_on_a_computed_radiograph_segments_it_as_xray(capsys, monkeypatch, tmp_path, reference_weights_path):
    import DeLightSAMLib.segmentation as segmentation

    asked = []
    real = segmentation.by_modality

    def recording(predictor, loaded, modality, **kwargs):
        asked.append(modality)
        return real(predictor, loaded, modality, **kwargs)

    monkeypatch.setattr(segmentation, "by_modality", recording)
    output = tmp_path / "cr_mask.png"
    code, out, err = run(
        capsys, "predict", CR, "--modality", "auto", "-c", reference_weights_path, "--device", "cpu", "-o", output
    )
    assert code == 0, err
    assert asked == ["xray"]
    assert out.strip().startswith(f"{output}  (") and out.strip().endswith("; Modality (0008,0060) = CR -> xray)")
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))
    assert mask.shape == (1955, 1841) and set(np.unique(mask)) <= {0, 255}
    assert [p.name for p in tmp_path.iterdir()] == ["cr_mask.png"]


@pytest.mark.parametrize(
    "name, message",
    [
        ("ct", "693_UNCR.dcm: Modality (0008,0060) is CT, which De-LightSAM was not trained on; it knows xray (CR,"),
        ("png", "image.png has no DICOM header; auto reads the modality from a DICOM image's header: choose one of"),
        ("no-modality", "none.dcm: its DICOM header has no Modality (0008,0060)"),
    ],
)
def test_auto_refuses_in_one_line_before_the_network(
    capsys, tmp_path, no_network, reference_image_path, reference_weights_path, name, message
):
    work = tmp_path / "work"
    work.mkdir()
    source = {
        "ct": CT,
        "png": shutil.copy(reference_image_path, work / "image.png"),
        "no-modality": with_modality(work, None),
    }[name]
    before = sorted(p.name for p in work.iterdir())
    code, out, err = run(
        capsys, "predict", source, "-m", "auto", "-c", reference_weights_path, "-o", work / "mask.nrrd"
    )
    one_line_error(code, err, message)
    assert out == "" and sorted(p.name for p in work.iterdir()) == before


def test_manifest_auto_rows_take_each_file_s_modality_into_the_summary(capsys, tmp_path, tiny):
    data = tmp_path / "data"
    data.mkdir()
    fundus = with_modality(data, "OP", "eye.dcm")
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 256, (30, 36), dtype=np.uint8)),
        str(data / "lesion.png"),
    )
    manifest = data / "cohort.csv"
    manifest.write_text(
        f"input,output,modality\neye.dcm,eye_mask.png,auto\n{US},us_mask.png,Auto\nlesion.png,,dermoscopy\n"
        f"{CT},ct_mask.png,xray\n"  # a row's own modality: the header is not read
    )
    code, out, err = run(capsys, "predict", manifest, "-c", "tiny", "--device", "cpu", "--summary", tmp_path / "run")
    assert code == 0 and "4 cases: 4 done" in out, err
    with open(tmp_path / "run.csv", newline="") as handle:
        rows = {row["case"].split("/")[-1]: row for row in csv.DictReader(handle)}
    assert {name: (row["modality"], row["modality_from"]) for name, row in rows.items()} == {
        "eye.dcm": ("fundus", "Modality (0008,0060) = OP -> fundus"),
        "US1_UNCR.dcm": ("ultrasound", "Modality (0008,0060) = US -> ultrasound"),
        "lesion.png": ("dermoscopy", ""),
        "693_UNCR.dcm": ("xray", ""),
    }
    for source, result, modality in ((fundus, "eye_mask.png", "fundus"), (US, "us_mask.png", "ultrasound")):
        tiny.set_image(read_image(source).array)
        expected = tiny.predict(modality).mask
        assert 0.02 < expected.mean() < 0.98  # not constant: the equality below says something
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(data / result))) > 0, expected)


def test_a_cohort_with_one_unknown_header_is_refused_before_anything_is_written(capsys, tmp_path, tiny, no_network):
    data = tmp_path / "data"
    data.mkdir()
    with_modality(data, "XC", "skin.dcm")
    shutil.copy(CT, data / "ct.dcm")
    code, out, err = run(capsys, "predict", data, "-m", "auto", "-c", "tiny", "--output-dir", tmp_path / "out")
    one_line_error(code, err, "ct.dcm: Modality (0008,0060) is CT, which De-LightSAM was not trained on")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("delightsam-summary*"))
    assert sorted(p.name for p in data.iterdir()) == ["ct.dcm", "skin.dcm"]


def test_dicomweb_series_take_the_modality_the_server_gave():
    def case(modality):
        series = DicomwebSeries("http://server/dicom-web", "1.2", "1.2.3", modality)
        return Case("1.2/1.2.3", series, CaseSettings(modality="auto"), None)

    (chosen,) = choose_modalities([case("US")])
    assert (chosen.settings.modality, chosen.settings.modality_from) == (
        "ultrasound",
        "Modality (0008,0060) = US -> ultrasound",
    )
    with pytest.raises(HeaderModalityError, match="series 1.2.3: Modality .0008,0060. is MR, which De-LightSAM"):
        choose_modalities([case("MR")])
    boxed = Case("x", CR, CaseSettings(modality="auto", box=(1, 2, 3, 4)), None, (CR,))
    assert choose_modalities([boxed]) == [boxed]  # a box case has no modality to choose


def test_auto_on_a_series_folder_reads_the_series_it_segments(capsys, monkeypatch, tmp_path, tiny):
    from cohort_data import ct_volume, make_ct_series

    series = tmp_path / "clip"
    for path in make_ct_series(series, ct_volume(np.random.default_rng(5), 2)):
        dataset = pydicom.dcmread(path)
        dataset.Modality = "US"
        dataset.save_as(path)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "predict", "clip", "-m", "auto", "-c", "tiny", "--device", "cpu")
    assert code == 0, err
    assert out.startswith("clip_mask.nrrd  (") and out.strip().endswith("; Modality (0008,0060) = US -> ultrasound)")
    code, out, err = run(capsys, "predict", "gone.dcm", "-m", "auto", "-c", "tiny")
    one_line_error(code, err, "input not found")
