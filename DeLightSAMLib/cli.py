"""The ``delightsam`` command: predict, download, info. Thin over the predictor and the checkpoint module.

User mistakes end in one line on stderr (``delightsam: error: ...``) and exit status 2; no output file is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import __version__
from .errors import DeLightSAMError
from .config import ENGINES
from .registry import CHECKPOINTS, MODALITIES, OFFICIAL_CHECKPOINT, resolve_modality

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="delightsam", description="De-LightSAM medical image segmentation.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="segment a 2D image or a 3D volume slice by slice")
    predict.add_argument("input", help="image file (PNG/JPEG/TIFF/BMP, NIfTI, NRRD, MHA, DICOM) or DICOM folder")
    predict.add_argument("--modality", "-m", required=True, help=f"one of {', '.join(MODALITIES)}, or an index")
    predict.add_argument("--checkpoint", "-c", default=None, help="registry name or .pth path (default: the official one)")
    predict.add_argument("--output", "-o", default=None, help="mask file (default: INPUT_mask.png for 2D, same format for 3D)")
    predict.add_argument("--logits", default=None, help="also save float32 logits at the input's size to this .npy file")
    predict.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    predict.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default auto)")
    predict.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    predict.add_argument("--axis", type=int, default=2, choices=[0, 1, 2],
                         help="for volumes: image axis i=0, j=1, k=2 to slice along (default 2, the last)")
    predict.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"), default=None,
                         help="intensity window for non-8-bit data (default: 0.5-99.5 percentile range)")
    predict.add_argument("--batch-size", type=int, default=None, help="slices per network pass for volumes (default: 1 on CPU, 8 on GPU)")
    predict.add_argument("--engine", default="auto", choices=["auto", *ENGINES],
                         help="inference path (default auto: 'fast' on CPU, 'fused' on GPU)")
    predict.set_defaults(handler=run_predict)

    download = commands.add_parser("download", help="download a checkpoint into the cache (or --to DIR)")
    download.add_argument("--checkpoint", "-c", default=OFFICIAL_CHECKPOINT,
                          help=f"registry name ({', '.join(CHECKPOINTS)}), URL, gdrive:ID or path")
    download.add_argument("--to", default=None, help="destination folder (default: the cache folder)")
    download.set_defaults(handler=run_download)

    info = commands.add_parser("info", help="show checkpoints, cache folder, device and modality map")
    info.set_defaults(handler=run_info)

    for name, help_text in (("train", "fine-tune on your own data"), ("distill", "distil a teacher encoder into the adapters"),
                            ("evaluate", "Dice, IoU, HD95, precision, recall on a dataset split")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--data", required=True, help="dataset folder: image_1024/ + mask_1024/, or images/ + labels/")
        sub.add_argument("--split-file", default=None, help="JSON with train/valid/test lists")
        sub.add_argument("--checkpoint", "-c", default=None, help="starting weights (registry name or .pth)")
        sub.add_argument("--out", default=f"runs/{name}", help="output folder (checkpoints, log, metrics)")
        sub.add_argument("--device", default="auto")
        sub.add_argument("--axis", type=int, default=2, choices=[0, 1, 2], help="slicing axis for volume datasets")
        sub.add_argument("--label", type=int, default=None, help="label value for volume datasets (default: any)")
        if name != "distill":
            sub.add_argument("--modality", "-m", required=True, help=f"one of {', '.join(MODALITIES)}, or an index")
        if name == "evaluate":
            sub.add_argument("--split", default="test")
            sub.add_argument("--threshold", type=float, default=0.5)
            sub.add_argument("--overlays", action="store_true", help="write overlay PNGs")
        else:
            sub.add_argument("--epochs", type=int, default=20)
            sub.add_argument("--batch-size", type=int, default=4)
            sub.add_argument("--lr", type=float, default=1e-4)
            sub.add_argument("--workers", type=int, default=2)
        if name == "train":
            sub.add_argument("--trainable", default="adapters,queries,prompt,decoder",
                             help="comma-separated: adapters, queries, prompt, decoder, encoder")
            sub.add_argument("--resume", action="store_true", help="continue from OUT/last.pth")
        if name == "distill":
            sub.add_argument("--teacher", required=True, help="mobilesam, sam_vit_b, sam_vit_l or sam_vit_h")
            sub.add_argument("--teacher-checkpoint", required=True, help="the teacher's published checkpoint")
        sub.set_defaults(handler=run_training)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="delightsam: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args) or 0
    except DeLightSAMError as error:
        print(f"delightsam: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("delightsam: interrupted; no output written", file=sys.stderr)
        return 130


def default_output(loaded) -> Path:
    from .imageio import full_suffix

    source = loaded.source
    if loaded.is_2d:
        stem = source.name[: len(source.name) - len(full_suffix(source))] if not source.is_dir() else source.name
        return source.parent / f"{stem}_mask.png"
    if loaded.is_dicom:
        return source.parent / f"{source.name if source.is_dir() else source.stem}_mask.nrrd"
    suffix = full_suffix(source)
    return source.parent / f"{source.name[: len(source.name) - len(suffix)]}_mask{suffix}"


def run_predict(args: argparse.Namespace) -> int:
    from .imageio import read_image, write_array, write_mask
    from .predictor import Predictor

    if not 0.0 < args.threshold < 1.0:
        raise DeLightSAMError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DeLightSAMError(f"--batch-size must be at least 1, got {args.batch_size}")
    resolve_modality(args.modality)  # fail on a typo before loading anything
    loaded = read_image(args.input)
    output = Path(args.output) if args.output else default_output(loaded)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, dtype=args.dtype, engine=args.engine)
    window = tuple(args.window) if args.window else None

    if loaded.is_2d:
        predictor.set_image(loaded.array, window)
        prediction = predictor.predict(args.modality, threshold=args.threshold, return_logits=bool(args.logits))
        mask, logits = prediction.mask, prediction.logits
    else:
        mask, logits = _predict_volume(predictor, loaded.array, args, window)
    if args.logits:
        write_array(logits.astype(np.float32), args.logits)
    write_mask(mask, output, reference=loaded)
    print(f"{output}  ({int(mask.sum())} of {mask.size} pixels in the mask)")
    return 0


def _predict_volume(predictor, volume: np.ndarray, args, window):
    from tqdm import tqdm

    from .intensity import robust_window

    numpy_axis = 2 - args.axis  # image axes (i, j, k) are numpy axes (2, 1, 0)
    if window is None and volume.dtype != np.uint8:
        window = robust_window(volume)  # one window for the whole volume, not one per slice
    slices = [np.take(volume, index, axis=numpy_axis) for index in range(volume.shape[numpy_axis])]
    with tqdm(total=len(slices), unit="slice", desc="delightsam", file=sys.stderr, disable=None) as bar:
        results = predictor.predict_batch(
            slices, args.modality, threshold=args.threshold, batch_size=args.batch_size, window=window,
            return_logits=bool(args.logits), progress=lambda done, total: bar.update(done - bar.n),
        )
    mask = np.stack([r.mask for r in results], axis=numpy_axis)
    logits = np.stack([r.logits for r in results], axis=numpy_axis) if args.logits else None
    return mask, logits


def run_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .checkpoint import download_checkpoint

    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="download", file=sys.stderr, disable=None) as bar:
        def progress(done: int, total: Optional[int]) -> None:
            if total and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        path = download_checkpoint(args.checkpoint, args.to, progress=progress)
    print(path)
    return 0


def run_training(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .predictor import select_device
    from .registry import modality_name
    from .training import engine
    from .training.data import open_dataset

    device = select_device(args.device)
    modality = resolve_modality(args.modality) if args.command != "distill" else 0
    name = modality_name(modality)
    logging.getLogger().setLevel(logging.INFO)
    if args.command == "evaluate":
        dataset = open_dataset(args.data, args.split, name, args.split_file, args.axis, args.label)
        model, _ = load_model(args.checkpoint)
        result = engine.evaluate(model, dataset, modality, device, Path(args.out), args.overlays, args.threshold)
        summary = result["summary"]
        print(f"{summary['images']} images: Dice {summary['dice']['mean']:.4f}, IoU {summary['iou']['mean']:.4f}, "
              f"HD95 {summary['hd95']['mean']:.2f} px, {summary['images_per_second']:.2f} images/s -> {args.out}")
        return 0
    train_set = open_dataset(args.data, "train", name, args.split_file, args.axis, args.label)
    settings = engine.TrainSettings(modality=modality, epochs=args.epochs, batch_size=args.batch_size,
                                    learning_rate=args.lr, num_workers=args.workers, out_dir=args.out)
    model, _ = load_model(args.checkpoint)
    if args.command == "distill":
        from .training.teachers import load_teacher

        result = engine.distill(model, load_teacher(args.teacher, args.teacher_checkpoint), train_set, settings, device)
        print(f"distilled weights: {result['checkpoint']}")
        return 0
    settings.trainable = [group.strip() for group in args.trainable.split(",") if group.strip()]
    settings.resume = args.resume
    valid_set = open_dataset(args.data, "valid", name, args.split_file, args.axis, args.label, optional=True) \
        if args.split_file or (Path(args.data) / "image_1024").is_dir() else None
    result = engine.train(model, train_set, valid_set, settings, device)
    print(f"best checkpoint: {result['best_checkpoint']} (validation Dice {result['best_valid_dice']:.4f})")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import cache_dir
    from .predictor import select_device
    from .registry import modality_name

    print(f"DeLightSAMLib {__version__}, torch {torch.__version__}")
    print(f"cache folder: {cache_dir()}")
    print(f"device (auto): {select_device('auto')}")
    for entry in CHECKPOINTS.values():
        path = cache_dir() / entry.filename
        state = f"downloaded, {path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "not downloaded"
        print(f"checkpoint {entry.name}: {entry.description} [{state}]")
        print(f"  file {path}; sha256 {entry.sha256 or 'not published'}; urls {', '.join(entry.urls)}")
        for index in sorted(entry.modality_map.values()):
            print(f"  modality {index}: {modality_name(index, entry.modality_map)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
