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
from ..cohort.distributed import ProcessGroup
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

    def log_only(self, message: str) -> None:
        """Into the log file only (the caller shows it in its own words, as the CLI does for Ctrl-C)."""
        if self.enabled:
            self.run_log.warning(message)

    def _say(self, message: str, level: int) -> None:
        if self.enabled:
            self.run_log.log(level, message)
            self.report(message, level)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str(error)`` says which checkpoints were kept."""


def _process_group(device: torch.device) -> ProcessGroup:
    """The run's process group under torchrun (NCCL between GPUs, gloo between CPUs; nothing for one process)."""
    return ProcessGroup("nccl" if device.type == "cuda" else "gloo")


def _process_device(device: torch.device, group: ProcessGroup) -> torch.device:
    """Under torchrun a bare ``cuda`` is this process's GPU (``cuda:LOCAL_RANK``), not every process's GPU 0."""
    if group.world > 1 and device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    return device


def _parallel(network: torch.nn.Module, group: ProcessGroup) -> torch.nn.Module:
    return torch.nn.parallel.DistributedDataParallel(network) if group.world > 1 else network


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


def _optimisation(parameters: list[torch.nn.Parameter], settings: TrainSettings, steps_per_epoch: int):
    """AdamW and its schedule over the whole run: linear warm-up, then cosine down to 0 at the last step."""
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total_steps = settings.epochs * max(1, steps_per_epoch)
    warmup = max(1, int(total_steps * settings.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        ),
    )
    return optimizer, scheduler


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


def _loader(dataset, settings: TrainSettings, model: DeLightSAM, group: ProcessGroup):
    """The training batches, shuffled anew each epoch (see :func:`_epoch`); this process's share under torchrun."""
    order = torch.utils.data.DistributedSampler(dataset, group.world, group.rank, shuffle=True, seed=settings.seed)
    transform = ImageTransform(model.config.image_size)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=order,
        num_workers=settings.num_workers,
        collate_fn=functools.partial(to_tensors, transform=transform, patch_grid=model.config.embedding_size // 2),
        generator=torch.Generator(),
    )


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _epoch(loader, settings: TrainSettings, epoch: int, batch_loss, optimizer, scheduler, rank: int, bar: str) -> list:
    """One pass over ``loader`` with an optimisation step per batch; the batch losses. ``bar``: "NAME SHOWN:SPEC",
    the progress bar's name and how it shows the epoch's running mean loss (e.g. "epoch loss:.4f").

    Everything random in an epoch (the batch order, the loader workers' seeds, torch's generator) is a function of
    (seed, epoch) alone, so a resumed run reads the batches, and gives the losses, of the run it continues.
    """
    seed = _epoch_seed(settings.seed, epoch)
    loader.sampler.set_epoch(epoch)  # the order: a permutation drawn from seed + epoch
    loader.generator.manual_seed(seed)
    torch.manual_seed(seed)
    name, shown = bar.split()
    shown, spec = shown.split(":")
    losses = []
    with tqdm(
        loader, desc=f"{name} {epoch + 1}/{settings.epochs}", unit="batch", disable=rank != 0, leave=True
    ) as bars:
        for batch in bars:
            losses.append(_step(batch_loss(batch), optimizer, scheduler))
            bars.set_postfix({shown: format(np.mean(losses), spec)}, refresh=False)  # the epoch's running mean
    return losses


def _step(loss: torch.Tensor, optimizer, scheduler) -> float:
    """One optimisation step on a batch's loss; returns it."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


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
    A resumed run continues with the next epoch exactly as the uninterrupted run would have.
    Raises :class:`TrainingInterrupted` (a KeyboardInterrupt) saying what was kept when interrupted.

    Under torchrun the process group is set up here and destroyed at the end; a script that trains more than once
    in a process sets the group up itself (``torch.distributed.init_process_group``), which is then used and left
    alone: PyTorch cannot be relied on to set up a group again in a process under torchrun.
    """
    with _process_group(device) as group:
        run = _FineTuning(model, train_set, valid_set, settings, _process_device(device, group), report, group)
        try:
            for epoch in range(run.history.completed, settings.epochs):
                run.run_epoch(epoch)
        except KeyboardInterrupt as interrupt:
            message = run.history.kept(run.last_path, run.best_path)
            run.say.log_only(message)
            raise TrainingInterrupted(message) from interrupt
        return run.finish()


