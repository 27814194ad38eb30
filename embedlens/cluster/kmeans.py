"""The k-means baseline at scale, as the published clustering baselines run it: k-means on the
(L2-normalised) train embeddings (:mod:`embedlens.kmeans`, the wrapper every stage shares), every train
and test image assigned to its nearest centroid.

At scale the centres are fitted on a seeded sample of ``cluster.kmeans.fit_rows`` train rows (every
row below that), and every row is then assigned to its nearest centre block by block
(:func:`embedlens.kmeans.assign`), so no normalised copy of a whole split is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from embedlens.cluster.settings import ClusterInputError, KmeansSettings
from embedlens.kmeans import assign, fit_kmeans, sample_rows


def fit_rows(rows: int, settings: KmeansSettings, seed: int) -> np.ndarray:
    """The train rows the centres are fitted on: all of them, or a seeded sample of
    ``settings.fit_rows`` (ascending) when there are more."""
    return sample_rows(rows, settings.fit_rows, seed)


@dataclass
class KmeansFit:
    """A k-means fit and the cluster of every train row."""

    model: KMeans
    train_clusters: np.ndarray  # (N,) int64
    fit_rows: int               # the rows the centres were fitted on


def cluster_kmeans(train: np.ndarray, clusters: int, settings: KmeansSettings, seed: int) -> KmeansFit:
    """k-means with ``clusters`` clusters on the train embeddings (raw) or on :func:`fit_rows` of them,
    then every train row assigned. The errors name the setting to change."""
    if clusters > len(train):
        raise ClusterInputError(f"{len(train)} train images cannot be clustered into {clusters} clusters; lower "
                                "cluster.clusters or add images")
    sample = fit_rows(len(train), settings, seed)
    if len(sample) < clusters:
        raise ClusterInputError(f"cluster.kmeans.fit_rows = {settings.fit_rows} is fewer than the {clusters} "
                                "clusters; raise it")
    everything = len(sample) == len(train)
    model = fit_kmeans(train if everything else train[sample], clusters, settings, seed)
    labels = model.labels_.astype(np.int64) if everything else assign(model, train, settings)
    return KmeansFit(model, labels, len(sample))
