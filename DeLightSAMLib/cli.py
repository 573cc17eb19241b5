"""The ``delightsam`` command: predict, download, info (and train, distill, evaluate: ``training/cli.py``).
Thin over the predictor and the checkpoint module.

User mistakes end in one line on stderr (``delightsam: error: ...``) and exit status 2; no output file is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import __version__
from .cohort import command as cohort_command
from .engines import AUTO, ENGINES
from .errors import DeLightSAMError
from .registry import BOX_CHECKPOINT, CHECKPOINTS, MODALITIES, OFFICIAL_CHECKPOINT, resolve_modality
from .training.cli import add_commands as add_training_commands

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, like every other mistake: ``delightsam: error: ...``, exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"delightsam: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="delightsam", description="De-LightSAM medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser(
        "predict",
        help="segment a 2D image or a 3D volume: by modality (De-LightSAM) or by box (LiteMedSAM)",
        description="Give --modality NAME for De-LightSAM's prompt-free segmentation, or --box X0 Y0 X1 Y1 (repeatable) "
        "for LiteMedSAM's segmentation of the structure in each box.",
    )
    predict.add_argument(
        "input",
        nargs="+",
        help="image file (PNG/JPEG/TIFF/BMP, NIfTI, NRRD, MHA, DICOM) or DICOM folder; several inputs, "
        "a folder of them, a CSV manifest or a dicomweb:// address segment a cohort",
    )
    predict.add_argument(
        "--modality", "-m", default=None, help=f"De-LightSAM: one of {', '.join(MODALITIES)}, or an index"
    )
    predict.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X0", "Y0", "X1", "Y1"),
        help="LiteMedSAM: a box around the structure, in the image's (or slice's) pixels, x along "
        "columns and y along rows; repeat for several structures (box i gets label i)",
    )
    predict.add_argument(
        "--checkpoint",
        "-c",
        default=None,
        help=f"registry name or .pth path (default: {OFFICIAL_CHECKPOINT} with --modality, "
        f"{BOX_CHECKPOINT} with --box)",
    )
    predict.add_argument(
        "--output",
        "-o",
        default=None,
        help="mask file (default: INPUT_mask.png for 2D, same format for 3D); several boxes: labels 1..N",
    )
    predict.add_argument(
        "--logits",
        default=None,
        help="also save float32 logits at the input's size to this .npy file "
        "(several boxes: one map per box, first axis)",
    )
    predict.add_argument(
        "--overlay", default=None, help="also write a PNG of the image with the mask (and boxes) drawn on it"
    )
    predict.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    predict.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default auto)")
    predict.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    predict.add_argument(
        "--axis",
        type=int,
        default=2,
        choices=[0, 1, 2],
        help="for volumes: image axis i=0, j=1, k=2 to slice along (default 2, the last)",
    )
    predict.add_argument(
        "--slices",
        type=int,
        nargs=2,
        metavar=("FIRST", "LAST"),
        default=None,
        help="for volumes with --box: segment only slices FIRST..LAST (inclusive) along --axis",
    )
    predict.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("CENTER", "WIDTH"),
        default=None,
        help="intensity window for non-8-bit data (default: 0.5-99.5 percentile range)",
    )
    predict.add_argument(
        "--batch-size", type=int, default=None, help="slices per network pass for volumes (default: 1 on CPU, 8 on GPU)"
    )
    predict.add_argument(
        "--engine",
        default=AUTO,
        choices=[AUTO, *ENGINES],
        help="image-encoder inference path (default auto: the fastest measured for the device; for "
        "LiteMedSAM on a CPU, eager, for parity with the released pipeline): "
        + "; ".join(f"{engine.name}: {engine.summary}" for engine in ENGINES.values()),
    )
    cohort_command.add_arguments(predict)
    predict.set_defaults(handler=run_predict)

    download = commands.add_parser("download", help="download a checkpoint into the cache (or --to DIR)")
    download.add_argument(
        "--checkpoint",
        "-c",
        default=OFFICIAL_CHECKPOINT,
        help=f"registry name ({', '.join(CHECKPOINTS)}), URL, gdrive:ID or path",
    )
    download.add_argument("--to", default=None, help="destination folder (default: the cache folder)")
    download.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="URL|PATH",
        help="for a registry checkpoint: take the file from here instead (still SHA-256 verified)",
    )
    download.set_defaults(handler=run_download)

    info = commands.add_parser("info", help="show checkpoints, cache folder, device and modality map")
    info.set_defaults(handler=run_info)

    add_training_commands(commands)  # train, distill, evaluate
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="delightsam: %(message)s")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed on one line
        return done.code if isinstance(done.code, int) else EXIT_USER_ERROR
    try:
        return args.handler(args) or 0
    except DeLightSAMError as error:
        print(f"delightsam: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("delightsam: interrupted; no output written", file=sys.stderr)
        return 130


def default_output(loaded) -> Path:
    """INPUT_mask.png for 2D input; for a volume the input's format when a mask can be written in it (a single
    file), else NRRD (DICOM, detached headers, Analyze)."""
    from .imageio import VOLUME_MASK_SUFFIXES, full_suffix

    source = loaded.source
    if loaded.is_2d:
        stem = source.name[: len(source.name) - len(full_suffix(source))] if not source.is_dir() else source.name
        return source.parent / f"{stem}_mask.png"
    if loaded.is_dicom:
        return source.parent / f"{source.name if source.is_dir() else source.stem}_mask.nrrd"
    suffix = full_suffix(source)
    stem = source.name[: len(source.name) - len(suffix)]
    return source.parent / f"{stem}_mask{suffix if suffix in VOLUME_MASK_SUFFIXES else '.nrrd'}"


def run_predict(args: argparse.Namespace) -> int:
    """Check every argument and output path, then load the model, segment, and write all outputs at once."""
    from .imageio import read_image
    from .intensity import check_window
    from .predictor import load_predictor
    from .segmentation import check_boxes, check_model, volume_window

    if not 0.0 < args.threshold < 1.0:
        raise DeLightSAMError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DeLightSAMError(f"--batch-size must be at least 1, got {args.batch_size}")
    window = check_window(args.window) if args.window else None
    cases = cohort_command.cohort_cases(args)
    if cases is not None:
        return cohort_command.run(args, cases)
    (args.input,) = args.input
    boxes = np.asarray(args.box, dtype=np.float64) if args.box else None
    if (args.modality is None) == (boxes is None):
        raise DeLightSAMError(
            ("--modality and --box cannot be combined" if boxes is not None else "nothing to segment by")
            + ": give --modality NAME (De-LightSAM, the whole image, no prompt) or --box X0 Y0 X1 Y1 "
            "(LiteMedSAM, the structure inside the box)"
        )
    if boxes is None:
        resolve_modality(args.modality)  # fail on a typo before loading anything
        if args.slices is not None:
            raise DeLightSAMError("--slices goes with --box; with --modality every slice of a volume is segmented")
    elif len(boxes) > 255:
        raise DeLightSAMError(f"at most 255 boxes at once (labels are 8-bit), got {len(boxes)}")
    loaded = read_image(args.input)
    outputs = _check_outputs(args, loaded)
    window = volume_window(loaded, window)
    slice_range = check_boxes(boxes, loaded, args.axis, args.slices) if boxes is not None else None

    checkpoint = args.checkpoint or (BOX_CHECKPOINT if boxes is not None else OFFICIAL_CHECKPOINT)
    predictor = load_predictor(checkpoint, device=args.device, dtype=args.dtype, engine=args.engine)
    check_model(predictor, boxes, checkpoint)
    segmentation = _segment(predictor, loaded, boxes, slice_range, args, window)
    _write_outputs(outputs, segmentation, loaded, args, window)
    print(f"{outputs['output']}  ({segmentation.summary()})")
    return 0


def _check_outputs(args, loaded) -> dict:
    """Every output path checked before any work: {"output": Path, "logits": Path|None, "overlay": Path|None}."""
    from .imageio import MASK_SUFFIXES, VOLUME_MASK_SUFFIXES, check_output_path

    taken = [loaded.source]
    mask_suffixes = (*MASK_SUFFIXES, *VOLUME_MASK_SUFFIXES) if loaded.is_2d else VOLUME_MASK_SUFFIXES
    if loaded.is_dicom:
        mask_suffixes += (".dcm",)  # DICOM SEG
    output = cohort_command.single_output(args, loaded, default_output(loaded))
    output = check_output_path(output, mask_suffixes, "--output", taken)
    taken.append(output)
    logits = check_output_path(args.logits, (".npy",), "--logits", taken) if args.logits else None
    if logits is not None:
        taken.append(logits)
    overlay = check_output_path(args.overlay, (".png",), "--overlay", taken) if args.overlay else None
    return {"output": output, "logits": logits, "overlay": overlay}


def _segment(predictor, loaded, boxes, slice_range, args, window):
    """The segmentation by modality or by boxes, with a progress bar over a volume's slices."""
    from tqdm import tqdm

    from .segmentation import by_boxes, by_modality

    options = dict(axis=args.axis, threshold=args.threshold, window=window, return_logits=bool(args.logits))
    if loaded.is_2d:
        total = None
    else:
        first, last = slice_range or (0, loaded.array.shape[2 - args.axis] - 1)
        total = last - first + 1
    with tqdm(
        total=total, unit="slice", desc="delightsam", file=sys.stderr, disable=True if loaded.is_2d else None
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        if boxes is None:
            return by_modality(
                predictor, loaded, args.modality, batch_size=args.batch_size, progress=progress, **options
            )
        return by_boxes(predictor, loaded, boxes, slice_range, progress=progress, **options)


def _write_outputs(outputs: dict, segmentation, loaded, args, window) -> None:
    """Mask, logits and overlay written together: all of them or, on any failure, none."""
    from .imageio import array_writer, rgb_writer, write_files

    files = [(outputs["output"], cohort_command.single_writer(segmentation, outputs["output"], loaded, args))]
    if outputs["logits"] is not None:
        files.append((outputs["logits"], array_writer(segmentation.logits.astype(np.float32))))
    if outputs["overlay"] is not None:
        files.append((outputs["overlay"], rgb_writer(_overlay_picture(segmentation, loaded, args, window))))
    write_files(files)


def _overlay_picture(segmentation, loaded, args, window) -> np.ndarray:
    """The 8-bit image the model saw with the result drawn on it; for a volume, the segmented slice with the
    most labelled pixels (the middle of the range when all are empty)."""
    from .intensity import to_rgb8
    from .overlay import render_overlay

    if loaded.is_2d:
        image, labels = loaded.array, segmentation.labels
    else:
        numpy_axis = 2 - args.axis
        first, last = segmentation.slice_range or (0, loaded.array.shape[numpy_axis] - 1)
        per_slice = np.moveaxis(segmentation.labels, numpy_axis, 0)
        counts = [np.count_nonzero(per_slice[index]) for index in range(first, last + 1)]
        index = first + int(np.argmax(counts)) if max(counts) > 0 else (first + last) // 2
        image, labels = np.take(loaded.array, index, axis=numpy_axis), per_slice[index]
    return render_overlay(to_rgb8(image, window), labels, segmentation.boxes)


def run_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .checkpoint import download_checkpoint

    if args.source and args.checkpoint not in CHECKPOINTS:
        raise DeLightSAMError(f"--from needs a registry checkpoint name ({', '.join(CHECKPOINTS)}) as --checkpoint")
    origins: list[str] = []
    start = time.perf_counter()
    # A live bar on a terminal (cleared when the download fails, so that the error stays one line); where stderr is
    # not a terminal (a log), the line after the download says how much came from where. stdout: the path alone.
    bar = tqdm(
        unit="B", unit_scale=True, unit_divisor=1024, desc="download", file=sys.stderr, disable=not _is_terminal()
    )

    def progress(done: int, total: Optional[int]) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        path = download_checkpoint(
            args.checkpoint,
            args.to,
            progress=progress,
            urls=[args.source] if args.source else None,
            on_origin=origins.append,
        )
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    print(
        f"delightsam: {path.name}: {path.stat().st_size / 1e6:.1f} MB in {seconds:.1f} s from {origins[-1]}",
        file=sys.stderr,
    )
    print(path)
    return 0


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def run_info(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import cache_dir, checkpoint_origin
    from .device import select_device
    from .registry import modality_name

    print(f"DeLightSAMLib {__version__}, torch {torch.__version__}")
    print(f"cache folder: {cache_dir()}")
    print(f"device (auto): {select_device('auto')}")
    for entry in CHECKPOINTS.values():
        path, origin = checkpoint_origin(entry.name)
        state = f"{path}, {path.stat().st_size / 1e6:.1f} MB, {origin}" if path is not None else origin
        print(f"checkpoint {entry.name}: {entry.description} [{state}]")
        print(f"  file {entry.filename}; sha256 {entry.sha256 or 'not published'}; sources {', '.join(entry.urls)}")
        for index in sorted(entry.modality_map.values()):
            print(f"  modality {index}: {modality_name(index, entry.modality_map)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
