"""Pseudo labels: each cluster's label is voted by its k train images nearest to the cluster's centre.

The centre of a cluster is the mean of its members' L2-normalised embeddings (for k-means on
normalised embeddings, its centroid); its representatives are the k members with the highest cosine
similarity to the centre (all members when it has fewer). Their majority true label (ties: the lower
class index) is the cluster's label, and every member gets it as its pseudo label. The cluster's
purity is the share of its representatives whose true label equals that label.

``pseudo_labels.json`` (read by the distillation stage) holds::

    {"method": "temi", "split": "train", "k": 10,
     "index": [...],            # the store's index (index_in_split) of every image of the split, store order
     "cluster": [...],          # its cluster
     "pseudo_label": [...],     # the class index (into the store's class_names) voted for its cluster; -1: none
     "cluster_to_label": {"<cluster>": class index},
     "representatives": {"<cluster>": [store index of the k images nearest the centre, nearest first]},
     "purity": {"<cluster>": share of the representatives whose true label is the cluster's label},
     "class_names": [...]}

Empty clusters have no entry; without true labels (all -1) no cluster gets a label.
"""

from __future__ import annotations

import numpy as np

from embedlens.geometry import BLOCK_ROWS, class_centroids, l2_normalize, row_norms


def representatives(features: np.ndarray, cluster: np.ndarray, k: int) -> dict[int, np.ndarray]:
    """For each non-empty cluster, the row numbers of its ``k`` members most cosine-similar to its
    centre (the mean of the members' normalised embeddings), most similar first (ties: lower row first).
    The similarities are computed block by block (:data:`embedlens.geometry.BLOCK_ROWS` rows)."""
    cluster = np.asarray(cluster, dtype=np.int64)
    centres = class_centroids(features, cluster, normalized=True)
    centre_of = np.full(int(cluster.max(initial=-1)) + 1, -1, dtype=np.int64)
    centre_of[centres.labels] = np.arange(len(centres))
    unit_centres = l2_normalize(centres.vectors)
    norms = row_norms(features)
    similarity = np.empty(len(cluster), dtype=np.float32)
    for start in range(0, len(cluster), BLOCK_ROWS):
        block = np.asarray(features[start:start + BLOCK_ROWS], dtype=np.float32)
        own = unit_centres[centre_of[cluster[start:start + BLOCK_ROWS]]]
        similarity[start:start + len(block)] = np.einsum("nd,nd->n", block, own)
    similarity /= np.where(norms > 0, norms, 1.0)
    order = np.lexsort((np.arange(len(cluster)), -similarity, cluster))  # by cluster, most similar first
    labels, starts = np.unique(cluster[order], return_index=True)
    return {label: order[start:start + min(k, stop - start)]
            for label, start, stop in zip(labels.tolist(), starts, [*starts[1:], len(order)])}


def pseudo_labels(features: np.ndarray, cluster: np.ndarray, labels: np.ndarray, index: np.ndarray, k: int, *,
                  method: str, split: str, class_names: list[str]) -> dict:
    """The ``pseudo_labels.json`` document (see the module docstring) of the images of one split:
    ``features`` (N, D), their ``cluster`` and true ``labels`` (-1: none) and store ``index``, in store order."""
    labels = np.asarray(labels, dtype=np.int64)
    chosen = representatives(features, cluster, k)
    cluster_to_label, purity, chosen_index = {}, {}, {}
    for label, rows in chosen.items():
        chosen_index[str(label)] = np.asarray(index)[rows].tolist()
        votes = labels[rows]
        votes = votes[votes >= 0]
        if len(votes):
            winner = int(np.bincount(votes).argmax())
            cluster_to_label[str(label)] = winner
            purity[str(label)] = float((labels[rows] == winner).mean())
    pseudo = [cluster_to_label.get(str(c), -1) for c in np.asarray(cluster).tolist()]
    return {"method": method, "split": split, "k": int(k), "index": np.asarray(index).tolist(),
            "cluster": np.asarray(cluster).tolist(), "pseudo_label": pseudo, "cluster_to_label": cluster_to_label,
            "representatives": chosen_index, "purity": purity, "class_names": list(class_names)}
