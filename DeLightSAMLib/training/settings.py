"""What a training or distillation run is told (no torch here: the command line reads its defaults from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


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
    embedding_cache: bool = True  # with a frozen encoder, encode each image once (see embedding_cache.py)
    embedding_cache_memory_mb: int = 4096  # beyond this, cached embeddings go to files in the run folder
    seed: int = 0  # everything random in epoch e (batch order, loader seeds) is drawn from (seed, e) alone
    out_dir: str = "runs/delightsam"
    resume: bool = False
