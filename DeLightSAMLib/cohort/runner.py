"""Running a cohort: each model loaded once, one case after another, resumable, a failing case never stops the run.

- A case whose result file exists is skipped (``overwrite`` redoes it): results are written to a temporary name
  and renamed, so a file that is there is complete. Each finished case is also appended to the run's state
  (``STATE/rank-R.jsonl``), which is what says a result that went only to a DICOMweb server is done.
- A case that fails (unreadable file, a checkpoint that does not fit, a server that refuses) gets status
  ``failed`` and the one-line reason; the run goes on.
- Cases are grouped by checkpoint, so each model is loaded once and only one is in memory; the next case is read
  (or fetched from the server) on a second thread while the network runs. Volume slices go through
  ``Predictor.predict_batch`` as in a single run.
- Under ``torchrun``, each process runs its shard (``distributed.shard``) and all results are gathered at the end.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import DeLightSAMError, first_line
from ..imageio import LoadedImage, dicom_series, read_dicom_series, read_image, write_files
from ..registry import modality_name, resolve_modality
from ..segmentation import by_boxes, by_modality, check_boxes, check_model, volume_window
from ..transforms import Window
from . import dicomweb
from .cases import Case
from .distributed import ProcessGroup, shard
from .extras import require
from .formats import (
    SLICER_SUFFIX,
    Result,
    SegmentationUnsupportedError,
    box_segments,
    dicom_segmentation,
    output_kind,
    provenance_for,
    segment_for,
    write_output,
)

logger = logging.getLogger(__name__)

STATUSES = ("done", "skipped", "failed")
# modality and modality_from come last: readers of the earlier columns by position keep working
SUMMARY_COLUMNS = (
    "case",
    "status",
    "seconds",
    "voxels",
    "total_voxels",
    "reason",
    "input",
    "output",
    "rank",
    "modality",
    "modality_from",
)


@dataclass
class RunOptions:
    """How every case is segmented and where results go besides their files."""

    threshold: float = 0.5
    axis: int = 2  # image axis i=0, j=1, k=2 that volumes are sliced along
    window: Optional[Window] = None
    batch_size: Optional[int] = None
    overwrite: bool = False
    store_to: Optional[str] = None  # DICOMweb service that DICOM SEG results are stored to
    state_dir: Optional[Path] = None  # where finished cases are recorded; None: not recorded


@dataclass
class CaseResult:
    case: str
    status: str  # one of STATUSES
    seconds: float = 0.0
    voxels: Optional[int] = None  # voxels (pixels) in the mask
    total_voxels: Optional[int] = None
    reason: str = ""
    input: str = ""
    output: str = ""
    rank: int = 0
    modality: str = ""  # De-LightSAM's modality for the case ("" for a box)
    modality_from: str = ""  # the header tag that chose it (modality auto), e.g. "Modality (0008,0060) = CR -> xray"


@dataclass
class CohortResult:
    results: list[CaseResult]  # every rank's, in case order
    seconds: float  # wall time of the run
    world: int = 1
    rank: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {status: sum(r.status == status for r in self.results) for status in STATUSES}

    @property
    def cases_per_minute(self) -> float:
        """Cases segmented (not skipped) per minute of wall time."""
        return self.counts["done"] / (self.seconds / 60) if self.seconds > 0 else 0.0


# progress(cases finished by this process, fractional within the current case; a case's result when it ends)
Progress = Callable[[float, Optional[CaseResult]], None]
# load_predictor(checkpoint or None for the default) -> a Predictor
LoadPredictor = Callable[[Optional[str]], object]


def run_cohort(
    cases: list[Case], options: RunOptions, load_predictor: LoadPredictor, progress: Optional[Progress] = None
) -> CohortResult:
    """Segment ``cases`` (this process's shard of them under torchrun); every rank gets every result."""
    start = time.perf_counter()
    with ProcessGroup() as group:
        mine = shard(list(enumerate(cases)), group.rank, group.world)
        runner = _Runner(options, load_predictor, progress or (lambda done, result: None), group.rank)
        own = runner.run(mine)
        gathered = [item for part in group.gather(own) for item in part]
    gathered.sort(key=lambda item: item[0])
    return CohortResult([result for _, result in gathered], time.perf_counter() - start, group.world, group.rank)


def write_summary(result: CohortResult, stem: Path) -> tuple[Path, Path]:
    """``STEM.csv`` (one row per case) and ``STEM.json`` (the rows, counts, wall time and cases per minute)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in result.results]
    csv_path, json_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")

    def write_csv(temporary: Path) -> None:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS)
            writer.writeheader()
            writer.writerows({**row, "seconds": f"{row['seconds']:.3f}"} for row in rows)

    summary = {
        "cases": len(rows),
        **result.counts,
        "seconds": round(result.seconds, 3),
        "cases_per_minute": round(result.cases_per_minute, 3),
        "processes": result.world,
        "results": rows,
    }
    write_files(
        [
            (csv_path, write_csv),
            (json_path, lambda temporary: temporary.write_text(json.dumps(summary, indent=1) + "\n")),
        ]
    )
    return csv_path, json_path


# ---------------------------------------------------------------------------------------------- state
class RunState:
    """Finished cases, one JSON line each in ``folder/rank-R.jsonl`` (every rank's file is read back, so a rerun
    with another number of processes still finds them)."""

    def __init__(self, folder: Optional[Path], rank: int) -> None:
        self.folder = folder
        self.records: dict[str, dict] = {}
        self._file = None
        if folder is None:
            return
        own = folder / f"rank-{rank}.jsonl"
        cut_short = False
        for path in sorted(folder.glob("rank-*.jsonl")):
            text = path.read_text(errors="replace")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                self.records[record["key"]] = record
            if path == own:
                cut_short = bool(text) and not text.endswith("\n")
        folder.mkdir(parents=True, exist_ok=True)
        self._file = open(own, "a")
        if cut_short:  # end the partial record's line, so that the next record gets a line of its own
            self._file.write("\n")

    def get(self, case: Case) -> Optional[dict]:
        return self.records.get(case.key)

    def record(self, case: Case, result: CaseResult, stored: bool) -> None:
        record = {
            "key": case.key,
            "case": case.name,
            "stored": stored,
            "voxels": result.voxels,
            "total_voxels": result.total_voxels,
            "seconds": round(result.seconds, 3),
            "time": time.time(),
        }
        self.records[case.key] = record
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class CaseImage:
    loaded: LoadedImage  # its dicom_files: the series' files in slice order, for DICOM SEG
    scratch: Optional[tempfile.TemporaryDirectory] = None  # a fetched DICOMweb series

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()


def load_case(case: Case) -> CaseImage:
    """Read a case's pixels (fetching a DICOMweb series into a temporary folder first)."""
    if isinstance(case.source, dicomweb.DicomwebSeries):
        scratch = tempfile.TemporaryDirectory(prefix="delightsam-dicomweb-")
        try:
            files = _gdcm_order(dicomweb.retrieve(case.source, Path(scratch.name)))
            return CaseImage(read_dicom_series(files, Path(scratch.name)), scratch)
        except BaseException:
            scratch.cleanup()
            raise
    if len(case.dicom_files) > 1:
        return CaseImage(read_dicom_series(case.dicom_files, case.source))
    return CaseImage(read_image(case.source))


def _gdcm_order(files: list[Path]) -> list[Path]:
    """Files of one series in GDCM's slice order, as a series on disk is read."""
    series = dicom_series(files[0].parent)
    if len(series) != 1:
        raise DeLightSAMError(f"the server returned {len(series)} series where one was asked for")
    return series[0]


# ---------------------------------------------------------------------------------------------- running
class _Models:
    """One predictor in memory at a time; a checkpoint that fails to load fails each of its cases with the reason."""

    def __init__(self, load: LoadPredictor) -> None:
        self.load = load
        self.key: object = object()
        self.predictor = None
        self.error: Optional[Exception] = None

    def get(self, checkpoint: Optional[str]):
        if checkpoint != self.key:
            self.key, self.predictor, self.error = checkpoint, None, None
            try:
                self.predictor = self.load(checkpoint)
            except Exception as error:  # also out of memory or a failed export: every case of it gets the reason
                self.error = error
        if self.error is not None:
            raise self.error
        return self.predictor


class _Runner:
    def __init__(self, options: RunOptions, load_predictor: LoadPredictor, progress: Progress, rank: int) -> None:
        self.options = options
        self.models = _Models(load_predictor)
        self.progress = progress
        self.rank = rank
        self.finished = 0
        self.fell_back = 0  # cases written as .seg.nrrd because DICOM SEG could not describe them

    def run(self, mine: list[tuple[int, Case]]) -> list[tuple[int, CaseResult]]:
        state = RunState(self.options.state_dir, self.rank)
        results: list[tuple[int, CaseResult]] = []
        todo = []
        try:
            for index, case in mine:
                skipped = self._skipped(case, state)
                if skipped is None:
                    todo.append((index, case))
                else:
                    results.append((index, skipped))
                    self._finished(skipped)
            # grouped by checkpoint (stable): each model is loaded once
            todo.sort(key=lambda item: item[1].checkpoint)
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="delightsam-read") as reader:
                upcoming = reader.submit(load_case, todo[0][1]) if todo else None
                for number, (index, case) in enumerate(todo):
                    current = upcoming
                    if number + 1 < len(todo):
                        upcoming = reader.submit(load_case, todo[number + 1][1])
                    result = self._run_case(case, current, state)
                    results.append((index, result))
                    self._finished(result)
        finally:
            state.close()
        return results

    def _finished(self, result: CaseResult) -> None:
        self.finished += 1
        self.progress(self.finished, result)

    def _result(self, case: Case, status: str, **fields) -> CaseResult:
        return CaseResult(
            case=case.name,
            status=status,
            input=str(case.source),
            output=str(case.output) if case.output is not None else "",
            rank=self.rank,
            modality=case.settings.modality or "",
            modality_from=case.settings.modality_from,
            **fields,
        )

    def _stores(self, case: Case) -> bool:
        """Whether the case's result goes to the DICOMweb server too (DICOM cases, with --store-to)."""
        return bool(self.options.store_to) and case.is_dicom

    def _skipped(self, case: Case, state: RunState) -> Optional[CaseResult]:
        """A result for a case that is already done, or None when it has to run."""
        if self.options.overwrite:
            return None
        record = state.get(case) or {}
        exists = case.output is not None and (
            case.output.is_file() or (case.fallback is not None and case.fallback.is_file())
        )
        if case.output is not None and not exists:
            return None
        if self._stores(case) and not record.get("stored"):
            if exists and case.output.is_file() and output_kind(case.output) == "dicom-seg":
                return self._store_existing(case, state)
            return None
        return self._result(
            case,
            "skipped",
            voxels=record.get("voxels"),
            total_voxels=record.get("total_voxels"),
            reason="result already there (--overwrite to redo)",
        )

    def _store_existing(self, case: Case, state: RunState) -> CaseResult:
        """The result file was written but not stored (the run stopped in between): store it, do not recompute."""
        start = time.perf_counter()
        try:
            dicomweb.store(self.options.store_to, require("pydicom", "--store-to").dcmread(str(case.output)))
        except Exception as error:  # noqa: BLE001 - as in _run_case
            return self._failed(case, start, error)
        result = self._result(case, "done", seconds=time.perf_counter() - start, reason="stored the existing result")
        state.record(case, result, stored=True)
        return result

    def _failed(self, case: Case, start: float, error: BaseException) -> CaseResult:
        if isinstance(error, DeLightSAMError):
            reason = str(error)
        else:  # not a user mistake: the traceback goes to the debug log, one line to the summary
            logger.debug("case %s", case.name, exc_info=error)
            reason = f"{type(error).__name__}: {first_line(error) if str(error).strip() else ''}"
        logger.warning("%s failed: %s", case.name, reason)
        return self._result(case, "failed", seconds=time.perf_counter() - start, reason=reason)

    def _run_case(self, case: Case, loading: Future, state: RunState) -> CaseResult:
        start = time.perf_counter()
        image = None
        written, note = case.output, ""
        try:
            image = loading.result()
            predictor = self.models.get(case.checkpoint)
            labelled = self._segment(predictor, image.loaded, case)
            dataset = None
            if case.output is not None:
                case.output.parent.mkdir(parents=True, exist_ok=True)
                _remove_temporaries(case.output)
                try:
                    dataset = write_output(labelled, case.output, image.loaded, image.loaded.dicom_files)
                except SegmentationUnsupportedError as error:
                    if case.fallback is None:  # DICOM SEG was asked for: the case fails with the reason
                        raise
                    written, note = case.fallback, self._fall_back(case, error)
                    _remove_temporaries(written)
                    write_output(labelled, written, image.loaded)
            if self._stores(case):
                if dataset is None:
                    dataset = dicom_segmentation(labelled, image.loaded.dicom_files, image.loaded.source)
                dicomweb.store(self.options.store_to, dataset)
        except Exception as error:  # noqa: BLE001 - one case's failure, whatever it is, must not stop the run
            return self._failed(case, start, error)
        finally:
            if image is not None:
                image.close()
        result = self._result(
            case,
            "done",
            seconds=time.perf_counter() - start,
            voxels=int(np.count_nonzero(labelled.labels)),
            total_voxels=int(labelled.labels.size),
            reason=note,
        )
        result.output = str(written) if written is not None else ""
        state.record(case, result, stored=self._stores(case))
        return result

    def _fall_back(self, case: Case, error: Exception) -> str:
        """--format auto chose DICOM SEG, which cannot describe this case: say so (once a run) and why."""
        note = f"written as {SLICER_SUFFIX}: DICOM SEG cannot describe it ({error})"
        if not self.fell_back:
            logger.warning("%s: %s; further such cases are written the same way (see the summary)", case.where, note)
        self.fell_back += 1
        return note

    def _segment(self, predictor, loaded: LoadedImage, case: Case):
        """A case's labels, by modality (De-LightSAM) or by box (LiteMedSAM)."""
        settings, options = case.settings, self.options
        boxes = np.asarray([settings.box], dtype=np.float64) if settings.box is not None else None
        check_model(predictor, boxes, case.checkpoint)
        window = volume_window(loaded, options.window)

        def slices_done(done: int, total: Optional[int]) -> None:
            if total:
                self.progress(self.finished + done / total, None)

        common = dict(axis=options.axis, threshold=options.threshold, window=window, progress=slices_done)
        if boxes is not None:
            slice_range = check_boxes(boxes, loaded, options.axis, settings.slices)
            result = by_boxes(predictor, loaded, boxes, slice_range, **common)
            return Result(
                result.labels, box_segments(1), provenance_for(settings.checkpoint, options.threshold, boxes=boxes)
            )
        case.check_prompt()
        modality_map = predictor.modality_map
        name = modality_name(resolve_modality(settings.modality, modality_map), modality_map)
        result = by_modality(predictor, loaded, settings.modality, batch_size=options.batch_size, **common)
        provenance = provenance_for(settings.checkpoint, options.threshold, modality=name)
        return Result(result.labels, [segment_for(name)], provenance)


def _remove_temporaries(target: Path) -> None:
    """Temporary files of ``target`` left by a run that was killed while writing it (``atomic_file``'s names)."""
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.part*"):
        stale.unlink(missing_ok=True)


def check_packages(cases: list[Case], options: RunOptions) -> None:
    """Fail before anything runs when an output or input of the run needs a package that is not installed."""
    from .formats import packages_for

    needed: dict[str, str] = {}
    for case in cases:
        if case.output is not None:
            needed.update(packages_for(output_kind(case.output)))
        if isinstance(case.source, dicomweb.DicomwebSeries):
            needed.update(packages_for("dicom-web"))
        if options.store_to and case.is_dicom:
            needed.update(packages_for("dicom-web") + packages_for("dicom-seg"))
    for module, purpose in needed.items():
        require(module, purpose)
