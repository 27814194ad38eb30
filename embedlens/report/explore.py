"""The explore page of one dataset x backbone: a 2-D UMAP of the embeddings in which every point shows
its image on hover, coloured by class or by any per-image column a later stage provides.

Colourings beyond the class come from CSV files of one shape (:func:`read_map_columns`): columns
``split, index_in_split``, then one column per colouring: numbers get a continuous scale, anything
else categories (clusters, audit verdicts). A stage that wants its colouring on the map writes such a
file and registers it in ``MAP_COLUMNS`` of its ``rules/<stage>.smk``; the explore rule passes them on.

More images than ``max_points`` are sampled uniformly without replacement, deterministically from
``seed``, and the page says so. Thumbnails are packed into WebP sheets (:mod:`embedlens.report.media`):
a 20,000-point map of CIFAR-100 is ~20 MB, of which plotly.js is 5.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedlens.atomic import write_text_atomic
from embedlens.datasets import ImageDataset
from embedlens.images import short_reason
from embedlens.parallel import ordered_map
from embedlens.plots import UMAP_MIN_DIST, UMAP_NEIGHBOURS, embedding_map
from embedlens.report.media import SHEET_COLUMNS, thumbnail, thumbnail_sheets
from embedlens.report.render import number, render, script_json
from embedlens.store import FeatureStore

KEYS = ["split", "index_in_split"]
THUMBNAIL_CHUNK = 500  # images per decoding task


@dataclass(frozen=True)
class Colouring:
    """One choice of the map's "colour by" menu: a value for every point."""

    name: str
    values: list
    categorical: bool


def sample_points(total: int, limit: int, seed: int) -> np.ndarray:
    """Row numbers of the points to draw, ascending: all ``total`` when they are at most ``limit``,
    else ``limit`` drawn uniformly without replacement with ``seed``."""
    if total <= limit:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False))


