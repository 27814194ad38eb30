"""The rows the distillation learns from, chooses on and tests on: the fit part of the train split (with
the dataset's labels or the clustering stage's pseudo labels), a validation part carved from it for
every choice the evaluation makes, and the test rows with their true labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedlens.distill.settings import DistillInputError, DistillSettings
from embedlens.pseudo_labels import PSEUDO, read_pseudo_labels
from embedlens.roles import stratified_holdout
from embedlens.store import FeatureStore


def label_source(settings: DistillSettings, pseudo_labels: str | Path | None = None) -> str:
    """How the labels the distillation learned from are described in its outputs."""
    if settings.labels == PSEUDO:
        return f"pseudo labels of clustering method {settings.cluster_method} ({pseudo_labels})"
    return "true labels"


@dataclass
class LabelledFeatures:
    """Rows of one split: features (N, D) float32 in the store's space, labels (N,), index_in_split (N,)."""

    features: np.ndarray
    labels: np.ndarray
    index: np.ndarray

    def take(self, mask: np.ndarray) -> LabelledFeatures:
        return LabelledFeatures(self.features[mask], self.labels[mask], self.index[mask])


@dataclass
class DistillRows:
    """``fit``: the train rows that are distilled and that every baseline trains on; ``validation``: the
    train rows held out to choose the evaluation's learning rates and epochs (labels of the same source
    as ``fit``); ``test``: the rows every classifier is tested on, once, with their true labels;
    ``notes``: classes too small to give validation rows."""

    fit: LabelledFeatures
    validation: LabelledFeatures
    test: LabelledFeatures
    notes: list[str] = field(default_factory=list)


def read_rows(store: FeatureStore, settings: DistillSettings, pseudo_labels: str | Path | None = None) -> DistillRows:
    """The rows of :class:`DistillRows`. Train rows without a class (of the label source) are left out.
    When the test split is the train split (a dataset without an evaluation split), the test rows are a
    seeded, stratified hold-out of ``settings.holdout_fraction`` of it by true label. The validation
    part is a seeded hold-out of ``settings.val_fraction`` of every class of the remaining train rows,
    stratified by the labels the classifiers learn; it never holds a test row. The errors name the
    split, the file or the setting that would work."""
    for key in ("train_split", "test_split"):
        split = getattr(settings, key)
        if split not in store.splits:
            raise DistillInputError(f"distill.{key}: {store.path} has no split {split!r}; it has "
                                    f"{', '.join(store.splits)}")
    train = store.read_split(settings.train_split)
    labels = train.labels
    if settings.labels == PSEUDO:
        if pseudo_labels is None:
            raise DistillInputError("distill.labels is pseudo but no pseudo_labels.json was given")
        labels = read_pseudo_labels(pseudo_labels, settings.train_split, train.index, len(store.class_names))
    keep = labels >= 0
    test = store.read_split(settings.test_split)
    tested = test.labels >= 0
    if settings.test_split == settings.train_split:
        held, _ = stratified_holdout(train.labels, settings.holdout_fraction, settings.seed)
        keep, tested = keep & ~held, held
    # seed + 1: a stream of its own, not the test hold-out's draws again
    validation, notes = stratified_holdout(np.where(keep, labels, -1), settings.val_fraction, settings.seed + 1)
    fit = keep & ~validation
    if fit.sum() == 0:
        raise DistillInputError(f"{store.path}: split {settings.train_split!r} has no labelled rows; distillation "
                                f"learns vectors per class (use distill.labels: {PSEUDO} with the clustering stage)")
    if tested.sum() == 0:
        raise DistillInputError(f"{store.path}: split {settings.test_split!r} has no labelled rows to test on; "
                                "set distill.test_split to a labelled split")
    rows = LabelledFeatures(train.features, labels, train.index)
    return DistillRows(rows.take(fit), rows.take(validation), LabelledFeatures(test.features, test.labels, test.index)
                       .take(tested), [f"Validation part: {note}." for note in notes])
