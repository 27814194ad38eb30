"""The novelty stage's files and pictures: the images' rows and features from the store, the scores
table, the most novel images, the explore map's colourings, the flag counts, the check that a store
can be scored with a saved model, and ``fit.json`` for the summary."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from embedlens.datasets import ImageDataset
from embedlens.images import FigureImages
from embedlens.novelty.fit import NoveltyFit
from embedlens.novelty.model import NoveltyModel
from embedlens.novelty.settings import NoveltyInputError, NoveltySettings
from embedlens.recipe import recipe_differences
from embedlens.store import FeatureStore

ROW_COLUMNS = ["split", "index_in_split", "source", "path", "label", "class_name"]


def read_images(store: FeatureStore, manifest: pd.DataFrame, dataset: ImageDataset,
                splits: Sequence[str] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """The features of every image of ``splits`` (default: every split of the store, in store order)
    and one row per image: :data:`ROW_COLUMNS`, ``path`` being the image file for file-backed
    kinds and empty for array-backed ones (CIFAR). A split the store lacks is an error naming those it has.
    The features fill one float32 array chunk by chunk (no second copy of them is made)."""
    splits = list(splits or store.splits)
    absent = [split for split in splits if split not in store.splits]
    if absent:
        raise NoveltyInputError(f"novelty.splits: {absent} not in {store.path}; it has {store.splits}")
    offsets = dict(zip(splits, np.cumsum([0] + [store.split_size(split) for split in splits]).tolist()))
    features = np.empty((sum(store.split_size(split) for split in splits), store.dim), np.float32)
    for chunk in store.iter_chunks(splits):
        start = offsets[chunk.split] + chunk.start
        features[start:start + len(chunk.labels)] = chunk.features
    tables = [store.join_manifest(split, manifest) for split in splits]
    rows = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ROW_COLUMNS)
    rows["path"] = [str(dataset.source_file(split, source) or "") for split, source in zip(rows["split"], rows["source"])]
    return features, rows[ROW_COLUMNS]


def scores_table(rows: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """The images' rows (:data:`ROW_COLUMNS`) beside their scores, most novel (largest kNN distance) first."""
    table = pd.concat([rows.reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    return table.sort_values("knn_distance", ascending=False, kind="stable").reset_index(drop=True)


def figure_images(dataset: ImageDataset, figure: str, warn: Callable[[str], None] = lambda message: None
                  ) -> FigureImages:
    """The reader of the images ``figure`` shows, keyed by ``(split, source)``."""
    return FigureImages(lambda key: dataset.read_image(*key), figure, warn)


def most_novel_images(reader: FigureImages, table: pd.DataFrame, count: int
                      ) -> tuple[list[np.ndarray | None], list[str]]:
    """The first ``count`` images of a :func:`scores_table` (the most novel, read through ``reader``
    from :func:`figure_images`) and their captions: where the image is from, its kNN distance and
    novelty z-score; an image that cannot be read is None (drawn blank, named in ``reader.unreadable``)."""
    images, captions = [], []
    for row in table.head(count).itertuples():
        images.append(reader.get((row.split, row.source), f"{row.split} #{row.index_in_split}"
                                 + (f" ({row.path})" if row.path else "")))
        lines = [Path(row.source).name if row.path else f"{row.split} #{row.index_in_split}"]
        if isinstance(row.class_name, str) and row.class_name:
            lines.append(row.class_name)
        # A grid cell is about 25 characters of caption wide.
        lines = [line if len(line) <= 25 else line[:24] + "…" for line in lines]
        captions.append("\n".join([*lines, f"kNN {row.knn_distance:.3f}  z {row.novelty_score:.1f}"]))
    return images, captions


def map_columns(rows: pd.DataFrame, fit: NoveltyFit, features: np.ndarray) -> pd.DataFrame:
    """Colourings of the explore map (:mod:`embedlens.report.explore`): ``split, index_in_split``, each
    image's cluster (``novelty cluster``: "cluster 3", a category) and, for held-out images, their kNN
    distance (``novelty kNN distance``; empty for fit images, whose own distance would include themselves).
    ``rows`` and ``features`` are the images :func:`fit_novelty` was given, in the same order."""
    cluster, _ = fit.model.assign(features)
    distance = np.full(len(rows), np.nan)
    distance[fit.held_out_rows] = fit.scores["knn_distance"].to_numpy()
    return pd.DataFrame({"split": rows["split"].to_numpy(), "index_in_split": rows["index_in_split"].to_numpy(),
                         "novelty cluster": [f"cluster {c}" for c in cluster.tolist()],
                         "novelty kNN distance": distance})


def flag_counts(scores: pd.DataFrame) -> dict:
    """How many images each flag marks: ``{"images", "novel", "surprising", "knn_novel"}``."""
    return {"images": int(len(scores)), "novel": int(scores["novel"].sum()),
            "surprising": int(scores["surprising"].sum()), "knn_novel": int(scores["knn_novel"].sum())}


def check_model_matches(model: NoveltyModel, store: FeatureStore) -> None:
    """Refuse to score ``store`` with ``model`` unless its embeddings come from the same backbone and
    extraction settings as the model's (the recipe's ``backbone`` and ``extract`` parts)."""
    problems = recipe_differences(store.recipe, model.info.get("recipe", {}), keys=["backbone", "extract"])
    if store.dim != model.centroids.shape[1]:
        problems.append(f"dim: {store.dim} here, {model.centroids.shape[1]} expected")
    if problems:
        raise NoveltyInputError(f"{store.path} cannot be scored with the novelty model of dataset "
                                f"{model.info.get('dataset')!r}: its features come from another recipe:\n  "
                                + "\n  ".join(problems) + "\nEmbed it with the same backbone entry and extract settings.")


def fit_document(fit: NoveltyFit, settings: NoveltySettings, *, unreadable: int,
                 blank_images: Mapping[str, str]) -> dict:
    """What ``fit.json`` records for the stage's summary: images of each part, k and how it was chosen,
    the thresholds, the flag counts of the held-out images and the notes (``unreadable``: images of the
    dataset that have no features; ``blank_images``: images of novel.png that could not be read, with
    the reasons)."""
    model = fit.model
    return {"k": model.k, "searched": fit.searched,
            "k_range": [int(fit.curve["k"].min()), int(fit.curve["k"].max())],
            "fit_images": int(len(fit.fit_rows)), "held_out_images": int(len(fit.held_out_rows)),
            "unreadable": int(unreadable), "knn_k": model.knn_k, "centroid_spacing": model.centroid_spacing,
            "thresholds": {"novelty_z": model.novelty_threshold, "surprise_ratio": model.surprise_threshold,
                           "knn_distance": model.knn_threshold},
            "flags": flag_counts(fit.scores), "notes": fit.notes, "blank_images": dict(blank_images),
            "settings": settings.as_dict()}
