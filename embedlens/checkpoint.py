"""Checkpoints of the training loops (the classifier, clustering, distillation): written atomically, resumed only
when they belong to the same data and settings, and removed once a job's results are written.

A checkpoint is one ``torch.save`` file holding a ``fingerprint`` (SHA-256 of the settings that decide
the result and of the input arrays), whatever the loop needs to go on, and torch's random states, so
a resumed run continues the same random sequence as an uninterrupted one. A checkpoint with another
fingerprint is ignored (and overwritten by the next save).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from embedlens.atomic import atomic_path


def fingerprint(key: object, *arrays: np.ndarray) -> str:
    """SHA-256 of ``key`` (JSON-serialisable: the settings that decide a result) and of the arrays'
    dtypes, shapes and bytes."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8))  # the bytes in place: no copy of a large array
    return digest.hexdigest()


def save_checkpoint(path: str | Path, key: str, device: torch.device, **payload) -> None:
    """Write ``payload`` with the fingerprint ``key`` and torch's CPU (and ``device``'s CUDA) random
    state to ``path``, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"fingerprint": key, "cpu_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    **payload}, tmp)


def load_checkpoint(path: str | Path | None, key: str, device: torch.device) -> dict | None:
    """The payload saved at ``path`` when its fingerprint is ``key`` (torch's random states restored
    as saved); None when there is no such file or it belongs to other data or settings."""
    if path is None or not Path(path).is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved.get("fingerprint") != key:
        return None
    torch.set_rng_state(saved["cpu_rng"])
    if device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    return saved


def remove_checkpoints(folder: str | Path) -> None:
    """Delete a training's checkpoint folder once its results are written, and the ``checkpoints``
    folder that holds it when no other training's checkpoints are left there."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:  # another training of the stage is still running, or it never existed
        pass
