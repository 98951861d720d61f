"""Model versions: a content hash of the weights plus the time.

The version string (``<hash12>-<UTC time>``) is what users see next to every priority, so two
fits giving the same weights share the hash and a reader can tell which model ranked a task.
Saving and loading live in :mod:`scoring.persistence` (JSON + safetensors, never pickle).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import torch


def state_hash(state: Mapping[str, Any]) -> str:
    """SHA-256 over the names, shapes and bytes of every tensor (and repr of other values), in key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, np.ndarray):
            digest.update(str(value.shape).encode() + str(value.dtype).encode() + np.ascontiguousarray(value).tobytes())
        elif isinstance(value, Mapping):
            digest.update(state_hash(value).encode())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def make_version(state: Mapping[str, Any], when: datetime | None = None) -> str:
    """'<first 12 hex of the weights hash>-<YYYYmmddTHHMMSSZ>'."""
    when = when or datetime.now(timezone.utc)
    return f"{state_hash(state)[:12]}-{when.strftime('%Y%m%dT%H%M%SZ')}"
