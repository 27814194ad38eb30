"""The HDF5 feature store: one file per dataset x backbone, readable with plain h5py.

Layout::

    features.h5
      attrs: dataset, dataset_kind, backbone, backbone_kind, model, weights, dim, splits (JSON list),
             preprocessing (JSON), class_names (JSON list, index = label), versions (JSON),
             recipe (JSON, see embedlens.recipe), manifest_digest, extraction (JSON: seconds,
             images, images_per_second, shards), created (ISO time)
      /<split>/features   float32 (N, D)  one row per embedded image, chunked by rows
      /<split>/labels     int64   (N,)    the dataset's integer labels (-1: no class)
      /<split>/index      int64   (N,)    index_in_split of the manifest row
      /skipped/split, /skipped/index_in_split, /skipped/source, /skipped/reason
                                          images of the manifest that failed to decode at extraction

Rows of a split follow the manifest's order; an image that failed to decode has no row (it is listed
under ``/skipped``), so ``index`` is how rows join the manifest. Open with
``h5py.File(path)["train/features"][:]``, :func:`read_split`, or :class:`FeatureStore` for chunked,
lazy access and the checks every analysis stage runs before it trusts a store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from embedlens.atomic import atomic_path
from embedlens.recipe import file_digest, recipe_differences

JSON_ATTRS = ("splits", "preprocessing", "class_names", "versions", "recipe", "extraction")
SKIPPED_GROUP = "skipped"
SKIPPED_FIELDS = ("split", "index_in_split", "source", "reason")
CHUNK_BYTES = 4 << 20   # HDF5 chunks of about 4 MB of feature rows
READ_BYTES = 64 << 20   # a streamed chunk holds about 64 MB of float32 features


def chunk_rows_for(dim: int) -> int:
    """Rows per streamed chunk of ``dim``-wide float32 features: about 64 MB, at least 1,024 rows."""
    return max(1024, READ_BYTES // (4 * max(int(dim), 1)))


def read_rows(data: h5py.Dataset | np.ndarray, rows: np.ndarray, block_rows: int | None = None) -> np.ndarray:
    """Rows ``rows`` (any order, repeats allowed) of a 2-D dataset, in that order. Scattered positions
    are not read by h5py's point selection, which is slow at scale (quadratic in older h5py): each
    block of ``block_rows`` consecutive rows (default :func:`chunk_rows_for` its width) that holds a
    wanted row is read as one contiguous slice, its wanted rows are kept, and the result is put in the
    asked order in memory. Memory: the result plus one block."""
    rows = np.asarray(rows, dtype=np.int64)
    block_rows = block_rows or chunk_rows_for(data.shape[1])
    unique, inverse = np.unique(rows, return_inverse=True)
    gathered = np.empty((len(unique), data.shape[1]), dtype=data.dtype)
    blocks = unique // block_rows
    starts = np.flatnonzero(np.diff(blocks, prepend=-1))
    for first, stop in zip(starts, [*starts[1:], len(unique)]):
        begin = int(blocks[first]) * block_rows
        block = data[begin:min(begin + block_rows, data.shape[0])]
        gathered[first:stop] = block[unique[first:stop] - begin]
    return gathered[inverse.reshape(-1)]


class StoreMismatch(ValueError):
    """A feature store does not belong to the config or manifest that a stage was given."""


@dataclass
class SplitFeatures:
    """The rows of one split of a feature store, in memory."""

    features: np.ndarray  # float32 (N, D)
    labels: np.ndarray    # int64 (N,)
    index: np.ndarray     # int64 (N,), index_in_split


@dataclass
class FeatureChunk:
    """Consecutive rows ``start .. start + len(labels)`` of one split."""

    split: str
    start: int
    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray


def _decode_attrs(raw: Mapping) -> dict:
    attrs = {key: raw[key] for key in raw}
    for key in JSON_ATTRS:
        if key in attrs:
            attrs[key] = json.loads(attrs[key])
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in attrs.items()}


class FeatureStore:
    """Lazy read access to a feature store: nothing but the attributes is read until asked for.

    Rows are addressed per split by position (0 .. N-1, the store's order). Features come whole, by
    positions, or as chunks of bounded size (:meth:`iter_chunks`); :meth:`check` refuses a store that
    does not belong to the caller's dataset, recipe or manifest.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no feature store there; build it with "
                                    f"snakemake {self.path}")
        with h5py.File(self.path, "r") as handle:
            self.attrs = _decode_attrs(handle.attrs)
            groups = [name for name in handle if isinstance(handle[name], h5py.Group)
                      and "features" in handle[name]]
        self.splits: list[str] = list(self.attrs.get("splits") or groups)

    # -- what the store is ---------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs.get("class_names") or [])

    @property
    def recipe(self) -> dict:
        return dict(self.attrs.get("recipe") or {})

    def __len__(self) -> int:
        return sum(self.split_size(split) for split in self.splits)

    def _group(self, handle: h5py.File, split: str) -> h5py.Group:
        if split not in self.splits:
            raise KeyError(f"{self.path}: no split {split!r}; the store has {', '.join(self.splits)}")
        return handle[split]

    def split_size(self, split: str) -> int:
        with h5py.File(self.path, "r") as handle:
            return int(self._group(handle, split)["labels"].shape[0])

    # -- reading rows --------------------------------------------------------------------------------

    def labels(self, split: str) -> np.ndarray:
        with h5py.File(self.path, "r") as handle:
            return self._group(handle, split)["labels"][:]

    def index(self, split: str) -> np.ndarray:
        """``index_in_split`` of every row of ``split``."""
        with h5py.File(self.path, "r") as handle:
            return self._group(handle, split)["index"][:]

    def features(self, split: str, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Feature rows of ``split``: all of them, or those at positions ``rows`` (in that order)."""
        with h5py.File(self.path, "r") as handle:
            data = self._group(handle, split)["features"]
            if rows is None:
                return data[:]
            rows = np.asarray(rows, dtype=np.int64)
            if not len(rows):
                return np.empty((0, data.shape[1]), dtype=data.dtype)
            if rows.min() < 0 or rows.max() >= data.shape[0]:
                raise IndexError(f"{self.path}: split {split!r} has {data.shape[0]} rows; asked for "
                                 f"positions {rows.min()}..{rows.max()}")
            return read_rows(data, rows)

    @contextmanager
    def open_features(self, split: str) -> Iterator[h5py.Dataset]:
        """The features of ``split`` as an open, read-only h5py dataset, read only where it is sliced:
        for searches that take rows block by block (:func:`embedlens.knn.cosine_topk`), so a split
        larger than memory never sits in it whole."""
        with h5py.File(self.path, "r") as handle:
            yield self._group(handle, split)["features"]

    def read_split(self, split: str) -> SplitFeatures:
        """Every row of ``split`` in memory."""
        with h5py.File(self.path, "r") as handle:
            group = self._group(handle, split)
            return SplitFeatures(group["features"][:], group["labels"][:], group["index"][:])

    def iter_chunks(self, splits: Sequence[str] | None = None, chunk_rows: int | None = None
                    ) -> Iterator[FeatureChunk]:
        """The rows of ``splits`` (default: all, in store order) as chunks of at most ``chunk_rows``
        rows (default :func:`chunk_rows_for` the store's dimension): memory stays one chunk, whatever
        the store's size."""
        chunk_rows = chunk_rows or chunk_rows_for(self.dim)
        with h5py.File(self.path, "r") as handle:
            for split in splits if splits is not None else self.splits:
                group = self._group(handle, split)
                count = group["labels"].shape[0]
                for start in range(0, count, chunk_rows):
                    stop = min(start + chunk_rows, count)
                    yield FeatureChunk(split, start, group["features"][start:stop],
                                       group["labels"][start:stop], group["index"][start:stop])

    def positions(self, split: str, *, labels: Sequence[int] | None = None,
                  index: Sequence[int] | None = None) -> np.ndarray:
        """Positions of the rows of ``split`` whose label is in ``labels`` and/or whose
        ``index_in_split`` is in ``index`` (ascending). An ``index`` the store lacks is an error."""
        keep = np.ones(self.split_size(split), dtype=bool)
        if labels is not None:
            keep &= np.isin(self.labels(split), np.asarray(list(labels), dtype=np.int64))
        if index is not None:
            stored = self.index(split)
            wanted = np.asarray(list(index), dtype=np.int64)
            absent = np.setdiff1d(wanted, stored)
            if len(absent):
                raise KeyError(f"{self.path}: split {split!r} has no rows for index_in_split "
                               f"{absent[:10].tolist()}{' ...' if len(absent) > 10 else ''}")
            keep &= np.isin(stored, wanted)
        return np.flatnonzero(keep)

    def skipped(self) -> pd.DataFrame:
        """The manifest's images that failed to decode at extraction: split, index_in_split, source,
        reason (no rows when none did)."""
        with h5py.File(self.path, "r") as handle:
            if SKIPPED_GROUP not in handle:
                return pd.DataFrame({name: pd.Series(dtype="int64" if name == "index_in_split" else "object")
                                     for name in SKIPPED_FIELDS})
            group = handle[SKIPPED_GROUP]
            return pd.DataFrame({name: group[name].asstr()[:] if name != "index_in_split" else group[name][:]
                                 for name in SKIPPED_FIELDS})

    def join_manifest(self, split: str, manifest: pd.DataFrame) -> pd.DataFrame:
        """The manifest rows of ``split`` in store order (row i = store position i), with the
        manifest's columns; the error says which images the store has that the manifest lacks."""
        rows = manifest[manifest["split"] == split].set_index("index_in_split", drop=False)
        index = self.index(split)
        absent = np.setdiff1d(index, rows.index.to_numpy())
        if len(absent):
            raise StoreMismatch(f"{self.path}: split {split!r} holds images {absent[:10].tolist()} that the "
                                f"manifest lacks; the store was built from another manifest")
        return rows.loc[index].reset_index(drop=True)

    # -- trust ---------------------------------------------------------------------------------------

    def check(self, *, dataset: str | None = None, recipe: Mapping | None = None,
              manifest: str | Path | None = None) -> None:
        """Raise :class:`StoreMismatch` unless the store was built from ``dataset``, with the
        requested ``recipe`` (:func:`embedlens.recipe.requested_recipe` of the caller's config) and
        from the manifest file ``manifest`` (by digest). The message names each differing key."""
        problems: list[str] = []
        built_from = self.attrs.get("dataset")
        if dataset is not None and built_from != dataset:
            problems.append(f"dataset: {json.dumps(built_from)} here, {json.dumps(dataset)} expected")
        stored = self.recipe
        if (recipe is not None or manifest is not None) and not stored:
            problems.append("the store records no feature recipe (it predates recipes)")
        elif recipe is not None:
            problems += recipe_differences(stored, recipe, keys=list(recipe))
        if manifest is not None and stored and stored.get("manifest_digest") != file_digest(manifest):
            problems.append(f"manifest_digest: the store was built from another version of {manifest}")
        if problems:
            raise StoreMismatch(
                f"{self.path} does not match this run:\n  " + "\n  ".join(problems) +
                f"\nRebuild it (snakemake --forcerun merge_features {self.path}) or point the stage at "
                f"the store of this dataset and backbone.")


def read_attrs(path: str | Path) -> dict:
    """The store's attributes, with the JSON ones decoded."""
    return FeatureStore(path).attrs


def store_splits(path: str | Path) -> list[str]:
    """The split names a store holds, in the order they were written."""
    return FeatureStore(path).splits


def read_split(path: str | Path, split: str) -> SplitFeatures:
    """Load one split; the error names the splits the store has when ``split`` is not one."""
    return FeatureStore(path).read_split(split)


def _attr_value(value):
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def create_store(handle: h5py.File, attrs: Mapping, split_rows: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 dim: int) -> dict[str, h5py.Dataset]:
    """Lay out an empty store in the open file ``handle``: ``attrs`` (dicts and lists as JSON), and for
    each split of ``split_rows`` (split -> (labels, index)) its labels and index and a preallocated,
    row-chunked float32 features dataset. Returns split -> features dataset, to be filled in place."""
    for key, value in {**attrs, "splits": list(split_rows), "dim": int(dim)}.items():
        handle.attrs[key] = _attr_value(value)
    chunk = max(1, CHUNK_BYTES // (4 * max(int(dim), 1)))
    datasets = {}
    for split, (labels, index) in split_rows.items():
        group = handle.create_group(split)
        count = len(labels)
        datasets[split] = group.create_dataset("features", shape=(count, dim), dtype=np.float32,
                                               chunks=(min(chunk, count), dim) if count else None)
        group.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        group.create_dataset("index", data=np.asarray(index, dtype=np.int64))
    return datasets


def write_skipped(handle: h5py.File, skipped: pd.DataFrame) -> None:
    """The ``/skipped`` group: the images that failed to decode (columns :data:`SKIPPED_FIELDS`)."""
    group = handle.create_group(SKIPPED_GROUP)
    text = h5py.string_dtype()
    for name in SKIPPED_FIELDS:
        if name == "index_in_split":
            group.create_dataset(name, data=skipped[name].to_numpy(np.int64))
        else:
            group.create_dataset(name, data=skipped[name].astype(str).to_numpy(dtype=object), dtype=text)


def write_store(path: str | Path, splits: Mapping[str, SplitFeatures], attrs: Mapping) -> None:
    """Write a small in-memory store atomically (tests and tools); the workflow's stores come from
    :func:`embedlens.extract.merge_shards`, which streams."""
    dims = {np.asarray(data.features).shape[1] for data in splits.values()}
    if len(dims) != 1:
        raise ValueError(f"splits have features of different widths {sorted(dims)}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as handle:
        datasets = create_store(handle, attrs, {s: (d.labels, d.index) for s, d in splits.items()}, dims.pop())
        for split, data in splits.items():
            datasets[split][...] = np.asarray(data.features, dtype=np.float32)
