"""Shard files and the merge: K extraction jobs write shards, one streaming merge makes the store.

A shard is a contiguous slice of the manifest (all splits, in manifest order), named as Snakemake's
scatter names it ("2-of-4"). Each extraction job writes its rows' features to its own HDF5 file, batch
by batch, with the job's feature recipe (:mod:`embedlens.recipe`); :func:`merge_shards` streams them
into the feature store (see :mod:`embedlens.store`). A killed run loses at most the shards in
progress. Nothing here imports torch, so the merge job stays small.

Shard layout::

    attrs: recipe (JSON), seconds (extraction time)
    rows      int64   (n,)    manifest row numbers
    features  float32 (n, D)  one row per manifest row; zeros where the image failed to decode
    failed    int64   (m,)    positions in ``rows`` of the images that failed to decode
    reasons   str     (m,)    why each failed

An image that fails to decode has no row in the store; the store lists it under ``/skipped``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from embedlens.atomic import atomic_path
from embedlens.manifest import manifest_values, read_manifest
from embedlens.recipe import recipe_differences
from embedlens.store import FeatureStore, StoreMismatch, chunk_rows_for, create_store, write_skipped
from embedlens.summary import Artifact, StageSummary

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


@dataclass
class ShardFile:
    """An open shard being written: fill ``features`` (row ``i`` for ``rows[i]``), then :meth:`finish`."""

    handle: h5py.File
    features: h5py.Dataset

    def finish(self, failed: Mapping[int, str], seconds: float) -> None:
        """Record the failed positions with their reasons and the extraction time."""
        positions = sorted(failed)
        self.handle.create_dataset("failed", data=np.asarray(positions, dtype=np.int64))
        self.handle.create_dataset("reasons", data=np.asarray([failed[p] for p in positions], dtype=object),
                                   dtype=h5py.string_dtype())
        self.handle.attrs["seconds"] = float(seconds)


@contextmanager
def open_shard(path: str | Path, rows: np.ndarray, dim: int, recipe: Mapping) -> Iterator[ShardFile]:
    """Write a shard atomically: yields a :class:`ShardFile` whose ``features`` (len(rows), dim) the
    caller fills; the file appears under ``path`` only when the block ends without error and
    :meth:`ShardFile.finish` was called."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs["recipe"] = json.dumps(recipe)
        handle.create_dataset("rows", data=np.asarray(rows, dtype=np.int64))
        chunk = (max(1, min(len(rows), (4 << 20) // (4 * dim))), dim) if len(rows) else None
        shard = ShardFile(handle, handle.create_dataset("features", shape=(len(rows), dim), dtype=np.float32,
                                                        chunks=chunk))
        yield shard
        if "failed" not in handle:
            raise RuntimeError(f"shard {path}: finish() was not called; the shard is incomplete")


@dataclass
class ShardHeader:
    """What a shard file says about itself, without its features."""

    path: Path
    recipe: dict
    rows: np.ndarray
    failed: np.ndarray
    reasons: list[str]
    seconds: float


def read_shard_header(path: str | Path) -> ShardHeader:
    with h5py.File(path, "r") as handle:
        if "recipe" not in handle.attrs or "failed" not in handle:
            raise ValueError(f"{path}: not a complete embedlens shard (no recipe or no failure list); "
                             f"delete it and run the workflow again")
        return ShardHeader(Path(path), json.loads(handle.attrs["recipe"]), handle["rows"][:],
                           handle["failed"][:], list(handle["reasons"].asstr()[:]),
                           float(handle.attrs["seconds"]))


def check_shard_recipes(headers: Sequence[ShardHeader], expected: Mapping | None = None) -> None:
    """Raise :class:`StoreMismatch` when shards were made with different recipes, or with another
    requested recipe or manifest than ``expected`` (a requested recipe plus ``manifest_digest``),
    naming the shard and the differing keys."""
    problems = []
    first = headers[0]
    for header in headers[1:]:
        differences = recipe_differences(header.recipe, first.recipe)
        if differences:
            problems.append(f"{header.path} differs from {first.path}: " + "; ".join(differences))
    if expected is not None:
        for header in headers:
            differences = recipe_differences(header.recipe, expected, keys=list(expected))
            if differences:
                problems.append(f"{header.path} differs from the config: " + "; ".join(differences))
    if problems:
        raise StoreMismatch("shards made with different feature recipes cannot be merged:\n  " +
                            "\n  ".join(problems) + "\nDelete the shards folder and run the workflow again "
                            "(Snakemake recomputes them with the current config).")


def merge_shards(shard_paths: Sequence[str | Path], manifest_path: str | Path, store_path: str | Path,
                 attrs: Mapping, *, expected: Mapping | None = None, chunk_rows: int | None = None) -> dict:
    """Stream shard files into the feature store at ``store_path``, one group per split in manifest
    order. Peak memory is one chunk of ``chunk_rows`` rows (default
    :func:`embedlens.store.chunk_rows_for` the dimension) plus about 40 bytes of bookkeeping per image:
    the manifest (``manifest_path``) is read without its text columns.

    Every manifest row must be covered exactly once; the error names the missing or repeated rows.
    Shards must share one recipe, equal to ``expected`` on its keys (see :func:`check_shard_recipes`).
    The store's attributes are ``attrs`` (dataset, class names, ...), the shards' recipe and what
    it resolved (backbone, model, weights, dim, preprocessing, versions), and the extraction figures.
    Images that failed to decode get no row and are listed under ``/skipped``.
    Returns the extraction figures: images, skipped, seconds (summed over shards), images_per_second
    (per job), shards.
    """
    if not shard_paths:
        raise ValueError("no shard files to merge")
    headers = [read_shard_header(path) for path in shard_paths]
    manifest = read_manifest(manifest_path, columns=["index_in_split", "split", "label"])
    check_shard_recipes(headers, expected)
    recipe = headers[0].recipe
    rows = np.concatenate([header.rows for header in headers])
    counts = np.bincount(rows, minlength=len(manifest)) if len(rows) else np.zeros(len(manifest), int)
    if len(counts) != len(manifest) or not np.all(counts == 1):
        missing = np.flatnonzero(counts[:len(manifest)] == 0)[:10].tolist()
        repeated = np.flatnonzero(counts > 1)[:10].tolist()
        raise ValueError(f"shards {list(map(str, shard_paths))} do not cover the {len(manifest)} manifest "
                         f"rows once each (missing e.g. {missing}, repeated e.g. {repeated}, "
                         f"out of range: {max(0, len(counts) - len(manifest))})")

    failed_rows = np.concatenate([header.rows[header.failed] for header in headers]).astype(np.int64)
    reasons = [reason for header in headers for reason in header.reasons]
    good = np.ones(len(manifest), dtype=bool)
    good[failed_rows] = False
    splits = list(pd.unique(manifest["split"]))  # in manifest order
    split_of = manifest["split"].cat.codes.to_numpy()
    codes = {split: manifest["split"].cat.categories.get_loc(split) for split in splits}
    # Each manifest row's position in its split of the store (-1 for a failed image).
    destination = np.full(len(manifest), -1, dtype=np.int64)
    split_rows = {}
    for split in splits:
        members = np.flatnonzero((split_of == codes[split]) & good)
        destination[members] = np.arange(len(members))
        split_rows[split] = (manifest["label"].to_numpy()[members], manifest["index_in_split"].to_numpy()[members])

    resolved = recipe["resolved"]
    backbone = recipe["backbone"]
    images = int(good.sum())
    seconds = float(sum(header.seconds for header in headers))
    extraction = {"images": images, "skipped": int(len(failed_rows)), "seconds": round(seconds, 3),
                  "images_per_second": round(images / seconds, 3) if seconds > 0 else None,
                  "shards": len(headers), "device": resolved["device"], "precision": resolved["precision"],
                  "preprocess": recipe["extract"]["preprocess"]}
    store_attrs = {**attrs, "backbone": backbone["name"], "backbone_kind": backbone["kind"],
                   "model": resolved["model"], "weights": resolved["weights"],
                   "preprocessing": resolved["preprocessing"], "versions": resolved["versions"],
                   "recipe": recipe, "manifest_digest": recipe["manifest_digest"], "extraction": extraction,
                   "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    failed_frame = pd.DataFrame({"split": manifest["split"].to_numpy()[failed_rows].astype(str),
                                 "index_in_split": manifest["index_in_split"].to_numpy()[failed_rows],
                                 "source": manifest_values(manifest_path, failed_rows, "source"),
                                 "reason": reasons})
    chunk_rows = chunk_rows or chunk_rows_for(resolved["dim"])
    non_finite = []
    with atomic_path(store_path) as tmp, h5py.File(tmp, "w", track_order=True) as handle:
        datasets = create_store(handle, store_attrs, split_rows, resolved["dim"])
        for header in headers:
            with h5py.File(header.path, "r") as shard:
                for start in range(0, len(header.rows), chunk_rows):
                    part = header.rows[start:start + chunk_rows]
                    values = shard["features"][start:start + len(part)]
                    non_finite.append(part[good[part] & ~np.isfinite(values).all(axis=1)])
                    _copy_chunk(datasets, codes, split_of, destination, part, values)
        bad = np.sort(np.concatenate(non_finite))
        if len(bad):  # raised inside the atomic write: no store is left behind
            raise NonFiniteFeatures(_non_finite_message(attrs.get("dataset"), backbone["name"], manifest,
                                                        manifest_path, bad))
        write_skipped(handle, failed_frame.sort_values(["split", "index_in_split"]))
    return extraction


class NonFiniteFeatures(ValueError):
    """The backbone gave NaN or infinite features; no stage may read them."""


def _non_finite_message(dataset: str | None, backbone: str, manifest: pd.DataFrame, manifest_path: str | Path,
                        rows: np.ndarray, shown: int = 5) -> str:
    first = rows[:shown]
    sources = manifest_values(manifest_path, first, "source")
    listed = "; ".join(f"{manifest['split'].iloc[row]} #{manifest['index_in_split'].iloc[row]} ({source})"
                       for row, source in zip(first.tolist(), sources))
    return (f"dataset {dataset} x backbone {backbone}: {len(rows)} image(s) got NaN or infinite features, so no "
            f"feature store was written; first: {listed}. A broken model or weights file, or bfloat16 overflow "
            "(extract.amp: true), does this: check the backbone, or set extract.amp: false")


def _copy_chunk(datasets: Mapping[str, h5py.Dataset], codes: Mapping[str, int], split_of: np.ndarray,
                destination: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """Write the shard rows ``rows`` (their features ``values``) to their places in the store;
    ``split_of`` holds each manifest row's split code (``codes``: split -> code)."""
    where = destination[rows]
    for split, code in codes.items():
        take = (split_of[rows] == code) & (where >= 0)
        if not take.any():
            continue
        positions, part = where[take], values[take]
        order = np.argsort(positions, kind="stable")
        positions, part = positions[order], part[order]
        if positions[-1] - positions[0] + 1 == len(positions):
            datasets[split][positions[0]:positions[-1] + 1] = part
        else:
            datasets[split][positions] = part


def features_summary(store: FeatureStore, skipped_table: str = "skipped.csv") -> StageSummary:
    """The features stage's summary for the report: images, dimension, device, precision, time and
    speed of the extraction, and the table of images that failed to decode (``skipped_table``, a
    path relative to the summary)."""
    extraction = store.attrs["extraction"]
    recipe = store.recipe
    notes = [f"{recipe['backbone']['model']} ({recipe['backbone']['kind']}), weights: "
             f"{recipe['resolved']['weights']}; preprocessing {json.dumps(recipe['resolved']['preprocessing'])}."]
    if extraction["precision"] == "bfloat16":
        notes.append("The model ran under bfloat16 autocast on CUDA (extract.amp). Its effect on the "
                     "results against float32 has not been measured on a GPU yet; set extract.amp: "
                     "false for float32 features.")
    if extraction["skipped"]:
        notes.append(f"{extraction['skipped']} images passed the manifest's header check but failed to "
                     f"decode at extraction; they have no features and are listed in {skipped_table}.")
    return StageSummary(
        stage="features", title="Feature extraction", dataset=str(store.attrs["dataset"]),
        backbone=str(store.attrs["backbone"]),
        headline={"images": extraction["images"], "skipped": extraction["skipped"], "dim": store.dim,
                  "device": extraction["device"], "precision": extraction["precision"],
                  "preprocess": extraction["preprocess"], "seconds": extraction["seconds"],
                  "images_per_second": extraction["images_per_second"]},
        tables=[Artifact(skipped_table, "Images that failed to decode during extraction, with the "
                                        "decoder's reason (split, index_in_split, source, reason).")],
        notes=notes, settings=recipe)
