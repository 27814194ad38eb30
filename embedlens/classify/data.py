"""Which classes the classifier sees, their feature rows from the store, and the checks that say
plainly when the data cannot support a classifier or a K-fold estimate."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedlens.classify.settings import ClassifySettings
from embedlens.roles import holdout_note, stratified_holdout
from embedlens.store import FeatureStore


@dataclass(frozen=True)
class ClassSet:
    """The classes of a classifier: dataset labels (ascending) and names; column ``i`` of every
    probability matrix and row ``i`` of the confusion matrix is ``labels[i]``."""

    labels: tuple[int, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """Model targets (0 .. C-1) of dataset ``labels``; every label must be one of the set's."""
        lookup = {label: i for i, label in enumerate(self.labels)}
        return np.array([lookup[int(label)] for label in labels], dtype=np.int64)


@dataclass
class LabelledRows:
    """Feature rows of one split restricted to a :class:`ClassSet`, in store order."""

    features: np.ndarray  # float32 (N, D)
    targets: np.ndarray   # int64 (N,), 0 .. C-1
    index: np.ndarray     # int64 (N,), index_in_split (joins the manifest)


def choose_classes(mode: str, overlap_document: Mapping, store: FeatureStore, train_split: str) -> ClassSet:
    """``overlap``: the classes of ``overlap/classes.json`` (``overlap_document``); ``all``: every
    class with at least one image in ``train_split``. Names come from the store."""
    names = store.class_names
    if mode == "overlap":
        labels = sorted(int(item["label"]) for item in overlap_document.get("classes", []))
    elif mode == "all":
        labels = sorted(int(label) for label in np.unique(store.labels(train_split)) if label >= 0)
    else:
        raise ValueError(f"classify.classes is {mode!r}; allowed values: overlap, all")
    unknown = [label for label in labels if not 0 <= label < len(names)]
    if unknown:
        raise ValueError(f"labels {unknown} of the overlap set are not classes of {store.path} "
                         f"({len(names)} classes); the overlap stage ran on another store")
    return ClassSet(tuple(labels), tuple(names[label] for label in labels))


def load_rows(store: FeatureStore, split: str, classes: ClassSet) -> LabelledRows:
    """The rows of ``split`` whose label is in ``classes``."""
    positions = store.positions(split, labels=classes.labels)
    labels = store.labels(split)[positions]
    return LabelledRows(store.features(split, positions).astype(np.float32, copy=False),
                        classes.targets(labels), store.index(split)[positions])


def training_rows(store: FeatureStore, classes_json: str | Path, mode: str, train_split: str
                  ) -> tuple[ClassSet, LabelledRows]:
    """The classes a training rule works on (:func:`choose_classes` from the overlap stage's
    ``classes.json``) and their rows of ``train_split``; ``store`` must already have passed its check."""
    with open(classes_json) as handle:
        classes = choose_classes(mode, json.load(handle), store, train_split)
    return classes, load_rows(store, train_split, classes)


def fit_and_test_rows(store: FeatureStore, classes_json: str | Path, settings: ClassifySettings
                      ) -> tuple[ClassSet, LabelledRows, LabelledRows, list[str]]:
    """The classes (:func:`training_rows`), the rows the classifier is fitted on and the rows it is
    tested on, with notes for the summary. The test rows are ``settings.test_split``'s; when that is
    the train split (a dataset without an evaluation split), a seeded, stratified hold-out of
    ``settings.holdout_fraction`` of it, which the fit rows then leave out."""
    classes, rows = training_rows(store, classes_json, settings.classes, settings.train_split)
    if settings.test_split != settings.train_split:
        return classes, rows, load_rows(store, settings.test_split, classes), []
    held, notes = stratified_holdout(rows.targets, settings.holdout_fraction, settings.seed)
    notes.insert(0, holdout_note(settings.train_split, settings.holdout_fraction, int(held.sum()), int((~held).sum())))
    return classes, _rows(rows, ~held), _rows(rows, held), notes


def _rows(rows: LabelledRows, mask: np.ndarray) -> LabelledRows:
    return LabelledRows(rows.features[mask], rows.targets[mask], rows.index[mask])


def class_counts(targets: np.ndarray, classes: ClassSet) -> dict[str, int]:
    """Images per class name (0 for a class without any)."""
    counts = np.bincount(targets, minlength=len(classes))
    return {name: int(count) for name, count in zip(classes.names, counts)}


def _short(counts: Mapping[str, int], needed: int) -> list[str]:
    return [f"{name} ({count})" for name, count in counts.items() if count < needed]


def classifier_problem(classes: ClassSet, train_targets: np.ndarray, val_fraction: float,
                       train_split: str) -> str | None:
    """Why no classifier can be trained on these classes, or None when one can: fewer than two
    classes, or a class too small for the stratified train/validation split."""
    if len(classes) < 2:
        return (f"the classifier needs at least two classes; the overlap set has {len(classes)} "
                f"({', '.join(classes.names) or 'none'}). Lower overlap.threshold, use overlap.selection: "
                f"top_n, or set classify.classes: all")
    short = _short(class_counts(train_targets, classes), 2)
    if short:
        return (f"the stratified train/validation split needs at least 2 {train_split!r} images per class; "
                f"too few: {', '.join(short)}")
    total = len(train_targets)
    held_out = math.ceil(val_fraction * total)
    if held_out < len(classes) or total - held_out < len(classes):
        return (f"classify.val_fraction {val_fraction} of {total} {train_split!r} images leaves {held_out} for "
                f"validation and {total - held_out} for training; each side needs at least one image per class "
                f"({len(classes)})")
    return None


def crossval_per_class(folds: int) -> int:
    """Images a class needs for ``folds``-fold cross-validation: one in every fold, and at least two
    in the training part of every fold, which is split again for early stopping (2 folds: 4)."""
    return max(folds, 4 if folds == 2 else 3)


def crossval_problem(classes: ClassSet, train_targets: np.ndarray, folds: int, val_fraction: float,
                     train_split: str) -> str | None:
    """Why the K-fold out-of-sample probabilities cannot be computed, or None when they can: every
    class needs :func:`crossval_per_class` images, and the training part of each fold must itself
    split into training and validation with every class on both sides."""
    if len(classes) < 2:
        return f"cross-validation needs at least two classes; there are {len(classes)}"
    needed = crossval_per_class(folds)
    short = _short(class_counts(train_targets, classes), needed)
    if short:
        return (f"{folds}-fold cross-validation needs at least {needed} {train_split!r} images per class; "
                f"too few: {', '.join(short)}. Lower classify.folds or leave these classes out")
    fold_train = len(train_targets) - math.ceil(len(train_targets) / folds)
    fold_val = math.ceil(val_fraction * fold_train)
    if fold_val < len(classes) or fold_train - fold_val < len(classes):
        return (f"a fold's {fold_train} training images do not split into validation and training with at "
                f"least one image per class ({len(classes)} classes, classify.val_fraction {val_fraction})")
    return None


def describe_classes(classes: ClassSet, names_shown: int = 12) -> str:
    """A short list of class names for logs."""
    shown = ", ".join(classes.names[:names_shown])
    return shown + (f", ... ({len(classes)} classes)" if len(classes) > names_shown else "")