class _FineTuning:
    """One fine-tuning run: set up (refusing a bad resume before anything is written), then one epoch at a time,
    each saved to ``last.pth`` (and ``best.pth`` when it is the best so far)."""

    def __init__(self, model, train_set, valid_set, settings: TrainSettings, device, report, group) -> None:
        out_dir = Path(settings.out_dir)
        self.last_path, self.best_path = out_dir / "last.pth", out_dir / "best.pth"
        resumed = _read_resume_state(self.last_path, settings) if settings.resume else None  # refuses before writing
        check_not_all_empty(train_set)
        torch.manual_seed(settings.seed)
        self.settings, self.device, self.group, self.valid_set = settings, device, group, valid_set
        self.model = model.to(device).eval()  # eval: BatchNorm keeps its running statistics while fine-tuning
        parameters = select_trainable(model, settings.trainable)
        self.run_log = _file_logger(out_dir, "train")
        self.say = _Messages(self.run_log, report, enabled=group.rank == 0)
        self.loader = _loader(train_set, settings, model, group)
        self.optimizer, self.scheduler = _optimisation(parameters, settings, len(self.loader))
        self.history = EpochHistory(settings.epochs)
        if resumed is not None:
            self._resume(resumed)
        self.autocast = functools.partial(_autocast, device, settings.mixed_precision)
        self.cache = self._embedding_cache(train_set, out_dir)
        self.network = _parallel(_DecoderSide(model) if self.cache is not None else model, group)
        caches_valid = self.cache is not None and valid_set is not None and not getattr(valid_set, "augments", True)
        self.valid_embed = _embedder(model, device, self.cache if caches_valid else None)

    def _resume(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history.resume(state)
        self.say.info(self.history.resume_line(self.last_path))

    def _embedding_cache(self, train_set, out_dir: Path) -> Optional[EmbeddingCache]:
        settings = self.settings
        why_not = _cache_plan(self.model, train_set, settings)
        if why_not is not None:
            self.say.info(f"embedding cache off: {why_not}; the encoder runs for every image in every epoch")
            return None
        cache = EmbeddingCache(
            self.model.SemiTViT,
            self.device,
            out_dir / "embedding_cache",
            settings.embedding_cache_memory_mb * 2**20,
            precision="bfloat16" if _mixed_precision(self.device, settings.mixed_precision) else "float32",
            autocast=self.autocast,
        )
        self.say.info(
            f"encoder frozen: each image is encoded once and its embedding reused in later epochs "
            f"(in memory up to {settings.embedding_cache_memory_mb} MB, then in {cache.folder})"
        )
        return cache

    def batch_loss(self, batch) -> torch.Tensor:
        """The loss of an (images, masks, patch targets, names) batch: the modality's mask and the self-prompt."""
        images, masks, patches, _ = batch
        cache, settings = self.cache, self.settings
        inputs = cache(images) if cache is not None else images.to(self.device)  # embeddings, or images
        masks, patches = masks.to(self.device), patches.to(self.device)
        with self.autocast():
            output = self.network(inputs)
            loss = mask_loss(output.modality_logits[:, settings.modality : settings.modality + 1].float(), masks)
            return loss + settings.patch_loss_weight * F.binary_cross_entropy_with_logits(
                output.patch_logits.float(), patches
            )

    def run_epoch(self, epoch: int) -> None:
        started = time.perf_counter()
        if self.cache is not None:
            self.cache.refresh()  # the encoder is frozen, but should anything change it, no stale entry is used
        settings, rank = self.settings, self.group.rank
        losses = _epoch(
            self.loader, settings, epoch, self.batch_loss, self.optimizer, self.scheduler, rank, "epoch loss:.4f"
        )
        if rank != 0:
            self.history.completed = epoch + 1
            return
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else math.nan}
        if self.valid_set is not None and len(self.valid_set):
            entry["valid_dice"], entry["valid_empty"] = _validate(
                self.model, self.valid_set, settings, self.valid_embed, self.autocast, self.run_log, epoch + 1
            )
        improved = self.history.record(entry)
        if improved:
            save_official(self.model, self.best_path)
            self.history.best_saved(entry)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        self.run_log.info(json.dumps(entry))
        self._save_last(epoch)
        self.history.completed = epoch + 1
        self.say.info(self.history.epoch_line(entry, improved))

    def _save_last(self, epoch: int) -> None:
        """Everything a resumed run needs to continue as this one would (the epoch's order follows from it)."""
        with atomic_file(self.last_path) as temporary:
            torch.save(
                {
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "epoch": epoch,
                    "best": self.history.best,
                    "best_epoch": self.history.best_epoch,
                    "history": json.dumps(self.history.history),
                    "settings": json.dumps(asdict(self.settings)),
                },
                temporary,
            )

    def finish(self) -> dict:
        if self.cache is not None:
            self.say.info(f"embedding cache: {self.cache.describe()}")
            if self.group.world > 1:
                dist.barrier()  # every process is done reading before the files go
            if self.group.rank == 0:
                self.cache.remove_files()
        warnings = self.history.warnings(self.valid_set, self.settings) if self.group.rank == 0 else []
        for warning in warnings:
            self.say.warning(warning)
        history = self.history
        return {
            "history": history.history,
            "best_valid_dice": history.best if history.best >= 0 else None,
            "best_epoch": history.best_epoch,
            "best_checkpoint": str(self.best_path),
            "warnings": warnings,
        }


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


