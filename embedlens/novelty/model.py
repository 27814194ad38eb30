"""The fitted novelty model: centroids, per-cluster distance statistics, thresholds and the fit
embeddings, the three scores of any new embeddings, and the model saved to HDF5 so new images are
scored later without refitting."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import pairwise_distances_argmin_min
from sklearn.metrics.pairwise import euclidean_distances

from embedlens.atomic import atomic_path
from embedlens.geometry import BLOCK_ROWS
from embedlens.kmeans import fit_kmeans, kmeans_space, sample_rows
from embedlens.knn import cosine_topk
from embedlens.novelty.settings import NoveltyInputError, NoveltySettings

SCORES = ("novelty_score", "surprise_score", "knn_distance")
"""The per-image scores whose detection quality is measured, each higher for a more unusual image.
``centroid_distance`` is left out: the surprise score is that distance over a constant (the centroid
spacing), so the two rank images identically and share their AUROC."""
SCORE_COLUMNS = ["cluster", "centroid_distance", "novelty_score", "novel", "surprise_score", "surprising",
                 "knn_distance", "knn_novel"]
MODEL_FORMAT = 1


def nearest_centroid(features: np.ndarray, centroids: np.ndarray, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row of ``features`` (raw embeddings; L2-normalised first when
    ``normalize``) and the distance to it, block by block (:data:`BLOCK_ROWS` rows), so no prepared copy
    of the whole array is made."""
    cluster, distance = np.empty(len(features), np.int64), np.empty(len(features))
    for start in range(0, len(features), BLOCK_ROWS):
        block = kmeans_space(features[start:start + BLOCK_ROWS], normalize)
        stop = start + len(block)
        cluster[start:stop], distance[start:stop] = pairwise_distances_argmin_min(block, centroids)
    return cluster, distance


