"""Clustering metrics of any rows: call :func:`cluster_metrics` with the true labels and the clusters of
the rows to score (a whole split, or any subset of it, such as a clean test subset)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def hungarian_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment`` on the contingency table); with more clusters than
    classes, the unmatched clusters count as wrong."""
    table = contingency_matrix(true, pred)  # classes x clusters, present values only
    rows, columns = linear_sum_assignment(table, maximize=True)
    return float(table[rows, columns].sum() / len(true))


def size_statistics(pred: np.ndarray, clusters: int) -> dict:
    """Sizes of the ``clusters`` clusters (0..K-1) among ``pred``: active clusters (at least one row),
    min, max, mean, std and the coefficient of variation (std / mean) over all K, empty ones included."""
    sizes = np.bincount(np.asarray(pred, dtype=np.int64), minlength=clusters).astype(np.float64)
    mean = float(sizes.mean()) if clusters else 0.0
    std = float(sizes.std()) if clusters else 0.0
    return {"active_clusters": int((sizes > 0).sum()), "size_min": int(sizes.min()) if clusters else 0,
            "size_max": int(sizes.max()) if clusters else 0, "size_mean": mean, "size_std": std,
            "size_cv": std / mean if mean else 0.0}


def cluster_metrics(true: np.ndarray | None, pred: np.ndarray, clusters: int) -> dict:
    """The metrics of rows with clusters ``pred`` (0..``clusters``-1) and true labels ``true`` (-1: no
    label): ``images``, :func:`size_statistics`, and, over the labelled rows, ``labelled``, Hungarian
    ``acc``, ``nmi`` and ``ari`` (scikit-learn). Without labelled rows (``true`` None or all -1) the
    label metrics are left out, not faked."""
    pred = np.asarray(pred, dtype=np.int64)
    result = {"images": int(len(pred)), **size_statistics(pred, clusters)}
    if true is None:
        return result
    true = np.asarray(true, dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"{len(true)} true labels for {len(pred)} cluster assignments")
    labelled = true >= 0
    if not labelled.any():
        return result
    true, pred = true[labelled], pred[labelled]
    result.update(labelled=int(labelled.sum()), acc=hungarian_accuracy(true, pred),
                  nmi=float(normalized_mutual_info_score(true, pred)), ari=float(adjusted_rand_score(true, pred)))
    return result


def neighbour_agreement(neighbours: np.ndarray, labels: np.ndarray) -> float | None:
    """The share of mined neighbour pairs (row i, ``neighbours[i, j]``) whose two images have the same
    label, over the rows with a label: an upper bound of sorts on what pairs of neighbours can teach
    a clustering. None without labels."""
    labels = np.asarray(labels, dtype=np.int64)
    labelled = labels >= 0
    if not labelled.any():
        return None
    return float((labels[neighbours[labelled]] == labels[labelled, None]).mean())
