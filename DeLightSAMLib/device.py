"""Which device and precision to run on: ``auto`` or a name a user typed, checked against what torch sees."""

from __future__ import annotations

import re

import torch

from .errors import DeLightSAMError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE = re.compile(r"(cpu|cuda|mps)(?::([0-9]+))?", re.ASCII)


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` name one, and a
    device that is not there is an error."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise DeLightSAMError(f"device must be a name such as 'cuda' or 'cpu', not {device!r}")
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    match = _DEVICE.fullmatch(name)
    if match is None:
        raise DeLightSAMError(f"unknown device '{device}'; use auto, cpu, mps, cuda or cuda:N (N a GPU number)")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeLightSAMError(
                "device 'cuda' was requested but this PyTorch sees no CUDA GPU (a CPU-only build, or no driver); "
                "use --device cpu or auto, or install a CUDA build of PyTorch"
            )
        if index is not None and int(index) >= torch.cuda.device_count():
            raise DeLightSAMError(
                f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} "
                f"CUDA GPU(s), numbered from 0"
            )
    elif index is not None and int(index) != 0:
        raise DeLightSAMError(f"device '{device}' does not exist; use '{kind}'")
    if kind == "mps" and not _mps_available():
        raise DeLightSAMError("device 'mps' was requested but Apple MPS is not available here; use cpu or auto")
    return torch.device(kind if index is None else f"{kind}:{int(index)}")


def select_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``float32``, ``bfloat16`` or ``float16`` (names or torch dtypes); lower precisions need a GPU."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        resolved = dtype
    elif isinstance(dtype, str) and dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise DeLightSAMError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if resolved != torch.float32 and device.type == "cpu":
        raise DeLightSAMError(f"{resolved} inference needs a GPU; on the CPU use float32")
    return resolved


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()
