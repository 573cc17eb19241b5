"""Predictor: encode an image once, then read any modality's mask from the cached decoder output."""

from __future__ import annotations

import contextlib
import numbers
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from .checkpoint import load_delightsam, load_model
from .config import DEFAULT_CONFIG, ModelConfig
from .device import select_device, select_dtype
from .engines import AUTO, DELIGHTSAM, get_engine
from .errors import ArgumentError
from .intensity import check_window
from .modeling import DeLightSAM, binarize_patch_logits
from .progress import ProgressCallback
from .registry import OFFICIAL_MODALITY_MAP, resolve_modality
from .transforms import ImageTransform, Window, threshold_logits


@dataclass
class Prediction:
    """One modality's result for the current image.

    mask: (H, W) bool at the image's size. logits: (H, W) float32 logits (not probabilities), when asked for.
    probability: sigmoid of the logits, when asked for. self_prompt: (h, w) bool patch map of the self-prompt
    (32 x 32 for the released model), rows and columns as the image's, stretched like it.
    """

    mask: np.ndarray
    modality: int
    self_prompt: np.ndarray
    logits: Optional[np.ndarray] = None
    probability: Optional[np.ndarray] = None


class Predictor:
    """``set_image`` once, then ``predict(modality)`` as often as wanted; the encoder runs once per image.

    Example::

        predictor = Predictor.from_checkpoint("delightsam", device="auto")
        predictor.set_image(rgb_or_gray_array)
        mask = predictor.predict("dermoscopy").mask
    """

    def __init__(
        self,
        model: DeLightSAM,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        modality_map: Optional[dict[str, int]] = None,
        engine: str = AUTO,
    ) -> None:
        self.device = select_device(device)
        self.dtype = select_dtype(dtype, self.device)
        self.engine = get_engine(engine, self.device.type, DELIGHTSAM)  # checked before the model is moved or rebuilt
        self.model = model.to(self.device).eval()
        self.runner = self.engine.build(self.model)  # what _run calls; the model itself stays as loaded
        self.modality_map = dict(modality_map or OFFICIAL_MODALITY_MAP)
        self.transform = ImageTransform(getattr(model, "config", DEFAULT_CONFIG).image_size)
        self.reset_image()

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Optional[str] = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        config: Optional[ModelConfig] = None,
        engine: str = AUTO,
    ) -> "Predictor":
        """Load a registry checkpoint (default: the official one) or a .pth path."""
        model, entry = load_delightsam(checkpoint, config, purpose="segmenting by modality")
        return cls(model, device=device, dtype=dtype, modality_map=entry.modality_map if entry else None, engine=engine)

    @property
    def description(self) -> str:
        """Device, precision and engine, for status lines."""
        return f"{self.device.type} {str(self.dtype).replace('torch.', '')} {self.engine.name}"

    # ------------------------------------------------------------------ single image
    def reset_image(self) -> None:
        self._modality_logits: Optional[torch.Tensor] = None  # (M, h, w) float32, CPU
        self._patch_logits: Optional[torch.Tensor] = None  # (h', w') float32, CPU
        self._full_logits: dict[int, torch.Tensor] = {}  # modality -> (H, W) logits at the image's size
        self.original_size: Optional[tuple[int, int]] = None

    @property
    def is_image_set(self) -> bool:
        return self._modality_logits is not None

    def set_image(self, image: np.ndarray, window: Optional[Window] = None) -> None:
        """Encode and decode one 2D image (see ``transforms.to_rgb8`` for what is accepted); caches all modalities."""
        self.reset_image()
        net_input = self.transform.prepare(image, window, device=self.device)
        modality_logits, patch_logits = self._run(net_input)
        self._modality_logits, self._patch_logits = modality_logits[0], patch_logits[0, 0]
        self.original_size = tuple(np.asarray(image).shape[:2])

    def predict(
        self,
        modality: str | int,
        *,
        threshold: float = 0.5,
        return_logits: bool = False,
        return_probability: bool = False,
    ) -> Prediction:
        """The mask of ``modality`` (name, alias or index) for the image given to ``set_image``."""
        if not self.is_image_set:
            raise RuntimeError("call set_image(image) before predict(modality)")
        index = resolve_modality(modality, self.modality_map)
        logits = self._full_logits.get(index)
        if logits is None:
            logits = self.transform.logits_to_image(self._modality_logits[None, index : index + 1], self.original_size)[
                0, 0
            ]
            self._full_logits[index] = logits
        result = Prediction(
            mask=threshold_logits(logits, threshold),
            modality=index,
            self_prompt=binarize_patch_logits(self._patch_logits).bool().numpy(),
        )
        if return_logits:
            result.logits = logits.numpy().copy()
        if return_probability:
            result.probability = torch.sigmoid(logits).numpy()
        return result

    # ------------------------------------------------------------------ many images
    def predict_batch(
        self,
        images: Sequence[np.ndarray] | Iterable[np.ndarray],
        modality: str | int,
        *,
        threshold: float = 0.5,
        batch_size: Optional[int] = None,
        window: Optional[Window] = None,
        return_logits: bool = False,
        progress: Optional[ProgressCallback] = None,
    ) -> list[Prediction]:
        """Masks for many 2D images (any sizes), ``batch_size`` images per network pass (default: 8 on a GPU,
        1 on a CPU, where larger batches only spill the cache-blocked encoder out of cache).

        Images of one value everywhere (blank slices, padding frames) go through the network once per distinct
        value and size: their result is the same, so this is exact and cheap. The next batch is prepared on a
        second thread while the network runs. ``progress(done, total)`` is called after each batch; raising
        from it stops the run.
        """
        index = resolve_modality(modality, self.modality_map)
        threshold_logits(np.zeros(0, np.float32), threshold)  # a bad threshold fails before any work
        if batch_size is None:
            batch_size = 1 if self.device.type == "cpu" else 8
        elif isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ArgumentError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
        if window is not None:
            window = check_window(window)
        images = [np.asarray(image) for image in images]
        representative: dict[int, int] = {}  # image index -> index of the identical blank image that runs
        seen_blank: dict[tuple, int] = {}
        for i, image in enumerate(images):
            key = _blank_key(image)
            if key is not None:
                representative[i] = seen_blank.setdefault(key, i)
        to_run = [i for i in range(len(images)) if representative.get(i, i) == i]
        chunks = [to_run[start : start + batch_size] for start in range(0, len(to_run), batch_size)]
        results: dict[int, Prediction] = {}

        def network_input(chunk: list[int]) -> torch.Tensor:
            batch = torch.cat([self.transform.prepare(images[i], window, device=self.device) for i in chunk])
            if self.engine.fixed_batch and len(chunk) < batch_size:
                # the runner is built for one batch shape: fill the last batch rather than build another
                batch = torch.cat([batch, batch[-1:].expand(batch_size - len(chunk), -1, -1, -1)])
            return batch

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(network_input, chunks[0]) if chunks else None
            for number, chunk in enumerate(chunks):
                net_input = pending.result()
                if number + 1 < len(chunks):
                    pending = pool.submit(network_input, chunks[number + 1])
                modality_logits, patch_logits = self._run(net_input)
                for item, i in enumerate(chunk):
                    logits = self.transform.logits_to_image(
                        modality_logits[item : item + 1, index : index + 1], images[i].shape[:2]
                    )[0, 0]
                    results[i] = Prediction(
                        mask=threshold_logits(logits, threshold),
                        modality=index,
                        self_prompt=binarize_patch_logits(patch_logits[item, 0]).bool().numpy(),
                        logits=logits.numpy() if return_logits else None,
                    )
                if progress is not None:
                    done = sum(1 for i in range(len(images)) if representative.get(i, i) in results)
                    progress(done, len(images))
        return [results[representative.get(i, i)] for i in range(len(images))]

    # ------------------------------------------------------------------ internals
    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def _run(self, net_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) -> ((B, M, h, w), (B, 1, h', w')) float32 logits on the CPU."""
        with self._autocast():
            output = self.runner(net_input)
        return output.modality_logits.float().cpu(), output.patch_logits.float().cpu()


def _blank_key(image: np.ndarray) -> Optional[tuple]:
    """A key shared by images with one value (or one colour) everywhere and the same shape; None otherwise."""
    if image.size == 0:
        return None
    first = image.reshape(-1, image.shape[-1])[0] if image.ndim == 3 else image.reshape(-1)[:1]
    if not np.all(image == first):
        return None
    return image.shape, image.dtype.str, tuple(first.tolist())


def load_predictor(
    checkpoint: Optional[str] = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    engine: str = "auto",
):
    """The predictor a checkpoint needs: ``Predictor`` (De-LightSAM, by modality) or ``box_predictor.BoxPredictor``
    (LiteMedSAM, by box). ``checkpoint`` is a registry name (default: the official De-LightSAM one) or a .pth path;
    the registry entry's config, or a file's parameter names, say which model it is."""
    from .box_predictor import BoxPredictor
    from .modeling import LiteMedSAM

    model, entry = load_model(checkpoint)
    if isinstance(model, LiteMedSAM):
        return BoxPredictor(model, device=device, dtype=dtype, engine=engine)
    return Predictor(
        model, device=device, dtype=dtype, modality_map=entry.modality_map if entry else None, engine=engine
    )
