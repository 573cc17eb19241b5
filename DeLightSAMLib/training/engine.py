"""Fine-tuning, distillation and evaluation loops, single process or DistributedDataParallel under torchrun.

Multi-GPU / multi-node runs use PyTorch's own launcher, nothing home-made:
``torchrun --nproc_per_node=N -m DeLightSAMLib train ...`` (add ``--nnodes``/``--rdzv-endpoint`` for several
machines). Each process reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; only rank 0 validates, logs and saves.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F
from tqdm import tqdm

from ..atomic import atomic_file
from ..errors import DeLightSAMError
from ..modeling import DeLightSAM
from ..transforms import ImageTransform, threshold_logits
from .data import check_not_all_empty, to_tensors
from .embedding_cache import EmbeddingCache
from .metrics import score, summarize
from .overlays import write_overlay
from .settings import TrainSettings

logger = logging.getLogger(__name__)

# Parameter groups a user can train; everything else stays frozen. Names are the checkpoint's.
TRAINABLE_GROUPS = {
    "adapters": lambda name: "med" in name,  # med_dah MLPs, modality tokens and their biases
    "queries": lambda name: name.startswith("mask_query"),
    "prompt": lambda name: name.startswith(("patch_decoder", "dense_prompter")),
    "decoder": lambda name: name.startswith("mask_decoder"),
    "encoder": lambda name: name.startswith("SemiTViT"),
}


# ---------------------------------------------------------------------------------------------- helpers
Report = Callable[[str, int], None]  # (message, logging level): where a run's readable lines go


def _log_report(message: str, level: int) -> None:
    logger.log(level, message)


class _Messages:
    """A run's readable lines: into its log file, and to ``report`` (the console, for the CLI)."""

    def __init__(self, run_log: logging.Logger, report: Optional[Report], enabled: bool) -> None:
        self.run_log, self.report, self.enabled = run_log, report or _log_report, enabled

    def info(self, message: str) -> None:
        self._say(message, logging.INFO)

    def warning(self, message: str) -> None:
        self._say(message, logging.WARNING)

    def _say(self, message: str, level: int) -> None:
        if self.enabled:
            self.run_log.log(level, message)
            self.report(message, level)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str(error)`` says which checkpoints were kept."""


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def select_trainable(model: DeLightSAM, groups: Sequence[str]) -> list[torch.nn.Parameter]:
    unknown = set(groups) - set(TRAINABLE_GROUPS)
    if unknown:
        raise DeLightSAMError(
            f"unknown parameter group(s) {', '.join(sorted(unknown))}; choose from {', '.join(TRAINABLE_GROUPS)}"
        )
    chosen = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(TRAINABLE_GROUPS[group](name) for group in groups))
        if parameter.requires_grad:
            chosen.append(parameter)
    if not chosen:
        raise DeLightSAMError(f"no parameters to train in group(s) {', '.join(groups)}")
    return chosen


def mask_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice of the modality map (upsampled as at evaluation) against (B, 1, S, S) masks."""
    logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits, masks)
    probability = torch.sigmoid(logits)
    intersection = (probability * masks).sum(dim=(1, 2, 3))
    dice = 1 - (2 * intersection + 1) / (probability.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3)) + 1)
    return bce + dice.mean()


def _schedule(optimizer, total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        ),
    )


def _mixed_precision(device: torch.device, enabled: bool) -> bool:
    return enabled and device.type == "cuda"


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=_mixed_precision(device, enabled))


def _file_logger(out_dir: Path, name: str) -> logging.Logger:
    """A logger writing only to ``out_dir/NAME.log`` (it does not propagate: per-image lines stay off the console)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_logger = logging.getLogger(f"delightsam.{name}.{out_dir}")
    run_logger.setLevel(logging.INFO)
    run_logger.propagate = False
    if not run_logger.handlers:
        handler = logging.FileHandler(out_dir / f"{name}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        run_logger.addHandler(handler)
    return run_logger


def save_official(model: torch.nn.Module, path: Path) -> None:
    """The model's state_dict in the released checkpoint format (plain dict, official keys), atomically."""
    inner = model.module if hasattr(model, "module") else model
    with atomic_file(path) as temporary:
        torch.save({k: v.detach().cpu() for k, v in inner.state_dict().items()}, temporary)


def _loader(
    dataset, settings: TrainSettings, transform: ImageTransform, grid: int, shuffle: bool, world: int, rank: int
):
    sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=shuffle) if world > 1 else None
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=settings.num_workers,
        collate_fn=functools.partial(to_tensors, transform=transform, patch_grid=grid),
        generator=torch.Generator().manual_seed(settings.seed),
    ), sampler


