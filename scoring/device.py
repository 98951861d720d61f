"""Where training runs: CUDA with bf16 autocast when there is a GPU, else CPU with channels_last.

Also seeding, so that a run with the same seed on the same machine gives the same numbers.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None or 'auto' -> CUDA if available else CPU; anything else is taken as given (and checked)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return resolved


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (tensor cores, no loss scaling needed); plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


COMPUTED_PRECISIONS = ("float32", "bfloat16")  # what a model runs in
PRECISIONS = ("auto", *COMPUTED_PRECISIONS)  # what a user may ask for: 'auto' resolves to one of them


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bfloat16' where the hardware computes it natively (CUDA, or a CPU with AVX512-BF16 or AMX),
    else 'float32': emulated bf16 is slower than float32. Other values are checked and returned."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bfloat16"
    native = device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return "bfloat16" if native else "float32"


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to the device; channels_last memory format (faster convolutions on CPU and on tensor cores)."""
    return model.to(device=device, memory_format=torch.channels_last)


def seed_everything(seed: int | None) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so that a run repeats. None leaves RNGs alone."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily cap torch's intra-op threads (None: leave as is, or ALC_TORCH_THREADS if set)."""
    n = n or (int(os.environ["ALC_TORCH_THREADS"]) if os.environ.get("ALC_TORCH_THREADS") else None)
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
