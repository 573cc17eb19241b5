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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn import functional as F
from tqdm import tqdm

from ..atomic import atomic_file
from ..errors import DeLightSAMError
from ..modeling import DeLightSAM
from ..transforms import ImageTransform
from .data import check_not_all_empty, to_tensors
from .metrics import score, summarize

logger = logging.getLogger(__name__)

# Parameter groups a user can train; everything else stays frozen. Names are the checkpoint's.
TRAINABLE_GROUPS = {
    "adapters": lambda name: "med" in name,  # med_dah MLPs, modality tokens and their biases
    "queries": lambda name: name.startswith("mask_query"),
    "prompt": lambda name: name.startswith(("patch_decoder", "dense_prompter")),
    "decoder": lambda name: name.startswith("mask_decoder"),
    "encoder": lambda name: name.startswith("SemiTViT"),
}


@dataclass
class TrainSettings:
    modality: int
    epochs: int = 20
    batch_size: int = 4
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    trainable: Sequence[str] = ("adapters", "queries", "prompt", "decoder")
    patch_loss_weight: float = 1.0
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on the CPU
    num_workers: int = 0
    seed: int = 0
    out_dir: str = "runs/delightsam"
    resume: bool = False


# ---------------------------------------------------------------------------------------------- helpers
def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def select_trainable(model: DeLightSAM, groups: Sequence[str]) -> list[torch.nn.Parameter]:
    unknown = set(groups) - set(TRAINABLE_GROUPS)
    if unknown:
        raise DeLightSAMError(f"unknown parameter group(s) {', '.join(sorted(unknown))}; choose from {', '.join(TRAINABLE_GROUPS)}")
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
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def _file_logger(out_dir: Path, name: str) -> logging.Logger:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_logger = logging.getLogger(f"delightsam.{name}.{out_dir}")
    run_logger.setLevel(logging.INFO)
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


def _loader(dataset, settings: TrainSettings, transform: ImageTransform, grid: int, shuffle: bool, world: int, rank: int):
    sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=shuffle) if world > 1 else None
    return torch.utils.data.DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=settings.num_workers, collate_fn=functools.partial(to_tensors, transform=transform, patch_grid=grid),
        generator=torch.Generator().manual_seed(settings.seed),
    ), sampler


# ---------------------------------------------------------------------------------------------- fine-tuning
def train(model: DeLightSAM, train_set, valid_set, settings: TrainSettings, device: torch.device) -> dict:
    """Fine-tune ``model`` on ``train_set`` for ``settings.modality``; keeps ``best.pth`` (validation Dice,
    official key format, loads in Slicer as is) and ``last.pth`` (with optimizer state, for ``resume``)."""
    rank, world, _ = distributed()
    torch.manual_seed(settings.seed)
    out_dir = Path(settings.out_dir)
    run_log = _file_logger(out_dir, "train")
    check_not_all_empty(train_set)
    model = model.to(device).eval()  # eval: BatchNorm keeps its running statistics while fine-tuning
    parameters = select_trainable(model, settings.trainable)
    transform = ImageTransform(model.config.image_size)
    grid = model.config.embedding_size // 2
    loader, sampler = _loader(train_set, settings, transform, grid, True, world, rank)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = _schedule(optimizer, settings.epochs * max(1, len(loader)), settings.warmup_fraction)
    start_epoch, best, history = 0, -1.0, []
    last_path, best_path = out_dir / "last.pth", out_dir / "best.pth"
    if settings.resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], json.loads(state["history"])
        run_log.info("resumed from %s at epoch %d", last_path, start_epoch)
    for epoch in range(start_epoch, settings.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        losses = []
        for images, masks, patches, _ in tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=rank != 0, leave=False):
            images, masks, patches = images.to(device), masks.to(device), patches.to(device)
            with _autocast(device, settings.mixed_precision):
                output = wrapped(images)
                loss = mask_loss(output.modality_logits[:, settings.modality : settings.modality + 1].float(), masks)
                loss = loss + settings.patch_loss_weight * F.binary_cross_entropy_with_logits(output.patch_logits.float(), patches)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else math.nan}
        if rank == 0:
            if valid_set is not None and len(valid_set):
                entry["valid_dice"] = evaluate(model, valid_set, settings.modality, device)["summary"]["dice"]["mean"]
                if entry["valid_dice"] > best:
                    best = entry["valid_dice"]
                    save_official(model, best_path)
            else:
                save_official(model, best_path)
            history.append(entry)
            run_log.info(json.dumps(entry))
            with atomic_file(last_path) as temporary:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best,
                            "history": json.dumps(history), "settings": json.dumps(asdict(settings))}, temporary)
    return {"history": history, "best_valid_dice": best, "best_checkpoint": str(best_path)}


