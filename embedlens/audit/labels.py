"""Likely label errors: out-of-sample predicted probabilities for every labelled image from a
cross-validated probe on the features, ranked by cleanlab.

The probe is a softmax classifier on L2-normalised, standardised features: multinomial logistic
regression, or with ``audit.probe_hidden`` units an MLP, optionally ``audit.probe_ensemble`` of them
averaged (:func:`embedlens.probe.softmax_probe`: torch, minibatched, on the GPU when there is one), fitted K
times (stratified K-fold, seeded, one fold after the other); each image's probabilities come from the
fit that did not see it and are written to disk in float32 as they come (:func:`embedlens.probe.out_of_fold`),
so a killed audit resumes at the first fold not done. cleanlab's confident learning (:func:`cleanlab.filter.find_label_issues`,
Northcutt et al. 2021) flags the images whose given label disagrees with what the probe expects, most
likely error first (ranked by self-confidence: the probability of the given label). A class with fewer
images than folds cannot be cross-validated; its images are left out of the check, and the notes say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
import torch

from embedlens.audit.duplicates import AuditInputError
from embedlens.audit.settings import AuditSettings
from embedlens.checkpoint import fingerprint
from embedlens.probe import OutOfFold, out_of_fold, softmax_probe
from embedlens.store import FeatureStore

ISSUE_COLUMNS = ["rank", "split", "index_in_split", "label", "class_name", "suggested_label", "suggested_class",
                 "label_quality", "suggested_probability"]


def out_of_sample_probabilities(features: np.ndarray, positions: np.ndarray, targets: np.ndarray,
                                settings: AuditSettings, device: torch.device, *, folder: str | Path | None = None
                                ) -> OutOfFold:
    """(N, C) float32 probabilities of classes ``0..C-1`` for rows ``positions`` of ``features``, each from the probe fitted on the other folds (``targets``: (N,) in ``0..C-1``,
    every class at least ``folds`` rows). ``folder``: the probabilities file and fold markers, so a
    killed run resumes (:func:`embedlens.probe.out_of_fold`)."""
    classes = int(targets.max()) + 1
    key = fingerprint([settings.probe_key(), classes], features, positions, targets)
    fit_fold = softmax_probe(features, targets, classes, settings.probe(), device, positions=positions)
    return out_of_fold(targets, classes, settings.folds, settings.seed, fit_fold, folder=folder, key=key)


@dataclass
class LabelCheck:
    """What :func:`check_labels` found: ``issues`` (:data:`ISSUE_COLUMNS`, most likely error first),
    how many images were checked, the probe's out-of-sample accuracy on them (None without a check),
    the classes left out, and notes."""

    issues: pd.DataFrame
    checked: int
    probe_accuracy: float | None
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def empty_issues() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype="object" if name in ("split", "class_name", "suggested_class")
                                         else "float64" if name in ("label_quality", "suggested_probability")
                                         else "int64") for name in ISSUE_COLUMNS})


def check_labels(features: np.ndarray, rows: pd.DataFrame, class_names: Sequence[str], settings: AuditSettings, *,
                 device: torch.device = torch.device("cpu"), folder: str | Path | None = None) -> LabelCheck:
    """Likely label errors among ``rows`` (``split, index_in_split, label``, one per row of
    ``features``; label -1 means unlabelled and is not checked). ``class_names[label]`` names a label.
    ``folder``: for the probabilities of the folds (:func:`out_of_sample_probabilities`)."""
    labels = rows["label"].to_numpy()
    counts = pd.Series(labels[labels >= 0]).value_counts()
    small = sorted(int(label) for label, count in counts.items() if count < settings.folds)
    left_out = [str(class_names[label]) for label in small]
    checked = np.flatnonzero((labels >= 0) & ~np.isin(labels, small))
    classes = np.unique(labels[checked])
    notes = []
    if left_out:
        notes.append(f"{len(left_out)} class(es) have fewer than audit.folds={settings.folds} labelled images and "
                     f"were not checked for label errors: {', '.join(left_out[:12])}"
                     + (" ..." if len(left_out) > 12 else ""))
    if len(classes) < 2:
        notes.append(f"label errors were not searched: {len(classes)} class(es) with at least {settings.folds} "
                     "labelled images; the probe needs two")
        return LabelCheck(empty_issues(), 0, None, left_out, notes)
    targets = np.searchsorted(classes, labels[checked])
    probabilities = out_of_sample_probabilities(features, checked, targets, settings, device, folder=folder).probabilities
    ranked = find_label_issues(labels=targets, pred_probs=probabilities, return_indices_ranked_by="self_confidence",
                               n_jobs=1)
    quality = get_label_quality_scores(targets, probabilities, method="self_confidence")
    suggested = probabilities.argmax(axis=1)
    chosen = rows.iloc[checked[ranked]]
    issues = pd.DataFrame({
        "rank": np.arange(1, len(ranked) + 1), "split": chosen["split"].to_numpy(),
        "index_in_split": chosen["index_in_split"].to_numpy(), "label": chosen["label"].to_numpy(),
        "class_name": [str(class_names[label]) for label in chosen["label"]],
        "suggested_label": classes[suggested[ranked]],
        "suggested_class": [str(class_names[label]) for label in classes[suggested[ranked]]],
        "label_quality": quality[ranked], "suggested_probability": probabilities[ranked, suggested[ranked]],
    }, columns=ISSUE_COLUMNS)
    accuracy = float((suggested == targets).mean())
    return LabelCheck(issues, len(checked), accuracy, left_out, notes)


def labelled_rows(store: FeatureStore, splits: Sequence[str] | None) -> pd.DataFrame:
    """One row per image of ``splits`` of ``store`` (None: every split), in store order: ``split,
    index_in_split, label``. A split the store lacks is an error naming those it has."""
    splits = list(splits or store.splits)
    absent = [split for split in splits if split not in store.splits]
    if absent:
        raise AuditInputError(f"audit.label_splits: {absent} not in {store.path}; it has {store.splits}")
    return pd.concat([pd.DataFrame({"split": split, "index_in_split": store.index(split), "label": store.labels(split)})
                      for split in splits], ignore_index=True)


def labelled_features(store: FeatureStore, splits: Sequence[str] | None) -> tuple[np.ndarray, pd.DataFrame]:
    """:func:`labelled_rows` and their features (row ``i`` of the array is row ``i`` of the table)."""
    rows = labelled_rows(store, splits)
    return np.concatenate([store.features(split) for split in rows["split"].unique()]), rows
