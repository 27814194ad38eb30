"""The likely-copies list: the query split's images ranked by how likely each is a copy of an image in
the reference split, most likely first, beside the strict pixel verdicts.

The strict verdicts (:mod:`embedlens.audit.pixels`) are precise but reject what people still call a
copy: the same photograph re-shot, re-cropped or recoloured more than the pixel check can undo. The
list ranks every query image by three pieces of evidence about its nearest reference image:

- ``similarity``: the cosine similarity of their embeddings;
- the **margin** ``similarity - second_similarity`` over the query's second-nearest reference image: a
  copy has one reference image far closer than any other, while an ordinary image of a dense class has
  many at about the same distance;
- ``pixel_similarity`` of the pair (:func:`embedlens.audit.pixels.pixel_similarity`), computed for the
  :data:`CHECKED_PER_LISTED` x ``likely_copies`` images with the highest embedding score only, since it
  reads both images.

``score = similarity + gap_weight * margin + pixel_weight * pixel_similarity``. The two weights are the
audit's ``likely_copies_gap_weight`` and ``likely_copies_pixel_weight``, chosen on planted copies of
genuine CIFAR-100 images (``benchmarks/likely_copies_cifar100.py``; the README gives the figures).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from embedlens.audit.pixels import UNVERIFIED, PixelChecker
from embedlens.knn import Neighbours

# The pixel check re-ranks this many images per listed one: an image just outside the list on its
# embedding alone can still enter it on its pixels, and checking every query image would read the
# whole split twice.
CHECKED_PER_LISTED = 2
LIKELY_COLUMNS = ["rank", "query_split", "query_index", "query_label", "query_class", "reference_split",
                  "reference_index", "reference_label", "reference_class", "similarity", "second_similarity",
                  "pixel_similarity", "score", "verdict"]


def embedding_scores(similarities: np.ndarray, gap_weight: float) -> np.ndarray:
    """``similarity + gap_weight * (similarity - second_similarity)`` per query row, from the rows'
    neighbour similarities (n, k), most similar first (float64; with k = 1 the margin is 0)."""
    nearest = similarities[:, 0].astype(np.float64)
    second = similarities[:, 1].astype(np.float64) if similarities.shape[1] > 1 else nearest
    return nearest + gap_weight * (nearest - second)


def combined_scores(similarities: np.ndarray, pixel: np.ndarray, gap_weight: float, pixel_weight: float
                    ) -> np.ndarray:
    """:func:`embedding_scores` plus ``pixel_weight`` times ``pixel`` (each row's pixel similarity to its
    nearest neighbour; NaN, an unreadable image, counts as 0)."""
    return embedding_scores(similarities, gap_weight) + pixel_weight * np.nan_to_num(pixel, nan=0.0)


def rank_likely(similarities: np.ndarray, pixel_of_rows, listed: int, gap_weight: float, pixel_weight: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``listed`` most likely copies among the query rows.

    ``similarities``: (n, k) neighbour similarities, most similar first. ``pixel_of_rows(rows)`` returns
    the pixel similarity of each given row's pair with its nearest neighbour (float, NaN when
    unreadable); it is called once, for the :data:`CHECKED_PER_LISTED` x ``listed`` rows with the highest
    embedding score. Returns the listed rows, most likely first (ties: lower row first), their pixel
    similarities and their scores."""
    listed = min(listed, len(similarities))
    if listed <= 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    by_embedding = np.argsort(-embedding_scores(similarities, gap_weight), kind="stable")
    checked = by_embedding[:min(len(similarities), CHECKED_PER_LISTED * listed)]
    pixel = np.asarray(pixel_of_rows(checked), dtype=np.float64)
    scores = combined_scores(similarities[checked], pixel, gap_weight, pixel_weight)
    order = np.lexsort((checked, -scores))[:listed]
    return checked[order], pixel[order], scores[order]


def likely_copies(neighbours: Neighbours, query: tuple[str, pd.DataFrame], reference: tuple[str, pd.DataFrame],
                  checker: PixelChecker, listed: int, gap_weight: float, pixel_weight: float) -> pd.DataFrame:
    """The likely-copies table (:data:`LIKELY_COLUMNS`, most likely first) of one search.

    ``neighbours``: each query row's nearest reference rows; ``query`` and ``reference``: each split's
    name and its rows (``index_in_split, label, class_name``, in store order); ``checker`` gives the
    pixel evidence and verdict of a pair, keyed ``(split, index_in_split)``."""
    (query_split, query_rows), (reference_split, reference_rows) = query, reference
    nearest = neighbours.indices[:, 0] if neighbours.indices.size else np.zeros(0, np.int64)
    query_index = query_rows["index_in_split"].to_numpy()
    reference_index = reference_rows["index_in_split"].to_numpy()
    verdicts: dict[int, str] = {}

    def pixel_of_rows(rows: np.ndarray) -> list[float]:
        values = []
        for row in rows:
            verdict, similarity = checker.check((query_split, int(query_index[row])),
                                                (reference_split, int(reference_index[nearest[row]])))
            verdicts[int(row)] = verdict
            values.append(similarity)
        return values

    rows, pixel, scores = rank_likely(neighbours.similarities, pixel_of_rows, listed, gap_weight, pixel_weight)
    partner = nearest[rows]
    similarities = neighbours.similarities[rows].astype(np.float64)
    return pd.DataFrame({
        "rank": np.arange(1, len(rows) + 1), "query_split": query_split, "query_index": query_index[rows],
        "query_label": query_rows["label"].to_numpy()[rows], "query_class": query_rows["class_name"].to_numpy()[rows],
        "reference_split": reference_split, "reference_index": reference_index[partner],
        "reference_label": reference_rows["label"].to_numpy()[partner],
        "reference_class": reference_rows["class_name"].to_numpy()[partner],
        "similarity": similarities[:, 0] if len(rows) else np.zeros(0),
        "second_similarity": similarities[:, min(1, similarities.shape[1] - 1)] if len(rows) else np.zeros(0),
        "pixel_similarity": pixel, "score": scores,
        "verdict": [verdicts.get(int(row), UNVERIFIED) for row in rows]}, columns=LIKELY_COLUMNS)


__all__ = ["CHECKED_PER_LISTED", "LIKELY_COLUMNS", "combined_scores", "embedding_scores", "likely_copies",
           "rank_likely"]