class EpochHistory:
    """One fine-tuning run's epochs: how many are done, each one's record, the best; writes their readable lines."""

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

    def resume_line(self, last_path: Path) -> str:
        if self.completed >= self.epochs:
            return f"{last_path} already holds all {self.epochs} epochs; give more epochs to train longer"
        done = (
            f"epoch 1 of {self.epochs} is" if self.completed == 1 else f"epochs 1-{self.completed} of {self.epochs} are"
        )
        return f"resuming from {last_path}: {done} done; continuing with epoch {self.completed + 1}"

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
    with _process_group(device) as group:
        return _distill(model, teacher, train_set, settings, _process_device(device, group), report, group)


def _distill(model, teacher, train_set, settings: TrainSettings, device, report, group: ProcessGroup) -> dict:
    torch.manual_seed(settings.seed)
    out_dir = Path(settings.out_dir)
    run_log = _file_logger(out_dir, "distill")
    say = _Messages(run_log, report, enabled=group.rank == 0)
    model, teacher = model.to(device).eval(), teacher.to(device).eval()
    parameters = select_trainable(model, ["adapters"])
    loader = _loader(train_set, settings, model, group)
    optimizer, scheduler = _optimisation(parameters, settings, len(loader))
    batch_loss = _distillation_loss(_parallel(model.SemiTViT, group), teacher, device, settings)
    history, checkpoint = [], out_dir / "distilled.pth"
    try:
        for epoch in range(settings.epochs):
            started = time.perf_counter()
            losses = _epoch(loader, settings, epoch, batch_loss, optimizer, scheduler, group.rank, "distill mse:.3g")
            entry = {
                "epoch": epoch + 1,
                "mse": float(np.mean(losses)),
                "seconds": round(time.perf_counter() - started, 1),
            }
            history.append(entry)
            if group.rank == 0:
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
        message = f"interrupted in epoch {len(history) + 1}/{settings.epochs}; {kept}"
        say.log_only(message)
        raise TrainingInterrupted(message) from interrupt
    return {"history": history, "checkpoint": str(checkpoint)}


def _distillation_loss(
    student: torch.nn.Module, teacher: torch.nn.Module, device: torch.device, settings: TrainSettings
):
    """batch -> the mean-squared error between the student's and the teacher's embeddings of its images."""

    def batch_loss(batch) -> torch.Tensor:
        images = batch[0].to(device)
        with torch.no_grad(), _autocast(device, settings.mixed_precision):
            target = teacher(images).float()
        with _autocast(device, settings.mixed_precision):
            embedding = student(images).float()
        if embedding.shape != target.shape:
            raise DeLightSAMError(
                f"teacher embedding {tuple(target.shape[1:])} does not match the student's {tuple(embedding.shape[1:])}"
            )
        return F.mse_loss(embedding, target)

    return batch_loss


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
    overlay_folder = Path(out_dir) / "overlays" if overlays and out_dir is not None else None
    rows, names, seconds = [], [], []
    try:
        with tqdm(total=len(dataset), desc="evaluate", unit="image", leave=True) as bar:
            for index in range(len(dataset)):
                name, row, second = _score_image(predictor, dataset[index], modality, threshold, overlay_folder)
                rows.append(row)
                names.append(name)
                seconds.append(second)
                if run_log is not None:
                    run_log.info("%s %s", name, json.dumps(asdict(row)))
                bar.set_postfix(dice=f"{np.mean([row.dice for row in rows]):.4f}", refresh=False)  # shown by update
                bar.update()
    except KeyboardInterrupt:
        if run_log is not None:
            run_log.warning(f"interrupted after {len(rows)} of {len(dataset)} images; no metrics written")
        raise
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


def _score_image(predictor, item, modality: int, threshold: float, overlay_folder: Optional[Path]):
    """(name, scores, seconds) of one (image, reference mask, name) item; its overlay PNG when asked for."""
    image, reference, name = item
    start = time.perf_counter()
    predictor.set_image(image)
    mask = predictor.predict(modality, threshold=threshold).mask
    seconds = time.perf_counter() - start
    if overlay_folder is not None:
        write_overlay(image, mask, reference, overlay_folder / f"{Path(name).stem}.png")
    return name, score(mask, reference), seconds