def project_2d(features: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``features`` and the method's name: UMAP on cosine distance
    (:data:`~embedlens.plots.UMAP_NEIGHBOURS`, seeded, so the same run gives the same map); for fewer than 5 points, where UMAP has no
    neighbourhoods to work with, the first two principal components."""
    features = np.asarray(features, dtype=np.float32)
    if len(features) < 5:
        centred = features - features.mean(axis=0)
        _, _, axes = np.linalg.svd(centred, full_matrices=False)
        coords = np.zeros((len(features), 2))
        coords[:, :min(2, len(axes))] = centred @ axes[:2].T
        return coords, "PCA (too few points for UMAP)"
    import umap  # numba compiles on import; only the explore rule pays for it

    reducer = umap.UMAP(n_neighbors=min(UMAP_NEIGHBOURS, len(features) - 1), min_dist=UMAP_MIN_DIST,
                        metric="cosine", random_state=seed, n_jobs=1)
    return reducer.fit_transform(features), f"UMAP (cosine, {UMAP_NEIGHBOURS} neighbours)"


def read_map_columns(path: str | Path) -> pd.DataFrame:
    """A stage's per-image colourings: ``split, index_in_split`` plus one column per colouring. The error
    names the file and what it lacks."""
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    missing = [key for key in KEYS if key not in table.columns]
    if missing:
        raise ValueError(f"{path}: a map column file needs columns {', '.join(KEYS)} and then one column "
                         f"per colouring; missing {', '.join(missing)}")
    if len(table.columns) == len(KEYS):
        raise ValueError(f"{path}: no colouring column after {', '.join(KEYS)}")
    return table.astype({"split": str, "index_in_split": np.int64})


def colourings(points: pd.DataFrame, extra: Sequence[pd.DataFrame]) -> list[Colouring]:
    """The class colouring, then one per extra column, matched to ``points`` by (split, index_in_split):
    a point a file does not list shows as "n/a" (categories) or is left grey (numbers)."""
    result = [Colouring("class", points["class_name"].tolist(), True)]
    for table in extra:
        joined = points[KEYS].merge(table, on=KEYS, how="left", validate="one_to_one")
        for column in table.columns.drop(KEYS):
            values = joined[column]
            if pd.api.types.is_numeric_dtype(values):
                result.append(Colouring(column, [None if np.isnan(v) else v for v in values.astype(float)], False))
            else:
                result.append(Colouring(column, values.fillna("n/a").astype(str).tolist(), True))
    return result


def hover_text(choices: Sequence[Colouring]) -> dict[str, list[str | None]]:
    """What a point's hover box says of each colouring beyond the class: its value as the report prints
    figures (4 significant digits), None where the point has no value, which the box leaves out."""
    return {choice.name: [None if value is None else number(value) for value in choice.values]
            for choice in choices if choice.name != "class"}


def load_points(store: FeatureStore, manifest: pd.DataFrame, max_points: int, seed: int
                ) -> tuple[pd.DataFrame, np.ndarray]:
    """The sampled points (split, index_in_split, label, class_name, source) with their features, read
    from ``store`` row by row, so only the sample is in memory. The error names the store when it holds
    an image the manifest lacks."""
    keys = pd.concat([pd.DataFrame({"split": split, "index_in_split": store.index(split),
                                    "row": np.arange(store.split_size(split))}) for split in store.splits],
                     ignore_index=True)
    chosen = keys.iloc[sample_points(len(keys), max_points, seed)].reset_index(drop=True)
    points = chosen.merge(manifest[KEYS + ["label", "class_name", "source"]], on=KEYS, how="left",
                          validate="one_to_one")
    if points["source"].isna().any():
        missing = points[points["source"].isna()].iloc[0]
        raise ValueError(f"{store.path}: image {missing['split']}/{missing['index_in_split']} is in the feature "
                         f"store but not in the manifest; rebuild the store from this manifest")
    # the sample keeps the store's order, split after split, so the features line up with the points
    features = np.concatenate([store.features(split, part["row"].to_numpy())
                               for split, part in points.groupby("split", sort=False)])
    return points.drop(columns="row"), features


def _thumbnails(dataset: ImageDataset, size: int, items: list[tuple[str, str]]) -> list[tuple[np.ndarray, str]]:
    """Thumbnails of (split, source) items, and for each the reason it could not be read ("" when it
    could): an image that fails now is shown as a blank tile, not a failed page."""
    out = []
    for split, source in items:
        try:
            out.append((thumbnail(dataset.read_image(split, source), size), ""))
        except Exception as error:  # one unreadable image must not cost the whole map
            out.append((thumbnail(np.zeros((1, 1, 3), np.uint8), size), short_reason(error)))
    return out


def build_explore_page(store: FeatureStore, manifest: pd.DataFrame, dataset: ImageDataset, output: str | Path, *,
                       backbone: str, max_points: int, seed: int, thumbnail_size: int,
                       extra_columns: Sequence[pd.DataFrame] = (), workers: int = 1,
                       log: Callable[[str], None] = lambda message: None) -> dict:
    """Write the self-contained explore page of one dataset x backbone to ``output``; returns what it
    drew (points, total, method, sheets) for the log."""
    points, features = load_points(store, manifest, max_points, seed)
    total = len(store)
    log(f"{len(points)} of {total} images on the map; projecting {features.shape[1]}-d features to 2-D")
    coords, method = project_2d(features, seed)
    items = list(zip(points["split"], points["source"].astype(str)))
    chunks = [items[i:i + THUMBNAIL_CHUNK] for i in range(0, len(items), THUMBNAIL_CHUNK)]
    decoded = [pair for chunk in ordered_map(functools.partial(_thumbnails, dataset, thumbnail_size), chunks, workers)
               for pair in chunk]
    sheets = thumbnail_sheets((cell for cell, _ in decoded), thumbnail_size)
    unreadable = [reason for _, reason in decoded]
    if any(unreadable):
        log(f"{sum(map(bool, unreadable))} images could not be read for their thumbnails; they show blank")
    choices = colourings(points, extra_columns)
    ids = np.arange(len(points))
    figures = {choice.name: json.loads(embedding_map(coords, choice.values, ids, categorical=choice.categorical,
                                                     colour_label=choice.name).to_json())
               for choice in choices}
    data = {
        "split": points["split"].tolist(), "index": points["index_in_split"].astype(int).tolist(),
        "class": points["class_name"].astype(str).tolist(), "source": points["source"].astype(str).tolist(),
        "unreadable": unreadable,
        "columns": hover_text(choices),
        "figures": figures, "thumbnail": thumbnail_size, "sheetColumns": SHEET_COLUMNS,
    }
    import plotly.offline

    html = render("explore.html.j2", dataset=dataset.name, backbone=backbone, model=store.attrs.get("model"),
                  dim=features.shape[1], shown=len(points), total=total, seed=seed, method=method,
                  sampled=len(points) < total, max_points=max_points, sheets=sheets,
                  classes=sorted(set(data["class"])), colourings=[c.name for c in choices],
                  data=script_json(data), plotly_js=plotly.offline.get_plotlyjs())
    write_text_atomic(output, html)
    return {"points": len(points), "total": total, "method": method, "sheets": len(sheets)}
