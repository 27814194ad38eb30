"""k-means on frozen embeddings: the one wrapper of scikit-learn's k-means that every stage calls (the
clustering baseline, TEMI's warm start, the novelty stage's clusters and elbow search).

``settings`` is any object with ``n_init`` (restarts; k-means++ starts, the lowest inertia wins) and
``normalize`` (L2-normalise the rows first, so distances measure directions): the ``cluster.kmeans``
section and the ``novelty`` section both are.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from sklearn.cluster import KMeans

from embedlens.geometry import BLOCK_ROWS, l2_normalize


class KmeansOptions(Protocol):
    n_init: int
    normalize: bool


def kmeans_space(features: np.ndarray, normalize: bool) -> np.ndarray:
    """The embeddings as k-means sees them: float32, L2-normalised rows when ``normalize``."""
    return (l2_normalize(features) if normalize else np.asarray(features)).astype(np.float32, copy=False)


def sample_rows(count: int, limit: int, seed: int) -> np.ndarray:
    """Positions ``0..count-1``, or a seeded random sample of ``limit`` of them (ascending) when there
    are more: the rows a fit at scale is made on."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def fit_kmeans(features: np.ndarray, clusters: int, settings: KmeansOptions, seed: int) -> KMeans:
    """k-means with ``clusters`` clusters (``settings.n_init`` restarts, ``seed``) on the raw embeddings
    ``features`` (normalised here when ``settings.normalize``). Stages check the image count first and
    name their own setting; this error is the last guard."""
    if clusters > len(features):
        raise ValueError(f"{len(features)} images cannot be clustered into {clusters} clusters; k-means needs at "
                         "least as many images as clusters")
    return KMeans(n_clusters=clusters, n_init=settings.n_init, random_state=seed).fit(
        kmeans_space(features, settings.normalize))


def assign(model: KMeans, features: np.ndarray, settings: KmeansOptions) -> np.ndarray:
    """The nearest centroid of each row of ``features`` (raw embeddings), int64, block by block
    (:data:`~embedlens.geometry.BLOCK_ROWS` rows), so no normalised copy of the whole array is made."""
    clusters = np.zeros(len(features), np.int64)
    for start in range(0, len(features), BLOCK_ROWS):
        block = kmeans_space(features[start:start + BLOCK_ROWS], settings.normalize)
        clusters[start:start + len(block)] = model.predict(block)
    return clusters
