"""The k-means baseline, as the published clustering baselines run it: scikit-learn's k-means on the
(L2-normalised) train embeddings, every train and test image assigned to its nearest centroid.

At scale the centres are fitted on a seeded sample of ``cluster.kmeans.fit_rows`` train rows (every
row below that), and every row of both splits is then assigned to its nearest centre block by block
(:data:`embedlens.geometry.BLOCK_ROWS` rows), so no normalised copy of a whole split is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from embedlens.cluster.settings import ClusterInputError, KmeansSettings
from embedlens.geometry import BLOCK_ROWS, l2_normalize


def kmeans_space(features: np.ndarray, settings: KmeansSettings) -> np.ndarray:
    """The embeddings as k-means sees them: float32, L2-normalised rows when ``settings.normalize``."""
    return (l2_normalize(features) if settings.normalize else np.asarray(features)).astype(np.float32, copy=False)


def fit_rows(rows: int, settings: KmeansSettings, seed: int) -> np.ndarray:
    """The train rows the centres are fitted on: all of them, or a seeded sample of
    ``settings.fit_rows`` (ascending) when there are more."""
    if rows <= settings.fit_rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, settings.fit_rows, replace=False))


def fit_kmeans(train: np.ndarray, clusters: int, settings: KmeansSettings, seed: int) -> KMeans:
    """k-means with ``clusters`` clusters (k-means++ starts, ``settings.n_init`` restarts, ``seed``) on
    the train embeddings (raw; normalised here when the settings say so), or on :func:`fit_rows` of them."""
    if clusters > len(train):
        raise ClusterInputError(f"{len(train)} train images cannot be clustered into {clusters} clusters; lower "
                                "cluster.clusters or add images")
    sample = fit_rows(len(train), settings, seed)
    if len(sample) < clusters:
        raise ClusterInputError(f"cluster.kmeans.fit_rows = {settings.fit_rows} is fewer than the {clusters} "
                                "clusters; raise it")
    rows = train if len(sample) == len(train) else train[sample]
    return KMeans(n_clusters=clusters, n_init=settings.n_init, random_state=seed).fit(kmeans_space(rows, settings))


def assign(model: KMeans, features: np.ndarray, settings: KmeansSettings) -> np.ndarray:
    """The nearest centroid of each row of ``features`` (raw embeddings), int64, block by block."""
    clusters = np.zeros(len(features), np.int64)
    for start in range(0, len(features), BLOCK_ROWS):
        block = kmeans_space(features[start:start + BLOCK_ROWS], settings)
        clusters[start:start + len(block)] = model.predict(block)
    return clusters


@dataclass
class KmeansFit:
    """A k-means fit and the cluster of every train row."""

    model: KMeans
    train_clusters: np.ndarray  # (N,) int64
    fit_rows: int               # the rows the centres were fitted on


def cluster_kmeans(train: np.ndarray, clusters: int, settings: KmeansSettings, seed: int) -> KmeansFit:
    """:func:`fit_kmeans` on the train rows, then every train row assigned (:func:`assign`)."""
    model = fit_kmeans(train, clusters, settings, seed)
    fitted = min(len(train), settings.fit_rows)
    labels = model.labels_.astype(np.int64) if fitted == len(train) else assign(model, train, settings)
    return KmeansFit(model, labels, fitted)
