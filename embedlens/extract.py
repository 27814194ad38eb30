"""Feature extraction: run a frozen backbone over manifest rows, in shards that merge into one store.

A shard is a contiguous slice of the manifest (all splits, in manifest order). Each shard job writes
its rows' features to its own small HDF5 file; :func:`merge_shards` joins them into the feature store
(see :mod:`embedlens.store`). A killed run loses at most the shards in progress.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from embedlens.atomic import atomic_path
from embedlens.datasets import ImageDataset
from embedlens.preprocess import preprocess_batch
from embedlens.store import SplitFeatures, write_store

SHARD_NAME = re.compile(r"^(\d+)-of-(\d+)$")


def shard_rows(total: int, shard: str) -> np.ndarray:
    """The manifest row numbers of ``shard``, named as Snakemake's scatter names it ("2-of-4").

    Shards are contiguous and differ in size by at most one row; every row is in exactly one shard.
    """
    match = SHARD_NAME.match(shard)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"shard name {shard!r}; expected '<i>-of-<k>' with 1 <= i <= k")
    number, count = int(match[1]), int(match[2])
    return np.array_split(np.arange(total), count)[number - 1]


class ManifestImages(Dataset):
    """The images of some manifest rows as uint8 tensors (H, W, 3), decoded by the dataset kind."""

    def __init__(self, dataset: ImageDataset, rows: pd.DataFrame):
        self.dataset = dataset
        self.splits = rows["split"].tolist()
        self.sources = rows["source"].tolist()

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            pixels = self.dataset.read_image(self.splits[i], self.sources[i])
        except Exception as error:
            raise RuntimeError(f"dataset {self.dataset.name!r}: cannot read {self.splits[i]} image "
                               f"{self.sources[i]!r}: {error}") from error
        return torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C"))  # writable, contiguous


def collate_images(batch: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Stack equally sized images into one (N, H, W, 3) tensor; keep mixed sizes as a list."""
    if all(image.shape == batch[0].shape for image in batch):
        return torch.stack(batch)
    return batch


class Progress:
    """Logs images done, images/s and the time left, at most every ``every`` seconds."""

    def __init__(self, total: int, logger: logging.Logger, label: str = "", every: float = 10.0):
        self.total, self.logger, self.label, self.every = total, logger, label, every
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.logger.info(self.message(now))

    def message(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        left_text = time.strftime("%H:%M:%S", time.gmtime(left)) if np.isfinite(left) else "?"
        percent = 100.0 * self.done / max(self.total, 1)
        return (f"{self.label}{self.done}/{self.total} images ({percent:.0f}%), "
                f"{rate:.1f} images/s, {left_text} left")


def extract_features(backbone, dataset: ImageDataset, rows: pd.DataFrame, *, device: torch.device,
                     batch_size: int = 64, num_workers: int = 2, amp: bool = True,
                     progress: Progress | None = None) -> np.ndarray:
    """Embed the images of ``rows`` (manifest rows) with ``backbone``; returns float32 (len(rows), dim).

    Workers only decode; resizing and normalisation run on ``device`` for whole batches. On CUDA with
    ``amp`` the model runs under bfloat16 autocast.
    """
    loader = DataLoader(ManifestImages(dataset, rows), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=collate_images, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    backbone.to(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and amp
                else contextlib.nullcontext())
    out = np.empty((len(rows), backbone.dim), dtype=np.float32)
    start = 0
    with torch.inference_mode(), autocast:
        for images in loader:
            batch = preprocess_batch(images, backbone.preprocessing, device)
            embeddings = backbone.embed(batch).float().cpu().numpy()
            out[start:start + len(embeddings)] = embeddings
            start += len(embeddings)
            if progress is not None:
                progress.update(len(embeddings))
    return out


def write_shard(path: str | Path, rows: np.ndarray, features: np.ndarray, backbone: dict) -> None:
    """Write one shard atomically: ``rows`` (manifest row numbers), their ``features``, and the
    backbone's description (``Backbone.describe()``) that the merged store records."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            handle.attrs["backbone"] = json.dumps(backbone)
            handle.create_dataset("rows", data=np.asarray(rows, dtype=np.int64))
            handle.create_dataset("features", data=np.asarray(features, dtype=np.float32))


def package_versions(names: Sequence[str] = ("embedlens", "torch", "torchvision", "timm", "transformers",
                                             "numpy", "h5py", "pillow")) -> dict[str, str]:
    """Installed versions of the packages that shape the features, plus Python's."""
    versions = {"python": sys.version.split()[0]}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def merge_shards(shard_paths: Sequence[str | Path], manifest: pd.DataFrame, store_path: str | Path,
                 attrs: dict) -> None:
    """Join shard files into the feature store at ``store_path``, one group per split in manifest order.

    Every manifest row must be covered exactly once; the error names the missing or repeated rows.
    The store's attributes are ``attrs`` (dataset, class names, ...), the backbone description the
    shards recorded (backbone, backbone_kind, model, weights, preprocessing), the feature dimension,
    package versions and creation time.
    """
    if not shard_paths:
        raise ValueError("no shard files to merge")
    rows_parts, feature_parts = [], []
    for path in shard_paths:
        with h5py.File(path, "r") as handle:
            rows_parts.append(handle["rows"][:])
            feature_parts.append(handle["features"][:])
            described = json.loads(handle.attrs["backbone"])
    rows = np.concatenate(rows_parts) if rows_parts else np.empty(0, dtype=np.int64)
    features = np.concatenate([part.reshape(-1, described["dim"]) for part in feature_parts])
    counts = np.bincount(rows, minlength=len(manifest)) if len(rows) else np.zeros(len(manifest), int)
    if len(counts) != len(manifest) or not np.all(counts == 1):
        missing = np.flatnonzero(counts[:len(manifest)] == 0)[:10].tolist()
        repeated = np.flatnonzero(counts > 1)[:10].tolist()
        raise ValueError(f"shards {list(map(str, shard_paths))} do not cover the {len(manifest)} manifest "
                         f"rows once each (missing e.g. {missing}, repeated e.g. {repeated}, "
                         f"out of range: {max(0, len(counts) - len(manifest))})")
    features = features[np.argsort(rows, kind="stable")]
    splits = {}
    for split in dict.fromkeys(manifest["split"]):
        mask = (manifest["split"] == split).to_numpy()
        splits[split] = SplitFeatures(features[mask], manifest["label"].to_numpy()[mask],
                                      manifest["index_in_split"].to_numpy()[mask])
    backbone = {"backbone": described["name"], "backbone_kind": described["kind"],
                "model": described["model"], "weights": described["weights"],
                "preprocessing": described["preprocessing"]}
    write_store(store_path, splits, {**attrs, **backbone, "dim": int(described["dim"]),
                                     "versions": package_versions(),
                                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
