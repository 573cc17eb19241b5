"""Inference engines: the one place that names them, says what each needs, and builds them.

An engine turns a loaded network into the callable that runs it (images (B, 3, S, S) in, the network's output
out), computing the same function as the network as written:

- ``eager``: the network as built; the reference every other engine is measured against. LiteMedSAM's CPU
  default (parity with the released pipeline).
- ``fused``: BatchNorm folded into the convolutions, attention through ``F.scaled_dot_product_attention``,
  channels-last memory (:mod:`.fused`). The GPU default.
- ``fast``: ``fused`` with a cache-blocked image encoder, leaner decoders and a thread count that follows how
  busy the CPU is (:mod:`.fast`). De-LightSAM's CPU default.
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

# The networks an engine can run, by the name the registry's checkpoints use for them, and their titles.
DELIGHTSAM, LITEMEDSAM = "delightsam", "litemedsam"
MODELS: dict[str, str] = {DELIGHTSAM: "De-LightSAM", LITEMEDSAM: "LiteMedSAM"}
GPUS = ("cuda", "mps")


@dataclass(frozen=True)
class Engine:
    """One inference path.

    builder: ``"module:function"`` in this package; the function takes the model and returns the runner (a new
    module or callable; the model passed in is left as it is, so its state_dict keeps the official names).
    default_for: the (model, device type) pairs on which ``auto`` picks this engine (``"cpu"``, ``"cuda"``,
    ``"mps"``); one engine per pair.
    models: the networks it runs (see ``MODELS``): all of them where the builder takes any module built from the
    project's layers (LiteMedSAM's image encoder as well as the whole De-LightSAM network).
    fixed_batch: the runner is built for one input shape: callers keep every batch at one size (the predictor
    repeats the last image to fill a short batch).
    compiles: the first call compiles the runner (minutes on a CPU).
    requires: the optional Python packages it needs.
    """

    name: str
    summary: str
    builder: str
    default_for: tuple[tuple[str, str], ...] = ()
    models: tuple[str, ...] = tuple(MODELS)
    fixed_batch: bool = False
    compiles: bool = False
    requires: tuple[str, ...] = ()

    def build(self, model: Any) -> Callable:
        module_name, function = self.builder.split(":")
        return getattr(importlib.import_module(f"{__name__}.{module_name}"), function)(model)


def _on(devices: tuple[str, ...], models: tuple[str, ...] = tuple(MODELS)) -> tuple[tuple[str, str], ...]:
    return tuple((model, device) for model in models for device in devices)


ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        # LiteMedSAM on a CPU: upstream's arithmetic order keeps the logits within 1e-4 of the released pipeline's;
        # fast's reassociation adds up to 1.3e-4 (same masks) for about 0.8 x the time.
        Engine(
            "eager",
            "the network as written (the reference)",
            "fused:eager_model",
            default_for=_on(("cpu",), (LITEMEDSAM,)),
        ),
        Engine("fused", "folded BatchNorm, fused attention, channels-last", "fused:fused_model", default_for=_on(GPUS)),
        Engine(
            "fast",
            "cache-blocked CPU encoder, lean decoders, load-aware threads",
            "fast:fast_model",
            default_for=_on(("cpu",), (DELIGHTSAM,)),
        ),
        Engine(
            "onnx",
            "fused, exported to ONNX, run by onnxruntime (pip install onnx onnxruntime; De-LightSAM only)",
            "onnx:OnnxRunner",
            models=(DELIGHTSAM,),
            requires=("onnx", "onnxruntime"),
        ),
        Engine(
            "compiled",
            "fused through torch.compile (GPUs; minutes to compile on a CPU)",
            "fused:compiled_model",
            fixed_batch=True,
            compiles=True,
        ),
    )
}
FALLBACK = "fused"  # auto on a device type no engine names (any GPU-like device)


def default_engine(model: str = DELIGHTSAM, device_type: str = "cpu") -> Engine:
    """The engine ``auto`` means for ``model`` (a key of ``MODELS``) on ``device_type``."""
    return next(
        (engine for engine in ENGINES.values() if (model, device_type) in engine.default_for), ENGINES[FALLBACK]
    )


def get_engine(name: str, device_type: str = "cpu", model: str = DELIGHTSAM) -> Engine:
    """The engine called ``name``, or for ``auto`` the default engine of ``model`` on ``device_type``; an engine
    that does not run ``model`` is refused, naming those that do."""
    if name == AUTO:
        return default_engine(model, device_type)
    try:
        engine = ENGINES[name]
    except (KeyError, TypeError):
        raise UnknownNameError(f"unknown engine '{name}'; use {AUTO} or one of {', '.join(ENGINES)}") from None
    if model not in engine.models:
        runs = " and ".join(MODELS[key] for key in engine.models)
        usable = [AUTO, *(other.name for other in ENGINES.values() if model in other.models)]
        raise UnknownNameError(
            f"engine '{engine.name}' runs {runs} only; for {MODELS[model]} use {', '.join(usable[:-1])} or {usable[-1]}"
        )
    return engine


def describe_defaults() -> str:
    """What ``auto`` means, model by model, for help texts: "De-LightSAM: fast on cpu, fused on cuda and mps; ..."."""
    parts = []
    for model, title in MODELS.items():
        devices_of: dict[str, list[str]] = {}
        for device in ("cpu", *GPUS):
            devices_of.setdefault(default_engine(model, device).name, []).append(device)
        parts.append(f"{title}: " + ", ".join(f"{name} on {' and '.join(on)}" for name, on in devices_of.items()))
    return "; ".join(parts)


def build_runner(model: Any, name: str = AUTO, device_type: str = "cpu") -> Callable:
    """The runner of engine ``name`` (or De-LightSAM's default engine on ``device_type``) for ``model``."""
    return get_engine(name, device_type).build(model)
