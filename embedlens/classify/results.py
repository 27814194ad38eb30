"""The classifier stage's files: what each rule writes and the next one reads, including the
well-formed, empty versions that say why when the data cannot support a classifier or a K-fold
estimate, and the stage's ``summary.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from embedlens.atomic import atomic_path, write_text_atomic
from embedlens.classify.analysis import write_csv
from embedlens.classify.data import ClassSet, LabelledRows
from embedlens.classify.pictures import TestPredictions
from embedlens.classify.training import HISTORY_COLUMNS, CrossValResult, FitResult
from embedlens.plots import note_figure, training_curves
from embedlens.summary import Artifact, StageSummary

PREDICTION_COLUMNS = ["index_in_split", "label", "true", "pred_label", "pred", "correct", "p_true", "p_pred"]


def _save_npz(path: str | Path, **arrays) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def _class_arrays(classes: ClassSet) -> dict:
    return {"class_labels": np.asarray(classes.labels, dtype=np.int64),
            "class_names": np.asarray(classes.names, dtype=str)}


def _classes_from(data) -> ClassSet:
    return ClassSet(tuple(int(x) for x in data["class_labels"]), tuple(str(x) for x in data["class_names"]))


def write_training_outputs(paths: Mapping[str, str | Path], classes: ClassSet, info: Mapping, *,
                           fit: FitResult | None = None, test: LabelledRows | None = None,
                           probabilities: np.ndarray | None = None, model: Mapping | None = None) -> None:
    """The training rule's files: ``model`` (the weights and what rebuilds the network),
    ``history`` (CSV) and ``curve`` (PNG), ``predictions`` (CSV, one row per test image) and
    ``probabilities`` (NPZ: index_in_split, targets, probabilities, class_labels, class_names),
    and ``training`` (JSON: ``info``). Without ``fit`` (no classifier: ``info["reason"]`` says why)
    every file is written empty but well-formed and the curve's picture carries the reason."""
    write_text_atomic(paths["training"], json.dumps(info, indent=2) + "\n")
    if fit is None:
        with atomic_path(paths["model"]) as tmp:
            torch.save({"status": "skipped", "reason": info["reason"]}, tmp)
        write_csv(pd.DataFrame(columns=HISTORY_COLUMNS), paths["history"])
        note_figure(f"no classifier: {info['reason']}", paths["curve"])
        write_csv(pd.DataFrame(columns=PREDICTION_COLUMNS), paths["predictions"])
        _save_npz(paths["probabilities"], index_in_split=np.empty(0, np.int64), targets=np.empty(0, np.int64),
                  probabilities=np.empty((0, len(classes)), np.float32), **_class_arrays(classes))
        return
    with atomic_path(paths["model"]) as tmp:
        torch.save({**model, "state_dict": fit.state_dict}, tmp)
    write_csv(fit.history, paths["history"])
    training_curves(fit.history, paths["curve"],
                    panels={"cross-entropy": ["train_loss", "val_loss"],
                            "accuracy": ["train_accuracy", "val_accuracy"]},
                    marked_epoch=fit.best_epoch, marked_label=f"kept: epoch {fit.best_epoch} (lowest val loss)",
                    title=f"MLP on {len(classes)} classes")
    predicted = probabilities.argmax(axis=1)
    rows = np.arange(len(predicted))
    write_csv(pd.DataFrame({
        "index_in_split": test.index, "label": [classes.labels[t] for t in test.targets],
        "true": [classes.names[t] for t in test.targets], "pred_label": [classes.labels[p] for p in predicted],
        "pred": [classes.names[p] for p in predicted], "correct": predicted == test.targets,
        "p_true": probabilities[rows, test.targets], "p_pred": probabilities[rows, predicted]},
        columns=PREDICTION_COLUMNS), paths["predictions"])
    _save_npz(paths["probabilities"], index_in_split=test.index, targets=test.targets, probabilities=probabilities,
              **_class_arrays(classes))


def load_predictions(path: str | Path) -> tuple[ClassSet, TestPredictions]:
    """The classes and test predictions from ``probabilities.npz``."""
    with np.load(path, allow_pickle=False) as data:
        return _classes_from(data), TestPredictions(data["index_in_split"], data["targets"], data["probabilities"])


