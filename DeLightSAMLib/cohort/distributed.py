"""Sharding a cohort over the processes ``torchrun`` starts (one machine or several).

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; rank r segments cases i with i % WORLD_SIZE == r. The
processes meet once more at the end (a gloo process group, also between GPU machines: only small Python objects
travel) so that every rank knows every result and rank 0 can write the summary.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# Ranks finish their shards at different times and wait for the slowest at the end.
WAIT_FOR_OTHER_RANKS = timedelta(days=7)


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def shard(items: list, rank: int, world: int) -> list:
    """The items of ``rank``: i % world == rank."""
    return [item for index, item in enumerate(items) if index % world == rank]


def local_device(device: str) -> str:
    """``auto`` under torchrun on a GPU machine means this process's GPU (``cuda:LOCAL_RANK``)."""
    if str(device).lower() == "auto" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


class ProcessGroup:
    """A gloo group (or ``backend``'s) for the run's duration when launched with several processes; nothing
    otherwise. A group the caller already set up is used, and left to the caller."""

    def __init__(self, backend: str = "gloo") -> None:
        self.rank, self.world = rank_and_world()
        self.backend = backend
        self._owned = False

    def __enter__(self) -> "ProcessGroup":
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(self.backend, timeout=WAIT_FOR_OTHER_RANKS)
            self._owned = True
        return self

    def __exit__(self, *exc) -> None:
        if self._owned:
            dist.destroy_process_group()
            self._owned = False

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank (waits for all ranks)."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values
