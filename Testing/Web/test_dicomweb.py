"""``delightsam serve dicomweb://...`` against a real Orthanc on 127.0.0.1: the series is fetched as the command line
fetches it, segmented in the browser, and Save's "store to DICOMweb" stores a DICOM SEG of it back to that server."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from conftest import REPO, WebServer, expect_status, free_port, wait_for_view

sys.path.insert(0, str(REPO / "Testing" / "Lib"))
from cohort_data import ct_volume, make_ct_series, start_orthanc, stop_orthanc  # noqa: E402


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    process, url = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield url
    stop_orthanc(process)


@pytest.fixture(scope="module")
def stored_series(orthanc, tmp_path_factory):
    """A 3-slice CT series (64 x 80) on the Orthanc; its files' headers, slice k at z = 10 + 2.5 k."""
    import pydicom
    from dicomweb_client import DICOMwebClient

    files = make_ct_series(tmp_path_factory.mktemp("ct"), ct_volume(np.random.default_rng(3), 3, 64, 80))
    DICOMwebClient(orthanc).store_instances([pydicom.dcmread(str(path)) for path in files])
    return [pydicom.dcmread(str(path), stop_before_pixels=True) for path in files]


def test_a_dicomweb_series_is_segmented_and_stored_back_as_dicom_seg(
    browser, orthanc, stored_series, tmp_path, reference_weights_path
):
    import highdicom
    import pydicom
    from dicomweb_client import DICOMwebClient

    study, series = stored_series[0].StudyInstanceUID, stored_series[0].SeriesInstanceUID
    address = orthanc.replace("http://", "dicomweb://") + f"?StudyInstanceUID={study}&SeriesInstanceUID={series}"
    server = WebServer(
        [address, "--checkpoint", reference_weights_path, "--device", "cpu", "--port", free_port()]
        + ["--torch-threads", "1"],
        tmp_path / "server.log",
    )
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    try:
        page = context.new_page()
        page.goto(server.url)
        wait_for_view(page)
        expect_status(page, rf"loaded series {re.escape(series)} \(3 x 64 x 80\)")
        save_format = page.locator('[data-testid="save-format"]')
        assert save_format.input_value() == "dicomweb"  # a DICOMweb image goes back where it came from by default
        assert save_format.evaluate("s => s.options[s.selectedIndex].text") == "store to DICOMweb"
        page.locator('[data-testid="modality"]').select_option("xray")  # CT: no modality the model knows
        page.locator('[data-testid="apply"]').click()
        text = expect_status(page, r"voxels added", timeout=120)
        added = int(re.search(r"(\d+) voxels added", text).group(1))
        slice_index = int(re.search(r"K = (\d+)", text).group(1))
        assert added > 0

        page.locator('[data-testid="save"]').click()
        text = expect_status(page, r"stored a DICOM SEG|not saved", timeout=60)
        match = re.fullmatch(rf"stored a DICOM SEG to {re.escape(orthanc)}: study (\S+), series (\S+)", text)
        assert match and match.group(1) == study, text
        page.screenshot(path=str(REPO / "docs" / "web_dicomweb.jpg"), type="jpeg", quality=70)

        client = DICOMwebClient(orthanc)
        found = client.search_for_series(study, search_filters={"Modality": "SEG"})
        assert [item["0020000E"]["Value"][0] for item in found] == [match.group(2)]
        stored = highdicom.seg.Segmentation.from_dataset(client.retrieve_series(study, match.group(2))[0])
        assert stored.ReferencedSeriesSequence[0].SeriesInstanceUID == series
        assert stored.PatientID == stored_series[0].PatientID

        # the same writer as a download: the stored SEG's frames are the downloaded DICOM SEG's
        save_format.select_option("dicom-seg")
        with page.expect_download() as download_info:
            page.locator('[data-testid="save"]').click()
        assert download_info.value.suggested_filename == f"{series}_segmentation.dcm"
        downloaded = pydicom.dcmread(download_info.value.path())
        np.testing.assert_array_equal(stored.pixel_array, downloaded.pixel_array)
        assert np.count_nonzero(stored.pixel_array) == added  # one slice: its frame holds every voxel added
        # the segmented frame is the slice the view showed (K), referenced by its own SOP instance
        frames = [index for index, frame in enumerate(stored.pixel_array) if frame.any()]
        assert len(frames) == 1
        source = stored.PerFrameFunctionalGroupsSequence[frames[0]].DerivationImageSequence[0].SourceImageSequence[0]
        (shown,) = [header for header in stored_series if header.ImagePositionPatient[2] == 10.0 + 2.5 * slice_index]
        assert source.ReferencedSOPInstanceUID == shown.SOPInstanceUID
    finally:
        context.close()
        server.stop()


def test_an_unreachable_dicomweb_server_is_one_line_in_the_status(browser, tmp_path):
    address = f"dicomweb://127.0.0.1:{free_port()}/dicom-web?StudyInstanceUID=1.2.3"
    server = WebServer([address, "--port", free_port(), "--torch-threads", "1"], tmp_path / "server.log")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(server.url)
        text = expect_status(page, r"DICOMweb")
        assert re.fullmatch(
            r"cannot reach the DICOMweb server http://127\.0\.0\.1:\d+/dicom-web to search for "
            r"series \(\w+\); check the address and that the server is running",
            text,
        ), text
        assert page.locator('[data-testid="status"].text-error').count() == 1
        assert page.locator('[data-testid="apply"]').is_disabled()  # nothing loaded
    finally:
        context.close()
        server.stop()
