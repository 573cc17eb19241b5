"""Image embeddings of a frozen image encoder, computed once per image and reused in every later epoch.

When only decoder-side groups train (``queries``, ``prompt``, ``decoder``), nothing upstream of the image embedding
changes: the encoder (``SemiTViT``, with its ``med`` adapters) is frozen and in eval mode (BatchNorm uses its running
statistics), and preprocessing has no parameters. The patch decoder, dense prompter and mask decoder read the
embedding and train (MODEL.md §3-5), so exactly the encoder's output is cached, never anything after it.

A cached embedding is found by a key made of three hashes, so a stale one is never used:
- the network input (the normalised (3, S, S) tensor itself: a changed image, window or resize is a new key);
- the encoder's state (every parameter and buffer, hashed again whenever :meth:`EmbeddingCache.refresh` is called,
  once per epoch by the trainer): new weights make every old entry unreachable;
- the device type and precision the embedding was computed in.

Storage: CPU memory up to ``memory_bytes`` (4 MiB an image at 1024²), then ``.pt`` files in ``folder`` (under the
run folder), so large sets still fit, ``--resume`` reuses what an interrupted run computed, and several torchrun
processes share the files. An image augmentation that changes every epoch's input would only fill the cache with
entries never read again; the trainer therefore caches only datasets that declare ``augments = False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from ..atomic import atomic_file

logger = logging.getLogger(__name__)


def tensor_digest(tensors, digest=None):
    """Feed the exact bytes (any dtype, any device) of ``tensors`` into a blake2b digest; returns the digest."""
    digest = digest or hashlib.blake2b(digest_size=20)
    for tensor in tensors:
        data = tensor.detach().reshape(-1).cpu().contiguous()
        digest.update(str((data.dtype, tuple(tensor.shape))).encode())
        digest.update(data.view(torch.uint8).numpy())
    return digest


def module_state_digest(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer of ``module``, with their names."""
    digest = hashlib.blake2b(digest_size=20)
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        tensor_digest([value], digest)
    return digest.hexdigest()


class EmbeddingCache:
    """Call with (B, 3, S, S) network inputs (CPU); returns the encoder's (B, C, h, w) embeddings on ``device``,
    running the encoder only for the images it has not seen with the current encoder state."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        device: torch.device,
        folder: Path,
        memory_bytes: int,
        *,
        precision: str = "float32",
        autocast: Callable = contextlib.nullcontext,
    ) -> None:
        """``precision`` names what ``autocast()`` (a context manager factory) computes in; it is part of the key."""
        self.encoder, self.device, self.precision, self.autocast = encoder, device, precision, autocast
        self.folder, self.memory_bytes = Path(folder), memory_bytes
        self._memory: dict[str, torch.Tensor] = {}
        self._memory_used = 0
        self.encoded = self.reused = self.on_disk = 0  # images, for the log
        self.refresh()

    def refresh(self) -> None:
        """Hash the encoder's state again: after any change of its weights every earlier entry is out of reach."""
        key = f"{module_state_digest(self.encoder)}-{self.device.type}-{self.precision}"
        if key != getattr(self, "_encoder_key", key):
            self._memory.clear()  # unreachable now; files stay until remove_files (another state may come back)
            self._memory_used = 0
        self._encoder_key = key

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        keys = [
            tensor_digest([image], hashlib.blake2b(self._encoder_key.encode(), digest_size=20)).hexdigest()
            for image in images
        ]
        embeddings = [self._get(key) for key in keys]
        missing = [index for index, embedding in enumerate(embeddings) if embedding is None]
        if missing:
            with torch.no_grad(), self.autocast():
                computed = self.encoder(images[missing].to(self.device))
            for index, embedding in zip(missing, computed):
                embeddings[index] = embedding.detach().cpu().clone()  # clone: not a view keeping the batch alive
                self._put(keys[index], embeddings[index])
        self.encoded += len(missing)
        self.reused += len(keys) - len(missing)
        return torch.stack(embeddings).to(self.device)

    def _get(self, key: str) -> Optional[torch.Tensor]:
        if key in self._memory:
            return self._memory[key]
        path = self.folder / f"{key}.pt"
        if path.is_file():
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError):  # unreadable: compute it again
                logger.debug("ignoring unreadable cached embedding %s", path)
        return None

    def _put(self, key: str, embedding: torch.Tensor) -> None:
        size = embedding.numel() * embedding.element_size()
        if self._memory_used + size <= self.memory_bytes:
            self._memory[key] = embedding
            self._memory_used += size
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.folder / f"{key}.pt") as temporary:
            torch.save(embedding, temporary)
        self.on_disk += 1

    def describe(self) -> str:
        """Where the embeddings are, for the log."""
        where = f"{self._memory_used / 2**20:.1f} MB in memory"
        if self.on_disk:
            where += f", {self.on_disk} files in {self.folder}"
        return f"{self.encoded} images encoded, {self.reused} embeddings reused ({where})"

    def remove_files(self) -> None:
        """Delete the on-disk part (a finished run no longer needs it)."""
        shutil.rmtree(self.folder, ignore_errors=True)