# ---------------------------------------------------------------------------------------------- fine-tuning
def encoder_frozen(model: DeLightSAM) -> bool:
    """True when nothing upstream of the image embedding trains (the encoder and its ``med`` adapters)."""
    return not any(parameter.requires_grad for parameter in model.SemiTViT.parameters())


def _cache_plan(model: DeLightSAM, train_set, settings: TrainSettings) -> Optional[str]:
    """None when the embeddings can be cached, else why not (for the log)."""
    if not settings.embedding_cache:
        return "turned off in the settings (--no-embedding-cache)"
    if not encoder_frozen(model):
        trained = [group for group in settings.trainable if group in ("adapters", "encoder")]
        return f"the encoder trains (group {', '.join(trained)})"
    if getattr(train_set, "augments", True):
        return "the training set may change its images every epoch (it does not declare augments = False)"
    return None


class _DecoderSide(torch.nn.Module):
    """The network after the encoder, as a module of its own so DistributedDataParallel can wrap it."""

    def __init__(self, model: DeLightSAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_embeddings: torch.Tensor):
        return self.model.forward_from_embeddings(image_embeddings)


def train(
    model: DeLightSAM,
    train_set,
    valid_set,
    settings: TrainSettings,
    device: torch.device,
    report: Optional[Report] = None,
) -> dict:
    """Fine-tune ``model`` on ``train_set`` for ``settings.modality``; keeps ``best.pth`` (validation Dice,
    official key format, loads in Slicer as is) and ``last.pth`` (with optimizer state, for ``resume``).

    With a frozen encoder (no ``adapters`` or ``encoder`` group) each image's embedding is computed once and
    reused (:mod:`.embedding_cache`). Readable progress goes to ``report(message, level)`` (default: this
    module's logger) and to ``train.log`` in the run folder, with per-image validation scores in the log only.
    Raises :class:`TrainingInterrupted` (a KeyboardInterrupt) saying what was kept when interrupted.
    """
    rank, world, _ = distributed()
    out_dir = Path(settings.out_dir)
    last_path, best_path = out_dir / "last.pth", out_dir / "best.pth"
    resumed = _read_resume_state(last_path, settings) if settings.resume else None  # refuses before writing
    check_not_all_empty(train_set)
    torch.manual_seed(settings.seed)
    model = model.to(device).eval()  # eval: BatchNorm keeps its running statistics while fine-tuning
    parameters = select_trainable(model, settings.trainable)
    run_log = _file_logger(out_dir, "train")
    say = _Messages(run_log, report, enabled=rank == 0)
    transform = ImageTransform(model.config.image_size)
    loader, sampler = _loader(train_set, settings, transform, model.config.embedding_size // 2, True, world, rank)
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = _schedule(optimizer, settings.epochs * max(1, len(loader)), settings.warmup_fraction)
    progress = _Progress(settings.epochs)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        progress.resume(resumed)
        say.info(
            f"resuming from {last_path}: epochs 1-{progress.completed} of {settings.epochs} are done; "
            f"continuing with epoch {progress.completed + 1}"
            if progress.completed < settings.epochs
            else f"{last_path} already holds all {settings.epochs} epochs; give more epochs to train longer"
        )
    mixed = _mixed_precision(device, settings.mixed_precision)
    autocast = functools.partial(_autocast, device, settings.mixed_precision)
    why_not_cached = _cache_plan(model, train_set, settings)
    cache = None
    if why_not_cached is None:
        cache = EmbeddingCache(
            model.SemiTViT,
            device,
            out_dir / "embedding_cache",
            settings.embedding_cache_memory_mb * 2**20,
            precision="bfloat16" if mixed else "float32",
            autocast=autocast,
        )
        say.info(
            f"encoder frozen: each image is encoded once and its embedding reused in later epochs "
            f"(in memory up to {settings.embedding_cache_memory_mb} MB, then in {cache.folder})"
        )
    else:
        say.info(f"embedding cache off: {why_not_cached}; the encoder runs for every image in every epoch")
    network = _DecoderSide(model) if cache is not None else model
    wrapped = torch.nn.parallel.DistributedDataParallel(network) if world > 1 else network
    valid_embed = _embedder(
        model,
        device,
        cache if cache is not None and valid_set is not None and not getattr(valid_set, "augments", True) else None,
    )
    try:
        for epoch in range(progress.completed, settings.epochs):
            started = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
            if cache is not None:
                cache.refresh()  # the encoder is frozen, but should anything change it, no stale entry is used
            losses = []
            with tqdm(
                loader, desc=f"epoch {epoch + 1}/{settings.epochs}", unit="batch", disable=rank != 0, leave=True
            ) as bar:
                for batch in bar:
                    losses.append(_step(wrapped, batch, cache, optimizer, scheduler, settings, device, autocast))
                    bar.set_postfix(loss=f"{np.mean(losses):.4f}", refresh=False)  # the epoch's running mean
            entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else math.nan}
            if rank != 0:
                continue
            if valid_set is not None and len(valid_set):
                entry["valid_dice"], entry["valid_empty"] = _validate(
                    model, valid_set, settings, valid_embed, autocast, run_log, epoch + 1
                )
            improved = progress.record(entry)
            if improved:
                save_official(model, best_path)
                progress.best_saved(entry)
            entry["seconds"] = round(time.perf_counter() - started, 1)
            run_log.info(json.dumps(entry))
            with atomic_file(last_path) as temporary:
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "best": progress.best,
                        "best_epoch": progress.best_epoch,
                        "history": json.dumps(progress.history),
                        "settings": json.dumps(asdict(settings)),
                    },
                    temporary,
                )
            progress.completed = epoch + 1
            say.info(progress.epoch_line(entry, improved))
    except KeyboardInterrupt as interrupt:
        raise TrainingInterrupted(progress.kept(last_path, best_path)) from interrupt
    if cache is not None:
        say.info(f"embedding cache: {cache.describe()}")
        if world > 1:
            dist.barrier()  # every process is done reading before the files go
        if rank == 0:
            cache.remove_files()
    warnings = progress.warnings(valid_set, settings) if rank == 0 else []
    for warning in warnings:
        say.warning(warning)
    return {
        "history": progress.history,
        "best_valid_dice": progress.best if progress.best >= 0 else None,
        "best_epoch": progress.best_epoch,
        "best_checkpoint": str(best_path),
        "warnings": warnings,
    }