@dataclass
class NoveltyModel:
    """A fitted novelty model: everything needed to score new embeddings of the same backbone.

    ``centroids`` (k, D) in the space k-means saw (L2-normalised when ``normalize``);
    ``cluster_mean``/``cluster_std`` (k,): distances of the fit images to their own centroid;
    ``centroid_spacing``: mean Euclidean distance between two centroids; ``reference`` (N, D): the fit
    embeddings as stored (the kNN score's reference); thresholds of the three flags (``knn_threshold``
    is NaN when not calibrated). ``info`` carries provenance (dataset, recipe, settings).
    """

    centroids: np.ndarray
    cluster_mean: np.ndarray
    cluster_std: np.ndarray
    centroid_spacing: float
    reference: np.ndarray
    normalize: bool
    knn_k: int
    novelty_threshold: float
    surprise_threshold: float
    knn_threshold: float
    info: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of each row of ``features`` (raw embeddings) and the distance to it, in blocks."""
        return nearest_centroid(features, self.centroids, self.normalize)

    def knn_distances(self, features: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
        """Cosine distance of each row to its ``knn_k``-th most similar reference embedding, searched on
        ``device``."""
        if not len(features):
            return np.zeros(0)
        neighbours = cosine_topk(features, self.reference, k=self.knn_k, device=device)
        return 1.0 - neighbours.similarities[:, -1].astype(np.float64)

    def score(self, features: np.ndarray, rows: np.ndarray | None = None, device: str | torch.device = "cpu"
              ) -> pd.DataFrame:
        """The scores and flags of each row of ``features`` (raw embeddings, the backbone's), or of the
        rows at positions ``rows`` of it, in order, columns :data:`SCORE_COLUMNS`. The rows are taken
        :data:`BLOCK_ROWS` at a time, so no copy of them all is made; the kNN search runs on ``device``."""
        features = np.asarray(features)
        positions = np.arange(len(features)) if rows is None else np.asarray(rows, dtype=np.int64)
        if not len(positions):
            return pd.DataFrame({name: pd.Series(dtype=bool if name in ("novel", "surprising", "knn_novel")
                                                 else "int64" if name == "cluster" else "float64")
                                 for name in SCORE_COLUMNS})
        cluster, distance, knn = np.empty(len(positions), np.int64), np.empty(len(positions)), np.empty(len(positions))
        for start in range(0, len(positions), BLOCK_ROWS):
            part = positions[start:start + BLOCK_ROWS]
            block = features[start:start + len(part)] if rows is None else features[part]
            stop = start + len(part)
            cluster[start:stop], distance[start:stop] = self.assign(block)
            knn[start:stop] = self.knn_distances(block, device)
        novelty = (distance - self.cluster_mean[cluster]) / self.cluster_std[cluster]
        surprise = distance / self.centroid_spacing
        return pd.DataFrame({
            "cluster": cluster, "centroid_distance": distance,
            "novelty_score": novelty, "novel": novelty > self.novelty_threshold,
            "surprise_score": surprise, "surprising": surprise > self.surprise_threshold,
            "knn_distance": knn, "knn_novel": knn > self.knn_threshold,
        })

    # -- saving -------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the model to an HDF5 file, atomically (arrays as datasets, the rest as attributes)."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
            for name in ("centroids", "cluster_mean", "cluster_std"):
                handle.create_dataset(name, data=getattr(self, name))
            handle.create_dataset("reference", data=np.asarray(self.reference, dtype=np.float32),
                                  chunks=True if len(self.reference) else None)
            handle.attrs["format"] = MODEL_FORMAT
            for name in ("centroid_spacing", "normalize", "knn_k", "novelty_threshold", "surprise_threshold",
                         "knn_threshold"):
                handle.attrs[name] = getattr(self, name)
            handle.attrs["info"] = json.dumps(self.info)

    @classmethod
    def load(cls, path: str | Path) -> NoveltyModel:
        """Read a model written by :meth:`save`; the error names the file when it is not one."""
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != MODEL_FORMAT:
                raise ValueError(f"{path}: not a novelty model of format {MODEL_FORMAT} (written by the novelty "
                                 "rule's novelty_fit); rebuild it")
            attrs = handle.attrs
            return cls(centroids=handle["centroids"][:], cluster_mean=handle["cluster_mean"][:],
                       cluster_std=handle["cluster_std"][:], reference=handle["reference"][:],
                       centroid_spacing=float(attrs["centroid_spacing"]), normalize=bool(attrs["normalize"]),
                       knn_k=int(attrs["knn_k"]), novelty_threshold=float(attrs["novelty_threshold"]),
                       surprise_threshold=float(attrs["surprise_threshold"]),
                       knn_threshold=float(attrs["knn_threshold"]), info=json.loads(attrs["info"]))


def fit_model(features: np.ndarray, k: int, settings: NoveltySettings, *, calibrate: bool = True,
              info: Mapping | None = None) -> NoveltyModel:
    """Fit k-means with ``k`` clusters on ``features`` (the fit part, raw embeddings) and the statistics
    the scores need. With ``calibrate`` the kNN threshold is the ``flag_quantile`` of the fit rows' own
    kNN distances (on at most ``calibration_sample`` of them, seeded), else NaN (enough for AUROC).
    Without a ``surprise_threshold`` setting, the surprise threshold is the ``flag_quantile`` of the
    fit rows' own surprise ratios. At scale the centres come from a seeded sample of
    ``settings.fit_rows`` rows; every fit row is then assigned in blocks for the statistics.

    ``knn_k`` is lowered to the number of fit rows less one when there are fewer; k must be at least 2
    (the surprise score divides by the spacing of the centroids)."""
    features = np.asarray(features)
    if k < 2:
        raise NoveltyInputError(f"k={k}: the surprise score needs at least 2 clusters; set novelty.k >= 2")
    if k > len(features):
        raise NoveltyInputError(f"k={k} clusters need at least {k} images to fit; there are {len(features)}. "
                                "Lower novelty.k (or novelty.k_max), or add images")
    sample = sample_rows(len(features), settings.fit_rows, settings.seed)
    if len(sample) < k:
        raise NoveltyInputError(f"novelty.fit_rows = {settings.fit_rows} is fewer than the k={k} clusters; raise it")
    centroids = fit_kmeans(features if len(sample) == len(features) else features[sample], k, settings,
                           settings.seed).cluster_centers_
    cluster, distance = nearest_centroid(features, centroids, settings.normalize)
    counts = np.bincount(cluster, minlength=k)
    sums = np.bincount(cluster, weights=distance, minlength=k)
    mean = sums / np.maximum(counts, 1)
    spread = np.sqrt(np.bincount(cluster, weights=(distance - mean[cluster]) ** 2, minlength=k) / np.maximum(counts, 1))
    # A cluster of one image (or of identical ones) has no spread of its own; the spread of all fit
    # images around their centroids stands in, so its z-scores stay finite.
    overall = float(np.std(distance - mean[cluster])) or 1.0
    spread = np.where(spread > 0, spread, overall)
    pairwise = euclidean_distances(centroids)
    spacing = float(pairwise[np.triu_indices(k, 1)].mean())
    surprise_threshold = (settings.surprise_threshold if settings.surprise_threshold is not None
                          else float(np.quantile(distance / spacing, settings.flag_quantile)))
    model = NoveltyModel(centroids=centroids, cluster_mean=mean, cluster_std=spread, centroid_spacing=spacing,
                         reference=features.astype(np.float32, copy=False), normalize=settings.normalize,
                         knn_k=min(settings.knn_k, len(features) - 1), novelty_threshold=settings.novelty_threshold,
                         surprise_threshold=surprise_threshold, knn_threshold=float("nan"),
                         info=dict(info or {}))
    if calibrate:
        own = own_knn_distances(model, settings.seed, settings.calibration_sample, settings.device)
        model.knn_threshold = float(np.quantile(own, settings.flag_quantile))
    return model


def own_knn_distances(model: NoveltyModel, seed: int, sample: int, device: str | torch.device = "cpu") -> np.ndarray:
    """The kNN score of (at most ``sample``, seeded) fit rows against the other fit rows, searched on
    ``device``: what the score looks like for images the model knows."""
    rows = sample_rows(len(model.reference), sample, seed)
    neighbours = cosine_topk(model.reference[rows], model.reference, k=model.knn_k + 1, device=device)
    # Drop each row's own entry (or, when a duplicate outranked it, the last one) to leave k others.
    is_self = neighbours.indices == rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    others = neighbours.similarities[~is_self].reshape(len(rows), model.knn_k)
    return 1.0 - others[:, -1].astype(np.float64)
