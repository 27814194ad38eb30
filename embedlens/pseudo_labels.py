"""The clustering stage's pseudo labels as other stages read them: where they are and how they join a
feature store's rows. A light module (no torch), so the workflow's rules can name the file.

The clustering stage writes ``{results}/{dataset}/{backbone}/cluster/{method}/pseudo_labels.json``::

    {"method": "temi", "split": "train",          # the split it was fitted on
     "index": [...],                              # index_in_split of every sample of that split, in store order
     "cluster": [...], "pseudo_label": [...],     # per sample; pseudo_label indexes the store's class_names, -1: none
     "cluster_to_label": {...}, "representatives": {...}, "purity": {...}, "k": 100}

Readers join the labels to the store's rows by ``index``, never by position. A fit that the clustering
stage skipped leaves a file without samples and with the ``reason``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PSEUDO = "pseudo"
"""The value of a stage's ``labels`` setting that reads pseudo labels instead of the dataset's labels."""


class PseudoLabelsError(ValueError):
    """A pseudo_labels.json that does not fit the store it is read with; the message says why and what to do."""


def pseudo_labels_path(results: str, dataset: str, backbone: str, method: str) -> str:
    """Where the clustering stage writes the pseudo labels of ``method`` (the contract above)."""
    return f"{results}/{dataset}/{backbone}/cluster/{method}/pseudo_labels.json"


def read_pseudo_labels(path: str | Path, split: str, index: np.ndarray, num_classes: int) -> np.ndarray:
    """The pseudo label of every row of ``split`` of a store whose rows have ``index`` (index_in_split),
    in store order, from the clustering stage's ``pseudo_labels.json`` (keys ``split``, ``index`` and
    ``pseudo_label``: a class index into the store's class names, one per sample, -1 for none). The file
    must cover exactly the split's rows; its order may differ (rows are matched by ``index``)."""
    with open(path) as handle:
        document = json.load(handle)
    absent = [key for key in ("split", "index", "pseudo_label") if key not in document]
    if absent:
        raise PseudoLabelsError(f"{path}: no key(s) {', '.join(absent)}; the clustering stage's pseudo_labels.json "
                                "has split, index and pseudo_label")
    if "reason" in document and not document["index"]:
        raise PseudoLabelsError(f"{path}: the clustering stage has no pseudo labels: {document['reason']}")
    if document["split"] != split:
        raise PseudoLabelsError(f"{path}: pseudo labels of split {document['split']!r}, but they are read for split "
                                f"{split!r}; cluster that split, or set the reading stage's train_split: "
                                f"{document['split']}")
    given = np.asarray(document["index"], dtype=np.int64)
    labels = np.asarray(document["pseudo_label"], dtype=np.int64)
    if len(given) != len(labels):
        raise PseudoLabelsError(f"{path}: {len(given)} index entries but {len(labels)} pseudo labels")
    if len(np.unique(given)) != len(given):
        raise PseudoLabelsError(f"{path}: the index lists some samples more than once")
    missing, extra = np.setdiff1d(index, given), np.setdiff1d(given, index)
    if len(missing) or len(extra):
        raise PseudoLabelsError(
            f"{path}: the pseudo labels do not cover the store's {split!r} rows: {len(missing)} rows without a pseudo "
            f"label (e.g. index {missing[:5].tolist()}), {len(extra)} labels of samples the store lacks (e.g. "
            f"{extra[:5].tolist()}); the clustering stage was run on another store; rebuild it")
    if labels.min(initial=0) < -1 or labels.max(initial=0) >= num_classes:
        raise PseudoLabelsError(f"{path}: pseudo labels must be class indices 0..{num_classes - 1} of the store's "
                                f"class names, or -1 for none; found {labels.min()}..{labels.max()}")
    order = np.argsort(given)
    return labels[order][np.searchsorted(given[order], index)]
