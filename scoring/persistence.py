"""Selector state on disk in formats that execute no code when read: JSON plus safetensors.

A document is nested dicts (string keys), lists, strings, numbers, booleans, None, numpy arrays
and torch tensors. Arrays and tensors go to ``arrays.safetensors`` under their path in the
document (``state.members.0.weight``); everything else goes to ``state.json``, where an array is
a ``{"__array__": path}`` (or ``"__tensor__"``) reference. Nothing is pickled, and loading never
calls ``torch.load``: safetensors holds raw bytes with a JSON header.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ARRAYS_FILE = "arrays.safetensors"
DOCUMENT_FILE = "state.json"


def save_document(directory: str | Path, document: dict[str, Any]) -> Path:
    """Write ``document`` into ``directory`` (created if needed); each file appears whole or not at all."""
    from safetensors.numpy import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    encoded = _encode(document, "", arrays)
    _write_atomic(directory / ARRAYS_FILE, save(arrays) if arrays else save({}))
    _write_atomic(directory / DOCUMENT_FILE, json.dumps(encoded).encode())
    return directory


def load_document(directory: str | Path) -> dict[str, Any]:
    """Read a document written by :func:`save_document`; a clear error when the folder is not one."""
    from safetensors.numpy import load

    directory = Path(directory)
    if not (directory / DOCUMENT_FILE).is_file():
        raise FileNotFoundError(f"no saved selector in {directory} (missing {DOCUMENT_FILE})")
    arrays = load((directory / ARRAYS_FILE).read_bytes())
    return _decode(json.loads((directory / DOCUMENT_FILE).read_text()), arrays)


def _encode(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        arrays[path] = value.detach().cpu().contiguous().numpy()
        return {"__tensor__": path}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{path}: object arrays cannot be saved safely")
        arrays[path] = np.ascontiguousarray(value)
        return {"__array__": path}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{path}: only string keys can be saved, got {list(value)[:3]}")
        return {k: _encode(v, f"{path}.{k}" if path else k, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{path}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{path}: {type(value).__name__} cannot be saved safely")


def _decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        if set(value) == {"__tensor__"}:
            import torch

            return torch.from_numpy(arrays[value["__tensor__"]].copy())
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
