"""The HDF5 feature store: one file per dataset x backbone, readable with plain h5py.

Layout::

    features.h5
      attrs: dataset, dataset_kind, backbone, backbone_kind, model, weights, dim,
             preprocessing (JSON), class_names (JSON list, index = label), versions (JSON),
             created (ISO time)
      /<split>/features   float32 (N, D)  one row per image
      /<split>/labels     int64   (N,)    the dataset's integer labels (-1: no class)
      /<split>/index      int64   (N,)    index_in_split of the manifest row

Rows of a split follow the manifest's order. Open with ``h5py.File(path)["train/features"][:]`` or
with :func:`read_split`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from embedlens.atomic import atomic_path


@dataclass
class SplitFeatures:
    """The rows of one split of a feature store."""

    features: np.ndarray  # float32 (N, D)
    labels: np.ndarray    # int64 (N,)
    index: np.ndarray     # int64 (N,), index_in_split


def _attr_value(value):
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def write_store(path: str | Path, splits: dict[str, SplitFeatures], attrs: dict) -> None:
    """Write a feature store atomically. Dict and list attributes are stored as JSON strings."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as handle:
            for key, value in attrs.items():
                handle.attrs[key] = _attr_value(value)
            for split, data in splits.items():
                group = handle.create_group(split)
                group.create_dataset("features", data=np.asarray(data.features, dtype=np.float32))
                group.create_dataset("labels", data=np.asarray(data.labels, dtype=np.int64))
                group.create_dataset("index", data=np.asarray(data.index, dtype=np.int64))


JSON_ATTRS = ("preprocessing", "class_names", "versions")


def read_attrs(path: str | Path) -> dict:
    """The store's attributes, with the JSON ones decoded."""
    with h5py.File(path, "r") as handle:
        attrs = {key: handle.attrs[key] for key in handle.attrs}
    for key in JSON_ATTRS:
        if key in attrs:
            attrs[key] = json.loads(attrs[key])
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in attrs.items()}


def store_splits(path: str | Path) -> list[str]:
    """The split names a store holds, in the order they were written."""
    with h5py.File(path, "r") as handle:
        return list(handle.keys())


def read_split(path: str | Path, split: str) -> SplitFeatures:
    """Load one split; the error names the splits the store has when ``split`` is not one."""
    with h5py.File(path, "r") as handle:
        if split not in handle:
            raise KeyError(f"{path}: no split {split!r}; the store has {', '.join(handle.keys())}")
        group = handle[split]
        return SplitFeatures(group["features"][:], group["labels"][:], group["index"][:])

