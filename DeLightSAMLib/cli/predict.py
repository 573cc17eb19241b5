"""``delightsam predict``: its options, and the run of one input (an image, a volume, a DICOM file or series folder).

Every argument and output path is checked before the model is loaded; the outputs (mask, logits, overlay) are
written together or not at all. Several inputs, folders, manifests and DICOMweb addresses go to ``cohort``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..cohort import FORMATS
from ..engines import AUTO, ENGINES
from ..errors import DeLightSAMError
from ..header_modality import is_auto, known_codes, modality_from_header
from ..registry import AUTO_MODALITY, BOX_CHECKPOINT, MODALITIES, OFFICIAL_CHECKPOINT, modality_name, resolve_modality
from . import cohort


def add_parser(commands) -> None:
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
        "--modality",
        "-m",
        default=None,
        help=f"De-LightSAM: one of {', '.join(MODALITIES)}, or an index; or {AUTO_MODALITY}: the one a DICOM "
        f"image's Modality (0008,0060) names ({known_codes()})",
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
    cohort.add_arguments(predict)
    predict.set_defaults(handler=run_predict)


def default_output(loaded) -> Path:
    """INPUT_mask.png for 2D input; for a volume the input's format when a mask can be written in it (a single
    file), else NRRD (DICOM, detached headers, Analyze)."""
    from ..imageio import VOLUME_MASK_SUFFIXES, full_suffix

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
    from ..imageio import read_image
    from ..intensity import check_window
    from ..predictor import load_predictor
    from ..segmentation import check_boxes, check_model, volume_window

    if not 0.0 < args.threshold < 1.0:
        raise DeLightSAMError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DeLightSAMError(f"--batch-size must be at least 1, got {args.batch_size}")
    window = check_window(args.window) if args.window else None
    cases = cohort.cohort_cases(args)
    if cases is not None:
        return cohort.run(args, cases)
    (args.input,) = args.input
    boxes = np.asarray(args.box, dtype=np.float64) if args.box else None
    if (args.modality is None) == (boxes is None):
        raise DeLightSAMError(
            ("--modality and --box cannot be combined" if boxes is not None else "nothing to segment by")
            + ": give --modality NAME (De-LightSAM, the whole image, no prompt) or --box X0 Y0 X1 Y1 "
            "(LiteMedSAM, the structure inside the box)"
        )
    if boxes is None:
        if not is_auto(args.modality):
            resolve_modality(args.modality)  # fail on a typo before loading anything
        if args.slices is not None:
            raise DeLightSAMError("--slices goes with --box; with --modality every slice of a volume is segmented")
    elif len(boxes) > 255:
        raise DeLightSAMError(f"at most 255 boxes at once (labels are 8-bit), got {len(boxes)}")
    chosen = None
    source = Path(args.input).expanduser()
    if boxes is None and is_auto(args.modality) and source.exists():  # (a missing input: read_image says so)
        chosen = modality_from_header(source)  # before the pixels are read; a folder: read_image's series
        args.modality = chosen.modality
    loaded = read_image(args.input)
    outputs = _check_outputs(args, loaded)
    window = volume_window(loaded, window)
    slice_range = check_boxes(boxes, loaded, args.axis, args.slices) if boxes is not None else None

    checkpoint = args.checkpoint or (BOX_CHECKPOINT if boxes is not None else OFFICIAL_CHECKPOINT)
    predictor = load_predictor(checkpoint, device=args.device, dtype=args.dtype, engine=args.engine)
    check_model(predictor, boxes, checkpoint)
    segmentation = _segment(predictor, loaded, boxes, slice_range, args, window)
    _write_outputs(outputs, segmentation, loaded, args, window)
    print(f"{outputs['output']}  ({segmentation.summary()}{f'; {chosen.reason}' if chosen else ''})")
    return 0


def _check_outputs(args, loaded) -> dict:
    """Every output path checked before any work: {"output": Path, "logits": Path|None, "overlay": Path|None}."""
    from ..imageio import MASK_SUFFIXES, VOLUME_MASK_SUFFIXES, check_output_path

    taken = [loaded.source]
    mask_suffixes = (*MASK_SUFFIXES, *VOLUME_MASK_SUFFIXES) if loaded.is_2d else VOLUME_MASK_SUFFIXES
    if loaded.is_dicom:
        mask_suffixes += (".dcm",)  # DICOM SEG
    output = single_output(args, loaded, default_output(loaded))
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

    from ..segmentation import by_boxes, by_modality

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
    from ..imageio import array_writer, rgb_writer, write_files

    files = [(outputs["output"], single_writer(segmentation, outputs["output"], loaded, args))]
    if outputs["logits"] is not None:
        files.append((outputs["logits"], array_writer(segmentation.logits.astype(np.float32))))
    if outputs["overlay"] is not None:
        files.append((outputs["overlay"], rgb_writer(_overlay_picture(segmentation, loaded, args, window))))
    write_files(files)


def _overlay_picture(segmentation, loaded, args, window) -> np.ndarray:
    """The 8-bit image the model saw with the result drawn on it; for a volume, the segmented slice with the
    most labelled pixels (the middle of the range when all are empty)."""
    from ..intensity import to_rgb8
    from ..overlay import render_overlay

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


def single_output(args: argparse.Namespace, loaded, default: Path) -> Path:
    """The result file of a single-input run: --output, else the default name with --format's suffix; refused
    before the network runs when the format does not fit the input or needs a missing package."""
    from ..cohort.extras import require
    from ..cohort.formats import check_dicom_input, output_kind, packages_for
    from ..imageio import full_suffix

    if args.output:
        output = Path(args.output)
    elif args.format == "auto":
        output = default
    else:
        output = default.with_name(default.name[: len(default.name) - len(full_suffix(default))] + FORMATS[args.format])
    check_dicom_input(output, loaded.is_dicom, loaded.source)
    for module, purpose in packages_for(output_kind(output)):
        require(module, purpose)
    return output


def single_writer(segmentation, output: Path, loaded, args: argparse.Namespace):
    """How a single-input run writes its labels: a label map as always, or a Slicer segmentation or DICOM SEG."""
    from ..cohort.formats import Result, box_segments, output_kind, provenance_for, result_writer, segment_for

    if segmentation.boxes is not None:
        segments = box_segments(len(segmentation.boxes))
        provenance = provenance_for(args.checkpoint, args.threshold, boxes=segmentation.boxes)
    else:
        name = modality_name(resolve_modality(args.modality))
        segments = [segment_for(name)]
        provenance = provenance_for(args.checkpoint, args.threshold, modality=name)
    dicom_files = loaded.dicom_files if output_kind(output) == "dicom-seg" else ()
    return result_writer(Result(segmentation.labels, segments, provenance), output, loaded, dicom_files)[0]