def _step(
    wrapped,
    batch,
    cache: Optional[EmbeddingCache],
    optimizer,
    scheduler,
    settings: TrainSettings,
    device: torch.device,
    autocast,
) -> float:
    """One optimisation step on an (images, masks, patch targets, names) batch; returns its loss."""
    images, masks, patches, _ = batch
    inputs = cache(images) if cache is not None else images.to(device)  # embeddings, or images for the whole network
    masks, patches = masks.to(device), patches.to(device)
    with autocast():
        output = wrapped(inputs)
        loss = mask_loss(output.modality_logits[:, settings.modality : settings.modality + 1].float(), masks)
        loss = loss + settings.patch_loss_weight * F.binary_cross_entropy_with_logits(
            output.patch_logits.float(), patches
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


def _read_resume_state(last_path: Path, settings: TrainSettings) -> dict:
    """``last.pth``, refused (before anything is written) when missing or saved with other trainable groups."""
    if not last_path.is_file():
        raise DeLightSAMError(
            f"cannot resume: {last_path} does not exist; give --out the folder of the run to "
            f"continue, or start a new run without --resume"
        )
    state = torch.load(last_path, map_location="cpu", weights_only=True)
    saved = json.loads(state.get("settings", "{}"))
    for name in ("trainable", "modality"):
        if name in saved and _comparable(saved[name]) != _comparable(getattr(settings, name)):
            raise DeLightSAMError(
                f"cannot resume: {last_path} was trained with {name} {saved[name]}, not "
                f"{getattr(settings, name)}; use the same {name} or a new --out folder"
            )
    return state


def _comparable(value):
    return sorted(value) if isinstance(value, (list, tuple)) else value


class _Progress:
    """Epochs done, the best epoch and the history of one fine-tuning run; writes its readable lines."""

    def __init__(self, epochs: int) -> None:
        self.epochs, self.completed = epochs, 0
        self.best, self.best_epoch, self.history = -1.0, 0, []

    def resume(self, state: dict) -> None:
        self.completed, self.best = state["epoch"] + 1, state["best"]
        self.history = json.loads(state["history"])
        self.best_epoch = (
            state.get("best_epoch")
            or max(  # last.pth files written before best_epoch was saved
                self.history, key=lambda entry: entry.get("valid_dice", entry["epoch"])
            )["epoch"]
        )

    def record(self, entry: dict) -> bool:
        """Add an epoch's entry; True when it is the best so far (with no validation set: every epoch)."""
        self.history.append(entry)
        return "valid_dice" not in entry or entry["valid_dice"] > self.best

    def best_saved(self, entry: dict) -> None:
        self.best, self.best_epoch = entry.get("valid_dice", self.best), entry["epoch"]

    def epoch_line(self, entry: dict, improved: bool) -> str:
        line = f"epoch {entry['epoch']}/{self.epochs}  train loss {entry['loss']:.4f}"
        if "valid_dice" in entry:
            line += f"  valid Dice {entry['valid_dice']:.4f}" + ("  (best)" if improved else "")
        return f"{line}  {entry['seconds']:.1f} s"

    def kept(self, last_path: Path, best_path: Path) -> str:
        where = f"interrupted in epoch {self.completed + 1}/{self.epochs}"
        if not self.completed:
            return f"{where}; no epoch had finished, so no checkpoint was kept"
        validated = any("valid_dice" in entry for entry in self.history)
        best = f"validation Dice {self.best:.4f}" if validated else "no validation set: the latest epoch"
        return (
            f"{where}; kept {last_path} (after epoch {self.completed}: weights, optimizer, schedule) and "
            f"{best_path} (epoch {self.best_epoch}, {best})"
        )

    def warnings(self, valid_set, settings: TrainSettings) -> list[str]:
        dices = [entry["valid_dice"] for entry in self.history if "valid_dice" in entry]
        if not dices or any(dice > 0 for dice in dices):
            return []
        everywhere = all(entry.get("valid_empty") == len(valid_set) for entry in self.history if "valid_dice" in entry)
        what = (
            "the model predicts background everywhere"
            if everywhere
            else "the predicted masks never overlap the reference masks"
        )
        return [
            f"validation Dice was 0 in every epoch: {what}, and best.pth (epoch {self.best_epoch}) is no better. "
            f"Check the learning rate (--lr, {settings.learning_rate:g} here), the trainable groups (--trainable, "
            f"{','.join(settings.trainable)} here) and the starting weights (--checkpoint): weights whose encoder "
            f"ignores the image, such as the shared reference test weights, cannot learn"
        ]


def _embedder(model: DeLightSAM, device: torch.device, cache: Optional[EmbeddingCache]):
    """(B, 3, S, S) CPU inputs -> (B, C, h, w) embeddings on ``device``: from ``cache``, or the encoder each time."""
    return cache if cache is not None else (lambda inputs: model.SemiTViT(inputs.to(device)))


def _validate(
    model: DeLightSAM, dataset, settings: TrainSettings, embed, autocast, run_log: logging.Logger, epoch: int
) -> tuple[float, int]:
    """Mean Dice over ``dataset`` (each mask at its image's size, thresholded as ``evaluate`` does) and how many
    predicted masks were empty. Per-image scores go to the run's log file only."""
    transform = ImageTransform(model.config.image_size)
    rows, empty = [], 0
    with torch.no_grad(), tqdm(total=len(dataset), desc="validate", unit="image", leave=False) as bar:
        for start in range(0, len(dataset), settings.batch_size):
            items = [dataset[index] for index in range(start, min(start + settings.batch_size, len(dataset)))]
            inputs = torch.cat([transform.prepare(image) for image, _, _ in items])
            with autocast():
                logits = model.forward_from_embeddings(embed(inputs)).modality_logits
            for (_, reference, name), item_logits in zip(
                items, logits[:, settings.modality : settings.modality + 1].float().cpu()
            ):
                mask = threshold_logits(transform.logits_to_image(item_logits[None], reference.shape)[0, 0])
                rows.append(score(mask, reference))
                empty += not mask.any()
                run_log.info("epoch %d valid %s %s", epoch, name, json.dumps(asdict(rows[-1])))
                bar.update()
    return summarize(rows)["dice"]["mean"], empty


# ---------------------------------------------------------------------------------------------- distillation
def distill(
    model: DeLightSAM,
    teacher: torch.nn.Module,
    train_set,
    settings: TrainSettings,
    device: torch.device,
    report: Optional[Report] = None,
) -> dict:
    """Modality-decoupled distillation: the frozen ``teacher`` encoder's embedding supervises the student
    encoder by mean-squared error; only the ``med`` adapters train (the paper's recipe). Saves ``distilled.pth``
    after every epoch; progress as in :func:`train`."""
    rank, world, _ = distributed()
    torch.manual_seed(settings.seed)
    out_dir = Path(settings.out_dir)
    run_log = _file_logger(out_dir, "distill")
    say = _Messages(run_log, report, enabled=rank == 0)
    model, teacher = model.to(device).eval(), teacher.to(device).eval()
    student = model.SemiTViT
    parameters = select_trainable(model, ["adapters"])
    transform = ImageTransform(model.config.image_size)
    loader, sampler = _loader(train_set, settings, transform, model.config.embedding_size // 2, True, world, rank)
    wrapped = torch.nn.parallel.DistributedDataParallel(student) if world > 1 else student
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = _schedule(optimizer, settings.epochs * max(1, len(loader)), settings.warmup_fraction)
    history, checkpoint = [], out_dir / "distilled.pth"
    try:
        for epoch in range(settings.epochs):
            started = time.perf_counter()
            if sampler is not None:
                sampler.set_epoch(epoch)
            losses = []
            with tqdm(
                loader, desc=f"distill {epoch + 1}/{settings.epochs}", unit="batch", disable=rank != 0, leave=True
            ) as bar:
                for images, _, _, _ in bar:
                    images = images.to(device)
                    with torch.no_grad(), _autocast(device, settings.mixed_precision):
                        target = teacher(images).float()
                    with _autocast(device, settings.mixed_precision):
                        embedding = wrapped(images).float()
                    if embedding.shape != target.shape:
                        raise DeLightSAMError(
                            f"teacher embedding {tuple(target.shape[1:])} does not match the student's {tuple(embedding.shape[1:])}"
                        )
                    loss = F.mse_loss(embedding, target)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                    losses.append(loss.item())
                    bar.set_postfix(mse=f"{np.mean(losses):.3g}", refresh=False)
            entry = {
                "epoch": epoch + 1,
                "mse": float(np.mean(losses)),
                "seconds": round(time.perf_counter() - started, 1),
            }
            history.append(entry)
            if rank == 0:
                run_log.info(json.dumps(entry))
                save_official(model, checkpoint)
                say.info(
                    f"epoch {epoch + 1}/{settings.epochs}  embedding MSE {entry['mse']:.4g}  {entry['seconds']:.1f} s"
                )
    except KeyboardInterrupt as interrupt:
        kept = (
            f"kept {checkpoint} (after epoch {len(history)})"
            if history
            else "no epoch had finished, so nothing was kept"
        )
        raise TrainingInterrupted(f"interrupted in epoch {len(history) + 1}/{settings.epochs}; {kept}") from interrupt
    return {"history": history, "checkpoint": str(checkpoint)}


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(
    model_or_predictor,
    dataset,
    modality: int,
    device: torch.device,
    out_dir: Optional[Path] = None,
    overlays: bool = False,
    threshold: float = 0.5,
) -> dict:
    """Per-image Dice, IoU, HD95, precision, recall (and seconds) plus a summary with images per second.

    Writes ``metrics.csv``, ``summary.json`` and ``evaluate.log`` (per-image lines; they are not shown on the
    console) and, with ``overlays``, ``overlays/*.png`` when ``out_dir`` is given. One progress bar, which stays,
    shows the running mean Dice.
    """
    from ..predictor import Predictor

    predictor = (
        model_or_predictor
        if isinstance(model_or_predictor, Predictor)
        else Predictor(model_or_predictor, device=device)
    )
    run_log = _file_logger(Path(out_dir), "evaluate") if out_dir is not None else None
    rows, names, seconds = [], [], []
    with tqdm(total=len(dataset), desc="evaluate", unit="image", leave=True) as bar:
        for index in range(len(dataset)):
            image, reference, name = dataset[index]
            start = time.perf_counter()
            predictor.set_image(image)
            mask = predictor.predict(modality, threshold=threshold).mask
            seconds.append(time.perf_counter() - start)
            rows.append(score(mask, reference))
            names.append(name)
            if run_log is not None:
                run_log.info("%s %s", name, json.dumps(asdict(rows[-1])))
            if overlays and out_dir is not None:
                write_overlay(image, mask, reference, Path(out_dir) / "overlays" / f"{Path(name).stem}.png")
            bar.set_postfix(dice=f"{np.mean([row.dice for row in rows]):.4f}", refresh=False)  # shown by update
            bar.update()
    summary = summarize(rows)
    summary["images_per_second"] = len(rows) / sum(seconds) if seconds else math.nan
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(out_dir / "metrics.csv") as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "dice", "iou", "hd95", "precision", "recall", "seconds"])
            for name, row, second in zip(names, rows, seconds):
                writer.writerow([name, *(f"{v:.6f}" for v in asdict(row).values()), f"{second:.4f}"])
        with atomic_file(out_dir / "summary.json") as temporary:
            temporary.write_text(json.dumps(summary, indent=2))
        run_log.info("summary %s", json.dumps(summary))
    return {"rows": list(zip(names, rows)), "summary": summary}