def write_crossval(path: str | Path, info_path: str | Path, classes: ClassSet, info: Mapping, *,
                   rows: LabelledRows | None = None, result: CrossValResult | None = None) -> None:
    """``crossval.npz`` (index_in_split, targets, probabilities, folds, class labels and names; empty
    arrays when there is no ``result``) and ``crossval.json`` (``info``: status, reason, folds, ...)."""
    if result is None:
        _save_npz(path, index_in_split=np.empty(0, np.int64), targets=np.empty(0, np.int64),
                  probabilities=np.empty((0, len(classes)), np.float32), folds=np.empty(0, np.int64),
                  **_class_arrays(classes))
    else:
        _save_npz(path, index_in_split=rows.index, targets=rows.targets, probabilities=result.probabilities,
                  folds=result.folds, **_class_arrays(classes))
    write_text_atomic(info_path, json.dumps(info, indent=2) + "\n")


def load_crossval(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Targets and out-of-sample probabilities from ``crossval.npz``."""
    with np.load(path, allow_pickle=False) as data:
        return data["targets"], data["probabilities"]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def stage_summary(*, dataset: str, backbone: str, training: Mapping, analysis: Mapping,
                  pair_figures: Sequence[Mapping], settings: Mapping) -> StageSummary:
    """The classifier stage's ``summary.json``: headline figures (accuracy, macro F1, pairs flagged by
    each measure, their rank agreement, training facts), the tables and figures with captions, and
    notes (why a part is missing, when it is: the report rule's notes)."""
    headline = dict(analysis["headline"])
    notes = [*training.get("notes", []), *analysis["notes"]]
    if training.get("status") == "trained":
        headline.update(best_epoch=training["best_epoch"], epochs_run=training["epochs_run"],
                        device=training["device"], train_seconds=training["seconds"])
    rules = analysis.get("rules", {})
    confusion_rule = rules.get("confusion")
    rule_text = "no confusions to threshold"
    if confusion_rule:
        outlier = confusion_rule["mean"] + confusion_rule["k"] * confusion_rule["std"]
        rule_text = (f"mu {confusion_rule['mean']:.4f} + {confusion_rule['k']:g} sigma {confusion_rule['std']:.4f} = "
                     f"{outlier:.4f}" + (f", capped at pairs_max_threshold {confusion_rule['threshold']:.4f}"
                                         if confusion_rule["threshold"] < outlier else ""))
    tables = [
        Artifact("report.csv", f"per-class precision, recall, F1 and support on the test images, then accuracy "
                               f"({_percent(headline.get('accuracy'))}), macro and weighted averages (scikit-learn)"),
        Artifact("pairs.csv", f"confusion pairs: directions true -> pred whose share of the true class's test "
                              f"images is at least {rule_text}; both directions kept (both_directions), with the "
                              f"pair's centroid similarity from the overlap stage"),
        Artifact("cleanlab_pairs.csv", "cleanlab's find_overlapping_classes on K-fold out-of-sample probabilities "
                                       "of the training images: estimated shared examples and joint probability "
                                       "per class pair, most overlapping first; flagged by the same mu + k sigma rule"),
        Artifact("measures.csv", "every pair flagged by at least one measure (centroid similarity, test "
                                 "confusion C[a,b]+C[b,a], cleanlab joint probability) with all three scores and "
                                 "ranks among all pairs of the classifier's classes"),
        Artifact("agreement.csv", "for every two measures: pairs each flags, shared, and Spearman's rho of the "
                                  "scores over the shared pairs and over the union"),
        Artifact("disagreements.csv", "the pairs some measure flags and another does not, largest rank "
                                      "difference first"),
        Artifact("confusion.csv", "test confusion matrix, counts (rows: true class, columns: predicted)"),
        Artifact("confusion_normalized.csv", "the same, each row divided by the class's test images"),
        Artifact("history.csv", "training history per epoch: losses, accuracies, learning rate"),
        Artifact("predictions.csv", "every test image's true and predicted class with their probabilities "
                                    "(all probabilities: probabilities.npz)"),
    ]
    figures = [
        Artifact("confusion.png", "row-normalised test confusion matrix, classes that are confused side by side "
                                  "(clustered); the diagonal is blank so that the colours show the mistakes"),
        Artifact("training_curve.png", "training and validation loss and accuracy per epoch; the dashed line is "
                                       "the epoch whose weights are kept and tested (lowest validation loss)"),
        *[Artifact(item["path"], item["caption"]) for item in pair_figures],
    ]
    return StageSummary(stage="classify", title="Overlap classifier: which look-alike classes a model confuses",
                        dataset=dataset, backbone=backbone, headline=headline, tables=tables, figures=figures,
                        notes=notes, settings=dict(settings))
