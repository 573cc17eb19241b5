"""Inference engines: the one place that names them, says what each needs, and builds them.

An engine turns a loaded network into the callable that runs it (images (B, 3, S, S) in, the network's output
out), computing the same function as the network as written:

- ``eager``: the network as built; the reference every other engine is measured against.
- ``fused``: BatchNorm folded into the convolutions, attention through ``F.scaled_dot_product_attention``,
  channels-last memory (:mod:`.fused`). The GPU default.
- ``fast``: ``fused`` with a cache-blocked image encoder, leaner decoders and a thread count that follows how
  busy the CPU is (:mod:`.fast`). The CPU default.
- ``onnx``: ``fused`` exported to ONNX and run by onnxruntime on the CPU (:mod:`.onnx`; needs ``onnx`` and
  ``onnxruntime``).
- ``compiled``: ``fused`` through ``torch.compile`` (:mod:`.fused`); for GPUs (on a CPU the first call compiles
  for minutes and it ran no faster than ``fast``). One graph per input shape, so batches keep one size.

Measurements and what was rejected: ``benchmarks/README.md``. Importing this package does not import torch; an
engine's module is imported when it is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UnknownNameError

AUTO = "auto"


@dataclass(frozen=True)
class Engine:
    """One inference path.

    builder: ``"module:function"`` in this package; the function takes the model and returns the runner (a new
    module or callable; the model passed in is left as it is, so its state_dict keeps the official names).
    default_for: device types (``"cpu"``, ``"cuda"``, ``"mps"``) on which ``auto`` picks this engine.
    fixed_batch: the runner is built for one input shape: callers keep every batch at one size (the predictor
    repeats the last image to fill a short batch).
    any_module: the builder takes any module built from the project's layers (LiteMedSAM's image encoder as
    well as the whole De-LightSAM network); False where it is written for De-LightSAM's outputs only.
    """

    name: str
    summary: str
    builder: str
    default_for: tuple[str, ...] = ()
    fixed_batch: bool = False
    any_module: bool = True

    def build(self, model: Any) -> Callable:
        module_name, function = self.builder.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module_name}"), function)(model)


ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        Engine("eager", "the network as written (the reference)", "fused:eager_model"),
        Engine(
            "fused",
            "folded BatchNorm, fused attention, channels-last",
            "fused:fused_model",
            default_for=("cuda", "mps"),
        ),
        Engine(
            "fast",
            "cache-blocked CPU encoder, lean decoders, load-aware threads",
            "fast:fast_model",
            default_for=("cpu",),
        ),
        Engine(
            "onnx",
            "fused, exported to ONNX, run by onnxruntime (pip install onnx onnxruntime; De-LightSAM only)",
            "onnx:OnnxRunner",
            any_module=False,
        ),
        Engine(
            "compiled",
            "fused through torch.compile (GPUs; minutes to compile on a CPU)",
            "fused:compiled_model",
            fixed_batch=True,
        ),
    )
}


def get_engine(name: str, device_type: str = "cpu") -> Engine:
    """The engine called ``name``, or for ``auto`` the default engine of ``device_type``."""
    if name == AUTO:
        return next((engine for engine in ENGINES.values() if device_type in engine.default_for), ENGINES["fused"])
    try:
        return ENGINES[name]
    except (KeyError, TypeError):
        raise UnknownNameError(f"unknown engine '{name}'; use {AUTO} or one of {', '.join(ENGINES)}") from None


def build_runner(model: Any, name: str = AUTO, device_type: str = "cpu") -> Callable:
    """The runner of engine ``name`` (or the default engine of ``device_type``) for ``model``."""
    return get_engine(name, device_type).build(model)
