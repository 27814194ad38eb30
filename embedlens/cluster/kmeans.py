"""The k-means baseline, as the published clustering baselines run it: scikit-learn's k-means on the
(L2-normalised) train embeddings, every train and test image assigned to its nearest centroid."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from embedlens.cluster.settings import ClusterInputError, KmeansSettings
from embedlens.geometry import l2_normalize


def kmeans_space(features: np.ndarray, settings: KmeansSettings) -> np.ndarray:
    """The embeddings as k-means sees them: float32, L2-normalised rows when ``settings.normalize``."""
    return (l2_normalize(features) if settings.normalize else np.asarray(features)).astype(np.float32, copy=False)


def fit_kmeans(train: np.ndarray, clusters: int, settings: KmeansSettings, seed: int) -> KMeans:
    """k-means with ``clusters`` clusters (k-means++ starts, ``settings.n_init`` restarts, ``seed``) on
    the train embeddings (raw; normalised here when the settings say so)."""
    if clusters > len(train):
        raise ClusterInputError(f"{len(train)} train images cannot be clustered into {clusters} clusters; lower "
                         "cluster.clusters or add images")
    return KMeans(n_clusters=clusters, n_init=settings.n_init, random_state=seed).fit(kmeans_space(train, settings))


def assign(model: KMeans, features: np.ndarray, settings: KmeansSettings) -> np.ndarray:
    """The nearest centroid of each row of ``features`` (raw embeddings), int64."""
    if not len(features):
        return np.zeros(0, np.int64)
    return model.predict(kmeans_space(features, settings)).astype(np.int64)
