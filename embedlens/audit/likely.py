"""The likely-copies list: the query split's images ranked by how likely each is a copy of an image in
the reference split, most likely first, beside the strict pixel verdicts.

The strict verdicts (:mod:`embedlens.audit.pixels`) are precise but reject what people still call a
copy: the same photograph re-shot, re-cropped or recoloured more than the pixel check can undo. The
list ranks every query image by evidence about its nearest reference images (the search's
``neighbours``):

- the **margin** ``nearest - second`` of its two highest cosine similarities: a copy has one
  reference image far closer than any other, while an ordinary image of a dense class has many at
  about the same distance;
- for each neighbour, its cosine ``similarity`` plus ``pixel_weight`` times the pair's
  ``pixel_similarity`` (:func:`embedlens.audit.pixels.pixel_similarity`): the best neighbour by this
  is the one listed, so a copy whose edit moved its embedding behind a look-alike is still matched
  to its source. Pixels are compared for the :data:`CHECKED_PER_LISTED` x ``likely_copies`` images
  with the highest embedding score only, since it reads the images.

``score = best (similarity + pixel_weight * pixel_similarity) + gap_weight * margin``; with
``pixel_weight`` 0 it is the nearest similarity plus the weighted margin. The two weights are the
audit's ``likely_copies_gap_weight`` and ``likely_copies_pixel_weight``, chosen on half of the copies
people judged between CIFAR-100's test and train splits (ciFAIR's list) and measured on the other half
(``benchmarks/likely_copies_cifar100.py --judged``; the README gives the figures).
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
                  "reference_index", "reference_label", "reference_class", "neighbour", "similarity", "margin",
                  "pixel_similarity", "score", "verdict"]


def margins(similarities: np.ndarray) -> np.ndarray:
    """Nearest minus second-nearest similarity per query row, from (n, k) neighbour similarities, most
    similar first (float64; 0 with k = 1)."""
    if similarities.shape[1] < 2:
        return np.zeros(len(similarities))
    return similarities[:, 0].astype(np.float64) - similarities[:, 1]


def embedding_scores(similarities: np.ndarray, gap_weight: float) -> np.ndarray:
    """``nearest + gap_weight * margin`` per query row: the score before any pixel is compared."""
    return similarities[:, 0].astype(np.float64) + gap_weight * margins(similarities)


def best_pairs(similarities: np.ndarray, pixel: np.ndarray, pixel_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the neighbour with the highest ``similarity + pixel_weight * pixel`` (``pixel``: (n, k),
    NaN, an unreadable image, counting as 0; ties: the nearer neighbour) and that value."""
    values = similarities.astype(np.float64) + pixel_weight * np.nan_to_num(pixel, nan=0.0)
    best = np.argmax(values, axis=1)
    return best, values[np.arange(len(values)), best]


def rank_likely(similarities: np.ndarray, pixel_of_rows, listed: int, gap_weight: float, pixel_weight: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``listed`` most likely copies among the query rows.

    ``similarities``: (n, k) neighbour similarities, most similar first. ``pixel_of_rows(rows)`` returns
    the pixel similarity of each given row with each of its k neighbours, (len(rows), k) (NaN when
    unreadable); it is called once, for the :data:`CHECKED_PER_LISTED` x ``listed`` rows with the highest
    embedding score. Returns the listed rows, most likely first (ties: lower row first), the column of
    the neighbour each is matched to, that pair's pixel similarity and the scores."""
    listed = min(listed, len(similarities))
    if listed <= 0 or not similarities.shape[1]:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    by_embedding = np.argsort(-embedding_scores(similarities, gap_weight), kind="stable")
    checked = by_embedding[:min(len(similarities), CHECKED_PER_LISTED * listed)]
    pixel = np.asarray(pixel_of_rows(checked), dtype=np.float64).reshape(len(checked), similarities.shape[1])
    neighbour, pair_value = best_pairs(similarities[checked], pixel, pixel_weight)
    scores = pair_value + gap_weight * margins(similarities[checked])
    order = np.lexsort((checked, -scores))[:listed]
    return checked[order], neighbour[order], pixel[order, neighbour[order]], scores[order]


def likely_copies(neighbours: Neighbours, query: tuple[str, pd.DataFrame], reference: tuple[str, pd.DataFrame],
                  checker: PixelChecker, listed: int, gap_weight: float, pixel_weight: float) -> pd.DataFrame:
    """The likely-copies table (:data:`LIKELY_COLUMNS`, most likely first) of one search.

    ``neighbours``: each query row's nearest reference rows; ``query`` and ``reference``: each split's
    name and its rows (``index_in_split, label, class_name``, in store order); ``checker`` gives the
    pixel evidence and verdict of a pair, keyed ``(split, index_in_split)``."""
    (query_split, query_rows), (reference_split, reference_rows) = query, reference
    query_index = query_rows["index_in_split"].to_numpy()
    reference_index = reference_rows["index_in_split"].to_numpy()
    verdicts: dict[tuple[int, int], str] = {}

    def pixel_of_rows(rows: np.ndarray) -> np.ndarray:
        values = np.full((len(rows), neighbours.indices.shape[1]), np.nan)
        for i, row in enumerate(rows):
            for j, partner in enumerate(neighbours.indices[row]):
                verdict, values[i, j] = checker.check((query_split, int(query_index[row])),
                                                      (reference_split, int(reference_index[partner])))
                verdicts[(int(row), j)] = verdict
        return values

    rows, neighbour, pixel, scores = rank_likely(neighbours.similarities, pixel_of_rows, listed, gap_weight,
                                                 pixel_weight)
    partner = neighbours.indices[rows, neighbour]
    return pd.DataFrame({
        "rank": np.arange(1, len(rows) + 1), "query_split": query_split, "query_index": query_index[rows],
        "query_label": query_rows["label"].to_numpy()[rows], "query_class": query_rows["class_name"].to_numpy()[rows],
        "reference_split": reference_split, "reference_index": reference_index[partner],
        "reference_label": reference_rows["label"].to_numpy()[partner],
        "reference_class": reference_rows["class_name"].to_numpy()[partner], "neighbour": neighbour + 1,
        "similarity": neighbours.similarities[rows, neighbour].astype(np.float64),
        "margin": margins(neighbours.similarities[rows]), "pixel_similarity": pixel, "score": scores,
        "verdict": [verdicts.get((int(row), int(j)), UNVERIFIED) for row, j in zip(rows, neighbour)]},
        columns=LIKELY_COLUMNS)


__all__ = ["CHECKED_PER_LISTED", "LIKELY_COLUMNS", "best_pairs", "embedding_scores", "likely_copies", "margins",
           "rank_likely"]
