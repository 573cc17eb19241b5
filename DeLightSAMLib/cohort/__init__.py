"""Segmenting a cohort: many images, volumes and DICOM series (on disk or on a DICOMweb server) in one run.

- ``cases``: what to segment — inputs, folders searched recursively (DICOM series grouped by SeriesInstanceUID),
  CSV manifests, DICOMweb studies — and where each result goes.
- ``formats``: label maps (PNG, NIfTI, NRRD, MHA), Slicer ``.seg.nrrd`` (slicerio) and DICOM SEG (highdicom).
- ``dicomweb``: reading series from and storing results to a DICOMweb server (dicomweb-client).
- ``runner``: the run itself — one model load per checkpoint, resumable, a failing case does not stop it,
  a summary; sharded across ``torchrun`` processes.

The standard-format writers and DICOMweb need the ``cohort`` extra (``pip install 'DeLightSAMLib[cohort]'``);
they are imported only when a case needs them.
"""

# --format values and the suffix each gives a result file ("auto", the default, follows the input).
FORMATS: dict[str, str] = {
    "png": ".png",
    "nii.gz": ".nii.gz",
    "nii": ".nii",
    "nrrd": ".nrrd",
    "mha": ".mha",
    "seg.nrrd": ".seg.nrrd",
    "dicom-seg": ".dcm",
}
