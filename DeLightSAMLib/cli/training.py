"""The ``delightsam train``, ``distill`` and ``evaluate`` commands: one handler each, over ``training``.

Progress bars go to stderr; each epoch's summary line and the result to stdout; warnings to stderr. The options'
defaults are ``TrainSettings``' (one truth for the library and the command line).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..registry import MODALITIES, resolve_modality
from .exits import EXIT_INTERRUPTED

TRAINABLE_HELP = (
    "comma-separated groups: adapters, queries, prompt, decoder, encoder (default: %(default)s). Without "
    "adapters and encoder the encoder is frozen and each image is encoded only once"
)


def add_parsers(commands) -> None:
    """Add train, distill and evaluate to the ``delightsam`` subcommands."""
    from ..training.settings import TrainSettings

    defaults = TrainSettings(modality=0)
    for name, help_text, handler in (
        ("train", "fine-tune on your own data", run_train),
        ("distill", "distil a teacher encoder into the adapters", run_distill),
        ("evaluate", "Dice, IoU, HD95, precision, recall on a dataset split", run_evaluate),
    ):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        sub.add_argument("--data", required=True, help="dataset folder: image_1024/ + mask_1024/, or images/ + labels/")
        sub.add_argument(
            "--split-file", default=None, help="JSON with train/valid/test lists (default: the one .json in DATA)"
        )
        sub.add_argument(
            "--checkpoint",
            "-c",
            default=None,
            help=("weights to evaluate" if name == "evaluate" else "starting weights")
            + ", registry name or .pth (default: the official one)",
        )
        sub.add_argument(
            "--out",
            default=f"runs/{name}",
            help=(
                "output folder: per-image metrics.csv, evaluate.log, summary.json, overlays/"
                if name == "evaluate"
                else "output folder: checkpoints, train.log, metrics"
            )
            + " (default: %(default)s)",
        )
        sub.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default: %(default)s)")
        sub.add_argument(
            "--axis",
            type=int,
            default=2,
            choices=[0, 1, 2],
            help="slicing axis for volume datasets (default: %(default)s)",
        )
        sub.add_argument(
            "--label", type=int, default=None, help="label value for volume datasets (default: any non-zero)"
        )
        if name != "distill":
            sub.add_argument("--modality", "-m", required=True, help=f"one of {', '.join(MODALITIES)}, or an index")
        if name == "evaluate":
            sub.add_argument("--split", default="test", help="which list of the split file (default: %(default)s)")
            sub.add_argument(
                "--threshold", type=float, default=0.5, help="probability threshold (default: %(default)s)"
            )
            sub.add_argument(
                "--overlays",
                action="store_true",
                help="write overlay PNGs (prediction yellow, reference outline green)",
            )
        else:
            sub.add_argument(
                "--epochs",
                type=int,
                default=defaults.epochs,
                help="epochs to train, in all when resuming (default: %(default)s)",
            )
            sub.add_argument(
                "--batch-size", type=int, default=defaults.batch_size, help="images per step (default: %(default)s)"
            )
            sub.add_argument(
                "--lr",
                type=float,
                default=defaults.learning_rate,
                help="peak learning rate of AdamW, warm-up then cosine (default: %(default)s)",
            )
            sub.add_argument(
                "--workers",
                type=int,
                default=defaults.num_workers,
                help="data loading processes; 0 loads in the main process (default: %(default)s)",
            )
        if name == "train":
            sub.add_argument("--trainable", default=",".join(defaults.trainable), help=TRAINABLE_HELP)
            sub.add_argument(
                "--resume",
                action="store_true",
                help="continue the run in OUT from OUT/last.pth (refused if there is none)",
            )
            sub.add_argument(
                "--no-embedding-cache",
                action="store_true",
                help="with a frozen encoder, encode every image in every epoch anyway",
            )
        if name == "distill":
            sub.add_argument("--teacher", required=True, help="mobilesam, sam_vit_b, sam_vit_l or sam_vit_h")
            sub.add_argument("--teacher-checkpoint", required=True, help="the teacher's published checkpoint")


def report(message: str, level: int) -> None:
    """Where a run's readable lines go: stdout, warnings to stderr; printed between the progress bars."""
    from tqdm import tqdm

    if level >= logging.WARNING:
        tqdm.write(f"delightsam: warning: {message}", file=sys.stderr)
    else:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


