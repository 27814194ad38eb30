"""Pictures of the flagged confusion pairs: a UMAP of the two classes' test features and a grid of
sample images, drawn from the original images (the only place the classifier stage opens them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import umap

from embedlens.classify.data import ClassSet
from embedlens.export import safe_name
from embedlens.plots import UMAP_MIN_DIST, UMAP_NEIGHBOURS, image_rows, scatter_map
from embedlens.summary import Artifact


@dataclass(frozen=True)
class TestPredictions:
    """The classifier's test predictions: row ``i`` is the test image ``index[i]``."""

    index: np.ndarray          # int64 (N,), index_in_split
    targets: np.ndarray        # int64 (N,), true class (0 .. C-1)
    probabilities: np.ndarray  # float32 (N, C)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def pictured_pairs(confusion: pd.DataFrame, limit: int) -> list[tuple[int, int]]:
    """The unordered pairs (dataset labels, in order of first appearance) of the first flagged
    directions of the confusion pairs table (sorted by mis_rate), at most ``limit``: both directions
    of a pair share one picture."""
    chosen: list[tuple[int, int]] = []
    for true, pred in confusion[["true_label", "pred_label"]].itertuples(index=False):
        pair = (int(true), int(pred))
        if pair not in chosen and pair[::-1] not in chosen:
            chosen.append(pair)
    return chosen[:limit]


def pair_embedding(features: np.ndarray, *, seed: int) -> np.ndarray:
    """UMAP of ``features`` to 2-D, seeded (umap-learn; deterministic, single-threaded with a seed), with
    :data:`~embedlens.plots.UMAP_NEIGHBOURS` and :data:`~embedlens.plots.UMAP_MIN_DIST`. ``n_neighbors`` is capped at the number of rows less one; the spectral start needs more rows
    than a handful, so small sets start at random positions."""
    count = len(features)
    if count < 3:
        return np.zeros((count, 2))
    reducer = umap.UMAP(n_neighbors=min(UMAP_NEIGHBOURS, count - 1), min_dist=UMAP_MIN_DIST, random_state=seed,
                        init="spectral" if count > 20 else "random", metric="cosine", n_jobs=1)
    return reducer.fit_transform(np.asarray(features, dtype=np.float32))


def _chosen(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(rows, size=min(count, len(rows)), replace=False)) if len(rows) else rows


def draw_pair(pair: tuple[int, int], classes: ClassSet, predictions: TestPredictions, features: np.ndarray,
              image_of: Callable[[int], np.ndarray], folder: Path, rank: int, *, samples_per_class: int,
              misclassified: int, seed: int) -> list[Artifact]:
    """The two pictures of ``pair`` (dataset labels), written into ``folder``: ``umap_<rank>_<a>__<b>.png``
    (the test features of both classes, ``features`` aligned with ``predictions``, coloured by true
    class, misclassified images crossed) and ``samples_<rank>_<a>__<b>.png`` (``samples_per_class``
    correct images of each class drawn at random with ``seed``, then up to ``misclassified`` images
    of each direction predicted as the other class, most confident first, with both probabilities).
    ``image_of(index_in_split)`` returns a test image as RGB uint8. Returns the two artifacts, their
    paths relative to ``folder``."""
    position = {label: i for i, label in enumerate(classes.labels)}
    a, b = position[pair[0]], position[pair[1]]
    name_a, name_b = classes.names[a], classes.names[b]
    targets, predicted, probabilities = predictions.targets, predictions.predicted, predictions.probabilities
    rows = np.flatnonzero(np.isin(targets, [a, b]))
    stem = f"{rank:02d}_{safe_name(name_a)}__{safe_name(name_b)}"
    folder.mkdir(parents=True, exist_ok=True)

    points = pair_embedding(features[rows], seed=seed)
    wrong = predicted[rows] != targets[rows]
    scatter_map(points, [classes.names[t] for t in targets[rows]], folder / f"umap_{stem}.png", marked=wrong,
                marked_label="misclassified", title=f"{name_a} vs {name_b}: UMAP of the test features")

    rng = np.random.default_rng(seed)
    grid = []
    for own in (a, b):
        correct = _chosen(np.flatnonzero((targets == own) & (predicted == own)), samples_per_class, rng)
        grid.append((f"{classes.names[own]}\ncorrect", [image_of(int(predictions.index[r])) for r in correct],
                     [f"P={probabilities[r, own]:.2f}" for r in correct]))
    for true, other in ((a, b), (b, a)):
        confused = np.flatnonzero((targets == true) & (predicted == other))
        confused = confused[np.argsort(-probabilities[confused, other], kind="stable")][:misclassified]
        grid.append((f"{classes.names[true]}\nas {classes.names[other]}",
                     [image_of(int(predictions.index[r])) for r in confused],
                     [f"P({classes.names[other]})={probabilities[r, other]:.2f}\n"
                      f"P({classes.names[true]})={probabilities[r, true]:.2f}" for r in confused]))
    image_rows(grid, folder / f"samples_{stem}.png", title=f"{name_a} vs {name_b}: test images")

    confused_ab = int(((targets == a) & (predicted == b)).sum())
    confused_ba = int(((targets == b) & (predicted == a)).sum())
    return [Artifact(f"umap_{stem}.png",
                     f"{name_a} vs {name_b}: UMAP of their {len(rows)} test images' features, coloured by true "
                     f"class; crosses: misclassified ({int(wrong.sum())}, {confused_ab} {name_a} as {name_b}, "
                     f"{confused_ba} {name_b} as {name_a})"),
            Artifact(f"samples_{stem}.png",
                     f"{name_a} vs {name_b}: correctly classified test images of each class, then those "
                     f"predicted as the other class with the predicted and the true class's probability")]
