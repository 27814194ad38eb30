"""Embedding geometry shared by every stage: L2 normalisation, per-dimension standardisation, class
centroids (also streamed over a store too large for memory), and cosine similarity between centroids.

Labels are the dataset's integer labels; rows labelled -1 (no class) never feed a centroid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.metrics.pairwise import cosine_similarity


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); all-zero rows stay zero."""
    features = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


@dataclass(frozen=True)
class Standardizer:
    """Per-dimension mean and standard deviation of some features (a zero deviation counts as 1)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Standardizer:
        features = np.asarray(features, dtype=np.float64)
        std = features.std(axis=0)
        return cls(features.mean(axis=0).astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32))

    def forward(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, dtype=np.float32) - self.mean) / self.std).astype(np.float32)

    def inverse(self, standardized: np.ndarray) -> np.ndarray:
        return (np.asarray(standardized, dtype=np.float32) * self.std + self.mean).astype(np.float32)


@dataclass
class Centroids:
    """One centroid per class, classes in ascending label order."""

    labels: np.ndarray   # int64 (K,) dataset labels
    names: list[str]     # K class names
    vectors: np.ndarray  # float64 (K, D)
    counts: np.ndarray   # int64 (K,) images that fed each centroid

    def __len__(self) -> int:
        return len(self.labels)

    def position(self) -> dict[int, int]:
        """label -> row of ``vectors``."""
        return {int(label): i for i, label in enumerate(self.labels)}


class CentroidAccumulator:
    """Class centroids built chunk by chunk, so a store of any size streams through in bounded memory.

    ``add`` takes the features (N, D) and labels (N,) of one chunk; ``result`` gives the
    :class:`Centroids` of every class seen. Sums are float64, so the result equals the mean over all
    rows at once. With ``normalized`` each row is L2-normalised before it is summed (the mean
    direction, every image weighing the same). ``classes`` keeps only these labels.
    """

    def __init__(self, dim: int, *, normalized: bool = False, classes: Sequence[int] | None = None):
        self.dim, self.normalized = int(dim), normalized
        self.classes = None if classes is None else np.asarray(list(classes), dtype=np.int64)
        self._sums: dict[int, np.ndarray] = {}
        self._counts: dict[int, int] = {}

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        features = np.asarray(features)
        labels = np.asarray(labels, dtype=np.int64)
        if features.ndim != 2 or features.shape[1] != self.dim or len(features) != len(labels):
            raise ValueError(f"features {features.shape} and labels {labels.shape} do not match "
                             f"(expected (N, {self.dim}) and (N,))")
        keep = labels >= 0
        if self.classes is not None:
            keep &= np.isin(labels, self.classes)
        values = features[keep]
        values = l2_normalize(values) if self.normalized else values.astype(np.float64)
        present, inverse = np.unique(labels[keep], return_inverse=True)
        # A sparse one-hot (classes x rows) times the rows: per-class sums in one pass, no dense one-hot.
        one_hot = sparse.csr_matrix((np.ones(len(inverse)), (inverse, np.arange(len(inverse)))),
                                    shape=(len(present), len(inverse)))
        sums = np.asarray(one_hot @ values)
        counts = np.bincount(inverse, minlength=len(present))
        for label, total, count in zip(present.tolist(), sums, counts.tolist()):
            if label in self._sums:
                self._sums[label] += total
                self._counts[label] += count
            else:
                self._sums[label], self._counts[label] = total, count

    def result(self, class_names: Sequence[str] | None = None) -> Centroids:
        """The centroids of every class seen, named ``class_names[label]`` (default: the label)."""
        labels = np.array(sorted(self._sums), dtype=np.int64)
        counts = np.array([self._counts[label] for label in labels.tolist()], dtype=np.int64)
        vectors = (np.stack([self._sums[label] for label in labels.tolist()]) / counts[:, None]
                   if len(labels) else np.zeros((0, self.dim)))
        names = [class_names[label] if class_names is not None else str(label) for label in labels.tolist()]
        return Centroids(labels, names, vectors, counts)


def class_centroids(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str] | None = None,
                    *, normalized: bool = False, classes: Sequence[int] | None = None) -> Centroids:
    """Per-class centroids of rows held in memory (see :class:`CentroidAccumulator` for the rules).

    ``features`` (N, D) and ``labels`` (N,); classes without rows get no centroid.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"features {features.shape} must be (N, D)")
    accumulator = CentroidAccumulator(features.shape[1], normalized=normalized, classes=classes)
    accumulator.add(features, labels)
    return accumulator.result(class_names)


def streamed_class_centroids(chunks: Iterable[tuple[np.ndarray, np.ndarray]], dim: int,
                             class_names: Sequence[str] | None = None, *, normalized: bool = False,
                             classes: Sequence[int] | None = None) -> Centroids:
    """:func:`class_centroids` over ``(features, labels)`` chunks, e.g. from
    :meth:`embedlens.store.FeatureStore.iter_chunks`; memory is one chunk plus the sums."""
    accumulator = CentroidAccumulator(dim, normalized=normalized, classes=classes)
    for features, labels in chunks:
        accumulator.add(features, labels)
    return accumulator.result(class_names)


def similarity_matrix(vectors: np.ndarray) -> np.ndarray:
    """The K x K cosine similarity between the rows of ``vectors`` (float64, clipped to [-1, 1]).
    A zero row has similarity 0 to everything."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(vectors) == 0:
        return np.zeros((0, 0))
    return np.clip(cosine_similarity(vectors), -1.0, 1.0)
