"""``delightsam predict`` over a cohort: several inputs, folders, manifests, DICOMweb (the CLI's glue to the runner).

A single image, volume or DICOM series folder keeps the single-input behaviour of ``predict.run_predict``; this module
decides when a command is a cohort run and runs it: one progress bar, per-case failures logged and summarised,
exit status 1 when any case failed (2, having written nothing, for a mistake in the command itself).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..cohort import FORMATS
from ..errors import DeLightSAMError
from ..registry import resolve_modality
from .exits import EXIT_CASES_FAILED, EXIT_INTERRUPTED

if TYPE_CHECKING:
    from ..cohort.cases import Case, CaseSettings

DEFAULT_SUMMARY = "delightsam-summary"


def add_arguments(predict: argparse.ArgumentParser) -> None:
    """The predict options that only matter for cohorts (and ``--format``, which both kinds of run take)."""
    group = predict.add_argument_group(
        "cohorts", "several inputs, a folder (searched recursively), a CSV manifest or a dicomweb:// address"
    )
    group.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="write results under DIR, mirroring the input folders (default: beside each input)",
    )
    group.add_argument(
        "--format",
        default="auto",
        choices=["auto", *FORMATS],
        help="result format (default auto: DICOM SEG for DICOM input in a cohort, PNG for photos, "
        "the input's format for NIfTI/NRRD/MHA)",
    )
    group.add_argument("--overwrite", action="store_true", help="redo cases whose result is already there")
    group.add_argument(
        "--summary",
        default=None,
        metavar="PATH",
        help=f"write PATH.csv and PATH.json (default: DIR/{DEFAULT_SUMMARY}, or ./{DEFAULT_SUMMARY})",
    )
    group.add_argument(
        "--store-to",
        default=None,
        metavar="URL",
        help="also store DICOM SEG results of DICOM cases to this DICOMweb service "
        "(dicomweb://HOST:PORT/PATH or http(s)://...)",
    )


def cohort_cases(args: argparse.Namespace) -> Optional[list[Case]]:
    """The cases when the command is a cohort run; None when it is a single input for the single-input path."""
    from ..cohort.cases import NoCasesError, collect_cases
    from ..cohort.dicomweb import is_dicomweb

    inputs = list(args.input)
    # --overwrite alone makes a cohort run (the default result next to the input, a summary); with --output the single
    # input path replaces that one file anyway.
    cohort_options = args.output_dir or args.summary or args.store_to or (args.overwrite and not args.output)
    single = (
        len(inputs) == 1
        and not cohort_options
        and not inputs[0].lower().endswith(".csv")
        and not is_dicomweb(inputs[0])
    )
    if single and not Path(inputs[0]).expanduser().is_dir():
        return None
    for option, folder in (("--output-dir", _output_dir(args)), ("--summary", _summary(args).parent)):
        _check_folder(folder, option)
    try:
        cases = collect_cases(
            inputs, _settings(args), _output_dir(args), store_only=bool(args.store_to), exclude=[_state_dir(args)]
        )
    except NoCasesError:
        if single:
            return None  # the single-input path says what it always said about such a folder
        raise
    folder = Path(inputs[0]).expanduser().resolve()
    if (
        single
        and len(cases) == 1
        and cases[0].dicom_files
        and all(path.parent.resolve() == folder for path in cases[0].dicom_files)
    ):
        return None  # one DICOM series folder: as before
    return cases


def _check_folder(folder: Optional[Path], option: str) -> None:
    """A folder the run will create or write into: refused when it, or a folder above it, is a file."""
    if folder is None:
        return
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                what = "is a file" if place == folder else f"is below the file {place}"
                raise DeLightSAMError(f"{option} {folder} {what}; give a folder (it is created when missing)")
            return


def _check_checkpoints(cases: list[Case]) -> None:
    """Every checkpoint the cases need is there (a file, or a registry checkpoint downloaded): else one line, before
    any case runs, as for a single input."""
    from ..checkpoint import resolve_checkpoint

    for checkpoint in sorted({case.checkpoint for case in cases}):
        resolve_checkpoint(checkpoint)


@contextlib.contextmanager
def _warnings_to(log: Path):
    """Python warnings of the libraries a run uses (highdicom's about patient names, ...) go to ``log``, not the
    console."""
    log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    warnings_logger = logging.getLogger("py.warnings")
    propagate = warnings_logger.propagate
    warnings_logger.addHandler(handler)
    warnings_logger.propagate = False
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        warnings_logger.removeHandler(handler)
        warnings_logger.propagate = propagate
        handler.close()


def run(args: argparse.Namespace, cases: list[Case]) -> int:
    """Run the cohort (this process's shard under torchrun); rank 0 prints the outcome and writes the summary."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..cohort.distributed import local_device, rank_and_world
    from ..cohort.runner import RunOptions, check_packages, run_cohort, write_summary
    from ..predictor import load_predictor

    _check(args, cases)
    options = RunOptions(
        threshold=args.threshold,
        axis=args.axis,
        window=tuple(args.window) if args.window else None,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        store_to=args.store_to,
        state_dir=_state_dir(args),
    )
    check_packages(cases, options)
    _check_checkpoints(cases)
    device = local_device(args.device)

    def load(checkpoint: str):
        return load_predictor(checkpoint, device=device, dtype=args.dtype, engine=args.engine)

    rank, world = rank_and_world()
    own = len(range(rank, len(cases), world))
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} cases [{elapsed}<{remaining}{postfix}]"
    with (
        tqdm(
            total=own, desc="delightsam", bar_format=bar_format, file=sys.stderr, disable=None if rank == 0 else True
        ) as bar,
        logging_redirect_tqdm(),
        _warnings_to(_state_dir(args) / f"rank-{rank}.log"),
    ):
        failed = 0

        def progress(done: float, result) -> None:
            nonlocal failed
            bar.update(done - bar.n)
            if result is not None and result.status == "failed":
                failed += 1
                bar.set_postfix_str(f"{failed} failed", refresh=False)

        try:
            result = run_cohort(cases, options, load, progress)
        except KeyboardInterrupt:
            bar.close()
            print(
                f"delightsam: interrupted after {int(bar.n)} of {own} cases; finished results are kept, run the "
                "same command again to resume",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
    if rank == 0:
        csv_path, json_path = write_summary(result, _summary(args))
        counts = result.counts
        print(
            f"{len(result.results)} cases: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} "
            f"failed in {result.seconds:.1f} s ({result.cases_per_minute:.1f} cases/min, {world} process"
            f"{'es' if world > 1 else ''}); summary {csv_path}, {json_path}"
        )
    return EXIT_CASES_FAILED if result.counts["failed"] else 0


def _settings(args: argparse.Namespace) -> CaseSettings:
    from ..cohort.cases import CaseSettings

    box = tuple(args.box[0]) if args.box and len(args.box) == 1 else None
    slices = tuple(args.slices) if args.slices else None
    return CaseSettings(
        checkpoint=args.checkpoint,
        modality=args.modality,
        box=box,
        slices=slices,
        format=None if args.format == "auto" else args.format,
    )


def _output_dir(args: argparse.Namespace) -> Optional[Path]:
    return Path(args.output_dir).expanduser() if args.output_dir else None


def _summary(args: argparse.Namespace) -> Path:
    if args.summary:
        path = Path(args.summary).expanduser()
        return path.with_suffix("") if path.suffix.lower() in (".csv", ".json") else path
    return (_output_dir(args) or Path(".")) / DEFAULT_SUMMARY


def _state_dir(args: argparse.Namespace) -> Path:
    summary = _summary(args)
    return summary.with_name(summary.name + ".state")


def _check(args: argparse.Namespace, cases: list[Case]) -> None:
    """Mistakes in a cohort command, found before anything is read or written."""
    if args.output:
        raise DeLightSAMError(f"--output names one file but the command has {len(cases)} cases; use --output-dir DIR")
    for option, name in ((args.logits, "--logits"), (args.overlay, "--overlay")):
        if option:
            raise DeLightSAMError(f"{name} works with one input; run a single input to get that file")
    if args.box and len(args.box) > 1:
        raise DeLightSAMError(
            "several --box go with one input; for a cohort give one --box, or a box per row of a manifest"
        )
    if args.modality is not None and args.box:
        raise DeLightSAMError("--modality and --box cannot be combined: give one of them (or per manifest row)")
    if args.slices and args.slices[0] > args.slices[1]:
        raise DeLightSAMError(f"--slices {args.slices[0]} {args.slices[1]} is inverted; FIRST must not exceed LAST")
    if args.box:
        from ..cohort.cases import parse_box

        parse_box(" ".join(str(value) for value in args.box[0]), "--box")
    if args.store_to:
        from ..cohort.dicomweb import service_url

        service_url(args.store_to)
    from ..cohort.formats import check_dicom_input

    for case in cases:
        if case.output is not None:
            check_dicom_input(case.output, case.is_dicom, case.where)
        case.check_prompt()
        if case.settings.modality is not None:
            resolve_modality(case.settings.modality)
    logging.getLogger(__name__).info("%d cases", len(cases))
