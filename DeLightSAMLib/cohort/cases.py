"""What a cohort run segments, and where each result goes.

Inputs are image files, folders (searched recursively), CSV manifests (``*.csv``) and ``dicomweb://`` addresses.
In a folder, PNG/JPEG/TIFF/BMP, NIfTI, NRRD and MHA files are one case each and DICOM files are grouped into series
by SeriesInstanceUID (SimpleITK's GDCM, per folder), one case per series; hidden files, results (``*_mask.*``,
``*.seg.nrrd``), tables and checkpoints are passed over, as are DICOM series that are not images (SEG, SR, ...).

A result goes beside its input (``NAME_mask.SUFFIX``, a DICOM series folder's result beside the folder, as a
single ``delightsam predict`` does) or, with an output folder, under it with the input folder's layout mirrored.
The suffix follows the input (DICOM -> DICOM SEG ``.dcm``, photo -> ``.png``, NIfTI/NRRD/MHA -> the same) unless a
format is chosen.

Manifest: a CSV file with a header; ``input`` is required, ``output``, ``checkpoint`` (or ``model``),
``modality`` (a name, or ``auto``: the one the case's DICOM header names), ``box`` ("X0 Y0 X1 Y1", pixels; LiteMedSAM), ``slices`` ("FIRST LAST": a volume's slices for the box)
and ``format`` are optional per row (empty: the command line's).
Relative paths are relative to the manifest's folder. A row is an input like any other: a folder or DICOMweb
address in a row gives all its cases, with the row's settings.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import SimpleITK as sitk

from ..errors import DeLightSAMError, ImageError
from ..header_modality import is_auto, modality_for_code, modality_from_header
from ..imageio import DICOM_SUFFIXES, PLAIN_IMAGE_SUFFIXES, VOLUME_SUFFIXES, dicom_series, full_suffix
from ..registry import BOX_CHECKPOINT, OFFICIAL_CHECKPOINT, looks_like_path, resolve_modality
from . import FORMATS
from .dicomweb import NOT_IMAGES, DicomwebSeries, is_dicomweb, list_series
from .formats import DICOM_SEG_SUFFIX, default_suffix

# Never inputs: tables, arrays, checkpoints, notes, logs.
SKIPPED_SUFFIXES = (".csv", ".json", ".jsonl", ".npy", ".npz", ".pth", ".pt", ".txt", ".md", ".log", ".py", ".zip")
MANIFEST_COLUMNS = ("input", "output", "checkpoint", "model", "modality", "box", "slices", "format")


class ManifestError(DeLightSAMError):
    """A manifest row that cannot be used (the message names the file and row)."""


class NoCasesError(ImageError):
    """A folder with nothing to segment in it."""


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CaseSettings:
    """What a case is segmented with: from the command line, overridden per manifest row."""

    checkpoint: Optional[str] = None  # None: the model's default (De-LightSAM by modality, LiteMedSAM by box)
    modality: Optional[str] = None  # "auto" until choose_modalities reads the case's header
    modality_from: str = ""  # which header tag chose the modality ("Modality (0008,0060) = CR -> xray"); "": given
    box: Optional[Box] = None
    slices: Optional[tuple[int, int]] = None  # with a box: the volume's slices FIRST..LAST (default: all)
    format: Optional[str] = None  # a FORMATS key; None: follow the input


@dataclass(frozen=True)
class Case:
    """One image, volume or DICOM series to segment.

    source: the file, the series folder, or the DICOMweb series. dicom_files: a series' files in slice order
    (GDCM's), or one DICOM file; empty for other files and for DICOMweb series (fetched when the case runs).
    output: the result file, or None when the result only goes to a DICOMweb server.
    """

    name: str
    source: Union[Path, DicomwebSeries]
    settings: CaseSettings
    output: Optional[Path]
    dicom_files: tuple[Path, ...] = ()
    origin: str = ""  # where the case was named, for messages: "manifest M row N", or "" for the command line
    fallback: Optional[Path] = None  # where the result goes when DICOM SEG, chosen by --format auto, cannot be made

    @property
    def where(self) -> str:
        """The case as a message names it: its manifest row too when it has one."""
        return f"{self.origin} ({self.name})" if self.origin else self.name

    @property
    def is_dicom(self) -> bool:
        return bool(self.dicom_files) or isinstance(self.source, DicomwebSeries)

    def check_prompt(self) -> None:
        """A case is segmented by a modality (De-LightSAM) or a box (LiteMedSAM): refuse one that has neither."""
        if self.settings.modality is None and self.settings.box is None:
            raise DeLightSAMError(f"no modality for {self.where}; give --modality or a manifest modality column")

    @property
    def checkpoint(self) -> str:
        """The checkpoint the case is segmented with."""
        default = BOX_CHECKPOINT if self.settings.box is not None else OFFICIAL_CHECKPOINT
        return self.settings.checkpoint or default

    @property
    def key(self) -> str:
        """Identifies the case across runs (the resume state's key)."""
        return str(self.output) if self.output is not None else f"{self.source}"


def collect_cases(
    inputs: Sequence[str],
    settings: CaseSettings,
    output_dir: Optional[Path] = None,
    store_only: bool = False,
    exclude: Sequence[Path] = (),
) -> list[Case]:
    """Every case the inputs name, in a stable order (inputs as given, folders sorted), each with its output.

    ``store_only``: results of DICOMweb cases without an output folder are only stored (no file). ``exclude``:
    folders never searched (the output folder, the run's state). Raises a DeLightSAMError for a missing input, an
    unusable manifest row, an input that gives no case, or two cases that would write the same file.
    """
    finder = _Finder(output_dir, store_only, [Path(p).resolve() for p in exclude], several_roots=len(inputs) > 1)
    cases: list[Case] = []
    for text in inputs:
        cases += finder.cases_for(str(text), settings, Path.cwd())
    _check_outputs(cases, finder.manifests)
    return choose_modalities(cases)


def choose_modalities(cases: Sequence[Case]) -> list[Case]:
    """The cases, those with modality ``auto`` given the modality their DICOM header names (a DICOMweb series: the
    server's Modality for it). A case with no header, or one naming nothing the model knows, is a DeLightSAMError:
    the run is refused before anything is read or written."""
    chosen = []
    for case in cases:
        if case.settings.box is None and is_auto(case.settings.modality):
            if isinstance(case.source, DicomwebSeries):
                header = modality_for_code(case.source.modality, str(case.source))
            else:
                header = modality_from_header(case.dicom_files or case.source)
            case = replace(case, settings=replace(case.settings, modality=header.modality, modality_from=header.reason))
        chosen.append(case)
    return chosen


def _check_outputs(cases: list[Case], manifests: Sequence[Path]) -> None:
    """Refuse, before anything runs, a result path that lands on an input of the run (any case's file or series
    file, a manifest, a checkpoint file, a folder) or on another case's result."""
    inputs: dict[Path, str] = {}
    for manifest in manifests:
        inputs.setdefault(manifest.resolve(), f"the manifest {manifest}")
    for case in cases:
        if isinstance(case.source, Path):
            inputs.setdefault(case.source.resolve(), f"the input of {case.where}")
        for file in case.dicom_files:
            inputs.setdefault(file.resolve(), f"a DICOM file of {case.where}")
        checkpoint = case.settings.checkpoint
        if checkpoint and Path(checkpoint).expanduser().is_file():
            inputs.setdefault(Path(checkpoint).expanduser().resolve(), f"the checkpoint of {case.where}")
    seen: dict[Path, Case] = {}
    for case in cases:
        for output in (case.output, case.fallback):
            if output is None:
                continue
            resolved = output.resolve()
            if resolved in inputs or output.is_dir():
                what = inputs.get(resolved, "a folder")
                raise DeLightSAMError(
                    f"{case.where}: its result {output} would overwrite {what}; choose another output "
                    "(a manifest's output column or --output-dir)"
                )
            other = seen.setdefault(resolved, case)
            if other is not case:
                raise DeLightSAMError(
                    f"{other.where} and {case.where} would both write {output}; give them different "
                    "outputs (a manifest's output column) or an --output-dir"
                )


def read_manifest(path: Path, settings: CaseSettings) -> list[tuple[int, str, Optional[Path], CaseSettings]]:
    """(row number, input, output or None, settings) per row of a manifest; a bad row is a ManifestError."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ManifestError(f"cannot read the manifest {path} ({error}); give a CSV file with a header row") from error
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if "input" not in columns or unknown:
        raise ManifestError(
            f"manifest {path}: columns {', '.join(columns) or '(none)'}; expected 'input' and any of "
            f"{', '.join(MANIFEST_COLUMNS[1:])}" + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    result = []
    for number, raw in enumerate(rows, start=2):  # row 1 is the header
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        where = f"manifest {path} row {number}"
        if not row.get("input"):
            raise ManifestError(f"{where}: empty input")
        row_settings = settings
        checkpoint = row.get("checkpoint") or row.get("model")
        if checkpoint:
            resolved = Path(checkpoint).expanduser()
            relative = looks_like_path(checkpoint) and not resolved.is_absolute()
            checkpoint = str(path.parent / resolved if relative else resolved)
            row_settings = replace(row_settings, checkpoint=checkpoint)
        if row.get("modality"):
            _check_modality(row["modality"], where)
            row_settings = replace(row_settings, modality=row["modality"], box=None)
        if row.get("box"):
            row_settings = replace(row_settings, box=parse_box(row["box"], where), modality=None)
        if row.get("slices"):
            row_settings = replace(row_settings, slices=parse_slices(row["slices"], where))
        if row.get("format"):
            row_settings = replace(row_settings, format=check_format(row["format"], where))
        output = Path(row["output"]).expanduser() if row.get("output") else None
        if output is not None and not output.is_absolute():
            output = path.parent / output
        result.append((number, row["input"], output, row_settings))
    if not result:
        raise ManifestError(f"manifest {path} has no rows")
    return result


def parse_box(text: str, where: str) -> Box:
    values = [v for v in re.split(r"[\s,;]+", text.strip()) if v]
    try:
        box = tuple(float(v) for v in values)
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise ManifestError(f"{where}: box '{text}' is not four numbers X0 Y0 X1 Y1")
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ManifestError(f"{where}: box '{text}' is empty or inverted; it needs X0 < X1 and Y0 < Y1")
    return box  # type: ignore[return-value]


def parse_slices(text: str, where: str) -> tuple[int, int]:
    values = [v for v in re.split(r"[\s,;]+", text.strip()) if v]
    if len(values) != 2 or not all(v.isdigit() for v in values):
        raise ManifestError(f"{where}: slices '{text}' is not two slice numbers FIRST LAST")
    first, last = int(values[0]), int(values[1])
    if first > last:
        raise ManifestError(f"{where}: slices '{text}' is inverted; FIRST must not exceed LAST")
    return first, last


def check_format(name: str, where: str) -> str:
    if name not in FORMATS:
        raise ManifestError(f"{where}: unknown format '{name}'; use one of {', '.join(FORMATS)}")
    return name


def _check_modality(name: str, where: str) -> None:
    if is_auto(name):
        return  # read from the case's header once its cases are known (choose_modalities)
    try:
        resolve_modality(name)
    except DeLightSAMError as error:
        raise ManifestError(f"{where}: {error}") from None


def is_result_name(path: Path) -> bool:
    """Files a run writes, or that are never inputs: results (``*_mask.*``, ``*.seg.nrrd``), hidden and temporary
    files, tables, arrays and checkpoints."""
    name = path.name
    lowered = name.lower()
    if name.startswith(".") or lowered.endswith(FORMATS["seg.nrrd"]) or lowered.endswith(".part"):
        return True
    stem = name[: len(name) - len(full_suffix(path))]
    return stem.endswith("_mask") or full_suffix(path) in SKIPPED_SUFFIXES


class _Finder:
    def __init__(self, output_dir: Optional[Path], store_only: bool, exclude: list[Path], several_roots: bool) -> None:
        self.output_dir = output_dir
        self.store_only = store_only
        self.exclude = exclude + ([output_dir.resolve()] if output_dir else [])
        self.several_roots = several_roots
        self.manifests: list[Path] = []
        # while a manifest's rows are read: the folder holding all their inputs, mirrored under the output folder
        self.mirror_from: Optional[Path] = None

    def cases_for(
        self,
        text: str,
        settings: CaseSettings,
        base: Path,
        output: Optional[Path] = None,
        origin: str = "",
    ) -> list[Case]:
        if is_dicomweb(text):
            cases = [self._dicomweb_case(series, settings) for series in list_series(text)]
        elif text.lower().endswith(".csv"):
            manifest = _absolute(text, base)
            if not manifest.is_file():
                raise ImageError(f"manifest not found: {manifest}")
            self.manifests.append(manifest)
            rows = read_manifest(manifest, settings)
            # a manifest's results are mirrored as a folder's are: from the folder that holds all its inputs
            local = [_absolute(row_input, manifest.parent).resolve() for _, row_input, _, _ in rows]
            local = [path for path in local if not is_dicomweb(str(path))]
            common = Path(os.path.commonpath([manifest.parent.resolve(), *(p.parent for p in local)]))
            cases = []
            for number, row_input, row_output, row_settings in rows:
                where = f"manifest {manifest} row {number}"
                outer, self.mirror_from = self.mirror_from, common
                try:
                    found = self.cases_for(row_input, row_settings, manifest.parent, row_output, where)
                finally:
                    self.mirror_from = outer
                if row_output is not None and len(found) != 1:
                    raise ManifestError(
                        f"{where}: {row_input} holds {len(found)} cases but "
                        "the row names one output; leave output empty or name one series"
                    )
                cases += found
            return cases
        else:
            path = _absolute(text, base)
            if not path.exists():
                raise ImageError(f"input not found: {origin + ': ' if origin else ''}{path}")
            if path.is_dir():
                cases = self._folder_cases(path, settings)
                if not cases:
                    raise NoCasesError(f"no images, volumes or DICOM series found in {path}")
            else:
                cases = [self._file_case(path, path.parent, self.mirror_from, settings)]
        if output is not None:
            cases = [replace(case, output=output, fallback=None) for case in cases]
        if origin:
            cases = [replace(case, origin=origin) for case in cases]
        return cases

    # ----------------------------------------------------------------------------------- files and folders
    def _output(
        self,
        source: Path,
        folder: Path,
        root: Optional[Path],
        settings: CaseSettings,
        dicom: Sequence[Path],
        stem: Optional[str] = None,
    ) -> Path:
        """``folder`` holds ``source``; ``root`` is the searched folder whose layout is mirrored under the output
        folder (None for an input given by name: its result goes straight into the output folder)."""
        suffix = FORMATS[settings.format] if settings.format else default_suffix(source, bool(dicom))
        if stem is None:
            stem = source.name[: len(source.name) - len(full_suffix(source))] if source.is_file() else source.name
        if self.output_dir is None:
            return folder / f"{stem}_mask{suffix}"
        if root is None:
            return self.output_dir / f"{stem}_mask{suffix}"
        if self.mirror_from is not None:  # a manifest's row: its place below the folder holding all rows' inputs
            return self.output_dir / folder.resolve().relative_to(self.mirror_from) / f"{stem}_mask{suffix}"
        mirrored = self.output_dir / (root.name if self.several_roots else "") / folder.relative_to(root)
        return mirrored / f"{stem}_mask{suffix}"

    def _fallback(self, output: Path, settings: CaseSettings, dicom: Sequence[Path]) -> Optional[Path]:
        """With --format auto, a DICOM case's result is a DICOM SEG; where that cannot be made, this .seg.nrrd."""
        if settings.format or not dicom:
            return None
        return output.with_name(output.name[: -len(DICOM_SEG_SUFFIX)] + FORMATS["seg.nrrd"])

    def _folder_cases(self, root: Path, settings: CaseSettings) -> list[Case]:
        cases = []
        for folder, subfolders, files in os.walk(root):
            here = Path(folder)
            subfolders[:] = sorted(
                d for d in subfolders if not d.startswith(".") and (here / d).resolve() not in self.exclude
            )
            candidates = sorted(here / name for name in files if not is_result_name(here / name))
            in_series: set[Path] = set()
            if any(full_suffix(p) not in PLAIN_IMAGE_SUFFIXES + VOLUME_SUFFIXES for p in candidates):
                found = _dicom_series(here)
                several = sum(len(files_of_series) > 1 for files_of_series in found) > 1
                for files_of_series in found:
                    in_series.update(files_of_series)
                    if len(files_of_series) == 1:  # one image (a radiograph): named after its file
                        cases.append(self._file_case(files_of_series[0], here, root, settings))
                    else:  # named after its folder and written beside it, as a single predict does
                        cases.append(self._series_case(here, root, files_of_series, settings, several))
            for path in candidates:
                suffix = full_suffix(path)
                # a .dcm in no series is unreadable: it becomes a case that fails and says so
                if path not in in_series and suffix in PLAIN_IMAGE_SUFFIXES + VOLUME_SUFFIXES + DICOM_SUFFIXES[1:]:
                    cases.append(self._file_case(path, here, root, settings))
        return sorted(cases, key=lambda c: c.name)

    def _file_case(self, path: Path, folder: Path, root: Optional[Path], settings: CaseSettings) -> Case:
        dicom = (path,) if path.suffix.lower() in DICOM_SUFFIXES else ()
        output = self._output(path, folder, root, settings, dicom)
        return Case(str(path), path, settings, output, dicom, fallback=self._fallback(output, settings, dicom))

    def _series_case(self, folder: Path, root: Path, files: list[Path], settings: CaseSettings, several: bool) -> Case:
        parent_root = root if folder != root else folder.parent
        name, stem = str(folder), folder.name
        if several:  # series sharing a folder are told apart by their number
            label = _series_label(files[0])
            name, stem = f"{folder} [series {label}]", f"{folder.name}_{label}"
        output = self._output(folder, folder.parent, parent_root, settings, files, stem)
        return Case(name, folder, settings, output, tuple(files), fallback=self._fallback(output, settings, files))

    def _dicomweb_case(self, series: DicomwebSeries, settings: CaseSettings) -> Case:
        if self.output_dir is None and not self.store_only:
            raise DeLightSAMError("DICOMweb input needs --output-dir DIR (files) or --store-to URL (back to a server)")
        automatic = not settings.format
        settings = settings if settings.format else replace(settings, format="dicom-seg")
        output = fallback = None
        if self.output_dir is not None:
            output = self.output_dir / series.study / f"{series.series}_mask{FORMATS[settings.format]}"
            fallback = output.with_name(f"{series.series}_mask{FORMATS['seg.nrrd']}") if automatic else None
        return Case(f"{series.study}/{series.series}", series, settings, output, fallback=fallback)


def _absolute(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _dicom_series(folder: Path) -> list[list[Path]]:
    """The image series in ``folder`` (not its subfolders), each as its files in slice order."""
    series = []
    for files in dicom_series(folder):
        files = [f for f in files if not is_result_name(f)]
        if files and _dicom_tag(files[0], "0008|0060").upper() not in NOT_IMAGES:
            series.append(files)
    return series


def _dicom_tag(path: Path, tag: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _series_label(path: Path) -> str:
    number = _dicom_tag(path, "0020|0011")
    return f"S{number}" if number else _dicom_tag(path, "0020|000e")[-12:]
