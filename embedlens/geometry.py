"""Embedding geometry shared by every stage: L2 normalisation, per-dimension standardisation, class
centroids (also streamed over a store too large for memory), and cosine similarity between centroids.

Labels are the dataset's integer labels; rows labelled -1 (no class) never feed a centroid. Everything
here works block by block in float32 (:data:`BLOCK_ROWS` rows at a time), so no full-size float64
copy of a split is ever made, whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.metrics.pairwise import cosine_similarity

BLOCK_ROWS = 16_384  # rows per block: 64 MB of float32 temporaries at 1,024 dimensions


def row_norms(features: np.ndarray) -> np.ndarray:
    """The L2 norm of every row (float32), computed block by block without a squared copy."""
    norms = np.empty(len(features), dtype=np.float32)
    for start in range(0, len(features), BLOCK_ROWS):
        block = np.asarray(features[start:start + BLOCK_ROWS], dtype=np.float32)
        norms[start:start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (one output array, filled block by block); all-zero rows
    stay zero."""
    features = np.asarray(features)
    unit = np.empty(features.shape, dtype=np.float32)
    for start in range(0, len(features), BLOCK_ROWS):
        block = np.asarray(features[start:start + BLOCK_ROWS], dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        np.divide(block, np.where(norms > 0, norms, 1.0), out=unit[start:start + len(block)])
    return unit


def column_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation (float32; a zero deviation counts as 1) of the rows,
    from float64 sums block by block: the full-array result without a float64 copy of the array."""
    features = np.asarray(features)
    total = np.zeros(features.shape[1])
    for start in range(0, len(features), BLOCK_ROWS):
        total += features[start:start + BLOCK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / max(len(features), 1)
    squares = np.zeros(features.shape[1])
    for start in range(0, len(features), BLOCK_ROWS):
        centred = features[start:start + BLOCK_ROWS] - mean
        squares += np.einsum("ij,ij->j", centred, centred)
    std = np.sqrt(squares / max(len(features), 1))
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Standardizer:
    """Per-dimension mean and standard deviation of some features (a zero deviation counts as 1)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Standardizer:
        """The statistics of ``features``, from float64 sums block by block (:func:`column_statistics`)."""
        return cls(*column_statistics(features))

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
    :class:`Centroids` of every class seen. Each block of :data:`BLOCK_ROWS` rows is summed per class
    in one product of a sparse (classes x rows) weight matrix with the float32 rows as they are (no
    masked or converted copy): a row's weight is 0 when it is left out, 1 / its norm with
    ``normalized`` (the mean direction, every image weighing the same), else 1. The blocks' sums are
    added up in float64. ``classes`` keeps only these labels.
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
        for start in range(0, len(features), BLOCK_ROWS):
            self._add_block(features[start:start + BLOCK_ROWS], labels[start:start + BLOCK_ROWS])

    def _add_block(self, features: np.ndarray, labels: np.ndarray) -> None:
        keep = labels >= 0
        if self.classes is not None:
            keep &= np.isin(labels, self.classes)
        if not keep.any():
            return
        weights = keep.astype(np.float32)
        if self.normalized:
            norms = row_norms(features)
            weights /= np.where(norms > 0, norms, 1.0)
        present, inverse = np.unique(np.where(keep, labels, -1), return_inverse=True)
        if present[0] == -1:  # the rows left out fall in a class of their own, weight 0, dropped below
            present, inverse = present[1:], inverse - 1
        kept_rows = np.flatnonzero(keep)
        block = features if features.dtype in (np.float32, np.float64) else features.astype(np.float32)
        one_hot = sparse.csr_matrix((weights[kept_rows].astype(block.dtype), (inverse[kept_rows], kept_rows)),
                                    shape=(len(present), len(labels)))
        sums = np.asarray(one_hot @ block, dtype=np.float64)
        counts = np.bincount(inverse[kept_rows], minlength=len(present))
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