def _where(args: argparse.Namespace) -> dict:
    """Which files of the dataset: the split file, and for volume datasets the slicing axis and label."""
    return {"split_file": args.split_file, "axis": args.axis, "label": args.label}


def run_evaluate(args: argparse.Namespace) -> int:
    from ..checkpoint import load_delightsam
    from ..device import select_device
    from ..training import loops
    from ..training.data import open_dataset

    device = select_device(args.device)
    modality = resolve_modality(args.modality)
    logging.getLogger().setLevel(logging.INFO)
    dataset = open_dataset(args.data, args.split, **_where(args))
    model, _ = load_delightsam(args.checkpoint, purpose=args.command)
    try:
        result = loops.evaluate(model, dataset, modality, device, Path(args.out), args.overlays, args.threshold)
    except KeyboardInterrupt:
        print(
            f"delightsam: interrupted; no metrics written (per-image lines so far: {Path(args.out) / 'evaluate.log'})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    summary = result["summary"]
    print(
        f"{summary['images']} images: Dice {summary['dice']['mean']:.4f}, IoU {summary['iou']['mean']:.4f}, "
        f"HD95 {summary['hd95']['mean']:.2f} px, {summary['images_per_second']:.2f} images/s -> {args.out}"
    )
    return 0


def _settings(args: argparse.Namespace, modality: int):
    from ..training.settings import TrainSettings

    return TrainSettings(
        modality=modality,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        num_workers=args.workers,
        out_dir=args.out,
    )


def run_distill(args: argparse.Namespace) -> int:
    from ..checkpoint import load_delightsam
    from ..device import select_device
    from ..training import loops
    from ..training.data import open_dataset
    from ..training.teachers import load_teacher

    device = select_device(args.device)
    logging.getLogger().setLevel(logging.INFO)
    train_set = open_dataset(args.data, "train", **_where(args))
    settings = _settings(args, modality=0)
    model, _ = load_delightsam(args.checkpoint, purpose=args.command)
    try:
        result = loops.distill(
            model, load_teacher(args.teacher, args.teacher_checkpoint), train_set, settings, device, report
        )
    except loops.TrainingInterrupted as interrupted:
        print(
            f"delightsam: {interrupted}; distill has no --resume; --checkpoint with the kept file starts a new run "
            "from it",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(f"distilled weights: {result['checkpoint']}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..checkpoint import load_delightsam
    from ..device import select_device
    from ..training import loops
    from ..training.data import open_dataset

    device = select_device(args.device)
    modality = resolve_modality(args.modality)
    logging.getLogger().setLevel(logging.INFO)
    train_set = open_dataset(args.data, "train", **_where(args))
    settings = _settings(args, modality)
    model, _ = load_delightsam(args.checkpoint, purpose=args.command)
    settings.trainable = [group.strip() for group in args.trainable.split(",") if group.strip()]
    settings.resume = args.resume
    settings.embedding_cache = not args.no_embedding_cache
    try:
        valid_set = (
            open_dataset(args.data, "valid", optional=True, **_where(args))
            if args.split_file or (Path(args.data) / "image_1024").is_dir()
            else None
        )
        result = loops.train(model, train_set, valid_set, settings, device, report)
    except loops.TrainingInterrupted as interrupted:
        print(f"delightsam: {interrupted}; to continue, rerun the same command with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result["best_valid_dice"] is None:
        print(
            f"best checkpoint: {result['best_checkpoint']} (epoch {result['best_epoch']}, the last; no validation set)"
        )
    else:
        print(
            f"best checkpoint: {result['best_checkpoint']} (epoch {result['best_epoch']}, "
            f"validation Dice {result['best_valid_dice']:.4f})"
        )
    return 0