# ---------------------------------------------------------------------------------------------- distillation
def distill(model: DeLightSAM, teacher: torch.nn.Module, train_set, settings: TrainSettings, device: torch.device) -> dict:
    """Modality-decoupled distillation: the frozen ``teacher`` encoder's embedding supervises the student
    encoder by mean-squared error; only the ``med`` adapters train (the paper's recipe)."""
    rank, world, _ = distributed()
    torch.manual_seed(settings.seed)
    out_dir = Path(settings.out_dir)
    run_log = _file_logger(out_dir, "distill")
    model, teacher = model.to(device).eval(), teacher.to(device).eval()
    student = model.SemiTViT
    parameters = select_trainable(model, ["adapters"])
    transform = ImageTransform(model.config.image_size)
    loader, sampler = _loader(train_set, settings, transform, model.config.embedding_size // 2, True, world, rank)
    wrapped = torch.nn.parallel.DistributedDataParallel(student) if world > 1 else student
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = _schedule(optimizer, settings.epochs * max(1, len(loader)), settings.warmup_fraction)
    history = []
    for epoch in range(settings.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        losses = []
        for images, _, _, _ in tqdm(loader, desc=f"distill {epoch + 1}/{settings.epochs}", disable=rank != 0, leave=False):
            images = images.to(device)
            with torch.no_grad(), _autocast(device, settings.mixed_precision):
                target = teacher(images).float()
            with _autocast(device, settings.mixed_precision):
                embedding = wrapped(images).float()
            if embedding.shape != target.shape:
                raise DeLightSAMError(f"teacher embedding {tuple(target.shape[1:])} does not match the student's {tuple(embedding.shape[1:])}")
            loss = F.mse_loss(embedding, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "mse": float(np.mean(losses))}
        history.append(entry)
        if rank == 0:
            run_log.info(json.dumps(entry))
            save_official(model, out_dir / "distilled.pth")
    return {"history": history, "checkpoint": str(out_dir / "distilled.pth")}


# ---------------------------------------------------------------------------------------------- evaluation
def evaluate(model_or_predictor, dataset, modality: int, device: torch.device, out_dir: Optional[Path] = None,
             overlays: bool = False, threshold: float = 0.5) -> dict:
    """Per-image Dice, IoU, HD95, precision, recall (and seconds) plus a summary with images per second.

    Writes ``metrics.csv`` and ``summary.json`` (and ``overlays/*.png``) when ``out_dir`` is given.
    """
    from ..predictor import Predictor

    predictor = model_or_predictor if isinstance(model_or_predictor, Predictor) else Predictor(model_or_predictor, device=device)
    run_log = _file_logger(Path(out_dir), "evaluate") if out_dir is not None else logger
    rows, names, seconds = [], [], []
    for index in tqdm(range(len(dataset)), desc="evaluate", leave=False, disable=len(dataset) < 2):
        image, reference, name = dataset[index]
        start = time.perf_counter()
        predictor.set_image(image)
        mask = predictor.predict(modality, threshold=threshold).mask
        seconds.append(time.perf_counter() - start)
        rows.append(score(mask, reference))
        names.append(name)
        run_log.info("%s %s", name, json.dumps(asdict(rows[-1])))
        if overlays and out_dir is not None:
            _write_overlay(image, mask, reference, Path(out_dir) / "overlays" / f"{Path(name).stem}.png")
    summary = summarize(rows)
    summary["images_per_second"] = len(rows) / sum(seconds) if seconds else math.nan
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "metrics.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "dice", "iou", "hd95", "precision", "recall", "seconds"])
            for name, row, second in zip(names, rows, seconds):
                writer.writerow([name, *(f"{v:.6f}" for v in asdict(row).values()), f"{second:.4f}"])
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"rows": list(zip(names, rows)), "summary": summary}


def _write_overlay(image: np.ndarray, mask: np.ndarray, reference: np.ndarray, path: Path) -> None:
    """The image with the prediction in yellow and the reference outline in green."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    overlay = image.astype(np.float32).copy()
    overlay[mask] = 0.5 * overlay[mask] + 0.5 * np.array([255, 220, 0])
    edge = reference & ~np.pad(reference, 1)[2:, 1:-1] | reference & ~np.pad(reference, 1)[:-2, 1:-1]
    overlay[edge] = (0, 255, 0)
    sitk.WriteImage(sitk.GetImageFromArray(overlay.astype(np.uint8), isVector=True), str(path))

