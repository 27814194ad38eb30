"""What each synthetic vector looks like: its nearest real train images, as a table and a picture."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from embedlens.distill.matching import Distilled
from embedlens.images import FigureImages
from embedlens.knn import cosine_topk

NEIGHBOUR_COLUMNS = ["vector", "vector_label", "vector_class", "rank", "similarity", "split", "index_in_split",
                     "source", "label", "class_name", "same_class"]


def nearest_real(distilled: Distilled, real_features: np.ndarray, rows: pd.DataFrame, class_names: Sequence[str],
                 k: int, device: str | torch.device = "auto") -> pd.DataFrame:
    """The ``k`` real images most cosine-similar to each synthetic vector (:func:`embedlens.knn.cosine_topk`
    in the store's feature space), one row per vector and rank (:data:`NEIGHBOUR_COLUMNS`). ``rows``:
    the manifest rows of ``real_features`` (split, index_in_split, source, label, class_name), in the
    same order. ``same_class``: the real image's true label is the vector's class."""
    k = min(k, len(real_features))
    found = cosine_topk(distilled.features, real_features, k, device=device)
    positions, similarities = found.indices.reshape(-1), found.similarities.reshape(-1)
    real = rows.iloc[positions].reset_index(drop=True)
    vector_labels = np.repeat(distilled.labels, k)
    return pd.DataFrame({
        "vector": np.repeat(np.arange(len(distilled.labels)), k), "vector_label": vector_labels,
        "vector_class": [class_names[label] for label in vector_labels.tolist()],
        "rank": np.tile(np.arange(1, k + 1), len(distilled.labels)), "similarity": np.round(similarities, 4),
        "split": real["split"].to_numpy(), "index_in_split": real["index_in_split"].to_numpy(),
        "source": real["source"].to_numpy(), "label": real["label"].to_numpy(),
        "class_name": real["class_name"].to_numpy(), "same_class": real["label"].to_numpy() == vector_labels},
        columns=NEIGHBOUR_COLUMNS)


def grid_vectors(labels: np.ndarray, count: int) -> list[int]:
    """At most ``count`` synthetic vectors to draw, covering as many classes as there is room for: the
    first vector of every class (in label order), then the second of every class, and so on."""
    labels = np.asarray(labels)
    order = sorted(range(len(labels)), key=lambda i: (int(np.sum(labels[:i] == labels[i])), int(labels[i]), i))
    return order[:count]


def neighbour_rows(reader: FigureImages, table: pd.DataFrame, vectors: Sequence[int]
                   ) -> list[tuple[str, list[np.ndarray], list[str]]]:
    """Rows for :func:`embedlens.plots.image_rows`: per synthetic vector its class and number, then its
    nearest real images (read through ``reader``, keyed by ``(split, source)``; one that cannot be read
    is drawn blank and named in ``reader.unreadable``) captioned with their class and cosine similarity."""
    rows = []
    for vector in vectors:
        found = table[table["vector"] == vector].sort_values("rank")
        images, captions = [], []
        for row in found.itertuples():
            images.append(reader.get((row.split, row.source), f"{row.split} #{row.index_in_split} ({row.source})"))
            name = str(row.class_name)
            captions.append(f"{name if len(name) <= 14 else name[:13] + '…'}\ncos {row.similarity:.2f}")
        title = f"{found['vector_class'].iloc[0]}\nvector {vector}" if len(found) else f"vector {vector}"
        rows.append((title, images, captions))
    return rows
