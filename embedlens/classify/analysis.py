"""What the classifier's predictions say about overlap: the per-class report, the confusion matrix, the
confusion pairs (the classifier notebook's rule), cleanlab's model-based class overlap, and how these
agree with the centroid pairs of the overlap stage.

Three measures score every unordered pair of classes {a, b}:

- ``centroid``: the cosine similarity of the two class centroids (overlap stage); flagged: the overlap
  stage's pairs;
- ``confusion``: ``C[a, b] + C[b, a]`` of the row-normalised test confusion matrix; flagged: either
  direction passes the notebook's rule ``C[true, pred] >= mu + k * sigma`` (mu, sigma over the non-zero
  off-diagonal rates), the threshold capped at ``pairs_max_threshold``;
- ``cleanlab``: the joint probability that :func:`cleanlab.dataset.find_overlapping_classes`
  estimates from K-fold out-of-sample probabilities; flagged: the same ``mu + k * sigma`` rule over
  its non-zero joint probabilities.

Their agreement is Spearman's rank correlation of the scores over the pairs two measures both flag
(``spearman_shared``) and over the pairs either flags (``spearman_union``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.dataset import find_overlapping_classes
from scipy.stats import spearmanr
from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support

from embedlens.atomic import atomic_path, write_text_atomic
from embedlens.classify.data import ClassSet

MEASURES = ("centroid", "confusion", "cleanlab")
SCORE_COLUMNS = {"centroid": "centroid_similarity", "confusion": "confusion_rate", "cleanlab": "cleanlab_joint"}
REPORT_COLUMNS = ["class", "precision", "recall", "f1", "support"]
CONFUSION_PAIR_COLUMNS = ["true", "pred", "true_label", "pred_label", "images", "mis_rate", "precision_pred",
                          "recall_true", "f1_true", "f1_pred", "centroid_similarity", "reverse_mis_rate",
                          "both_directions"]
CLEANLAB_COLUMNS = ["class_a", "class_b", "label_a", "label_b", "overlapping_examples", "joint_probability",
                    "flagged"]
MEASURE_COLUMNS = (["class_a", "class_b", "label_a", "label_b"] + list(SCORE_COLUMNS.values())
                   + [f"flagged_{m}" for m in MEASURES] + [f"rank_{m}" for m in MEASURES])
AGREEMENT_COLUMNS = ["measure_a", "measure_b", "flagged_a", "flagged_b", "shared", "union", "spearman_shared",
                     "spearman_union"]
DISAGREEMENT_COLUMNS = (["class_a", "class_b", "flagged_by", "not_flagged_by"] + list(SCORE_COLUMNS.values())
                        + [f"rank_{m}" for m in MEASURES] + ["rank_spread"])


# --------------------------------------------------------------------------------------------------
# report and confusion matrix


def classification_table(true: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """scikit-learn's classification report as a table: one row per class (precision, recall, F1,
    support), then ``accuracy`` (in the f1 column, support = all images), ``macro avg`` and
    ``weighted avg``. A class without test images has support 0 and zeros, never a warning."""
    report = classification_report(true, pred, labels=list(range(len(names))), target_names=list(names),
                                   output_dict=True, zero_division=0)
    rows = []
    for key, values in report.items():
        if key == "accuracy":
            rows.append({"class": "accuracy", "precision": np.nan, "recall": np.nan, "f1": values,
                         "support": len(true)})
        else:
            rows.append({"class": key, "precision": values["precision"], "recall": values["recall"],
                         "f1": values["f1-score"], "support": int(values["support"])})
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def confusion_counts(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C x C counts, rows = true class, columns = predicted class (scikit-learn)."""
    return confusion_matrix(true, pred, labels=list(range(num_classes)))


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum: the share of a true class's images given each prediction (a row
    without images stays zero)."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


@dataclass(frozen=True)
class OutlierRule:
    """``value >= min(mean + k * std, cap)`` over the non-zero values it was fitted on (population std;
    no cap when ``cap`` is None)."""

    k: float
    mean: float
    std: float
    threshold: float
    nonzero: int
    cap: float | None = None

    def as_dict(self) -> dict:
        return {"k": self.k, "mean": self.mean, "std": self.std, "cap": self.cap, "threshold": self.threshold,
                "nonzero": self.nonzero}


def outlier_rule(values: np.ndarray, k: float, cap: float | None = None) -> OutlierRule | None:
    """The rule over the non-zero entries of ``values``; None when all are zero (nothing to flag)."""
    nonzero = np.asarray(values, dtype=np.float64)
    nonzero = nonzero[nonzero > 0]
    if not len(nonzero):
        return None
    mean, std = float(nonzero.mean()), float(nonzero.std())
    threshold = mean + k * std if cap is None else min(mean + k * std, cap)
    return OutlierRule(float(k), mean, std, threshold, len(nonzero), cap)


def confusion_pairs(true: np.ndarray, pred: np.ndarray, classes: ClassSet, k: float, max_threshold: float,
                    similarity: pd.DataFrame | None = None) -> tuple[pd.DataFrame, OutlierRule | None]:
    """The notebook's confusion pairs: row-normalise the confusion matrix, zero the diagonal, flag
    ``C[true, pred] >= min(mu + k * sigma, max_threshold)`` over the non-zero off-diagonal entries. The
    cap matters with few classes: there the non-zero rates are mostly the look-alike pairs themselves,
    so mu + k * sigma lies above them (0.61 on the demo's 6 classes confused 40-50% in 3 pairs); with
    100 classes the rule's threshold is far below it. Each flagged direction
    is a row (columns :data:`CONFUSION_PAIR_COLUMNS`), highest ``mis_rate`` first: the precision of the
    predicted class, recall and F1 of the true class, F1 of the predicted class, the centroid
    similarity of the two classes (``similarity``: the overlap stage's matrix, NaN where it lacks a
    class), the reverse direction's rate, and ``both_directions`` when the reverse is flagged too."""
    size = len(classes)
    rates = row_normalise(confusion_counts(true, pred, size))
    off_diagonal = rates.copy()
    np.fill_diagonal(off_diagonal, 0.0)
    rule = outlier_rule(off_diagonal, k, cap=max_threshold)
    if rule is None:
        return pd.DataFrame(columns=CONFUSION_PAIR_COLUMNS), None
    flagged = (off_diagonal >= rule.threshold) & (off_diagonal > 0)
    counts = confusion_counts(true, pred, size)
    precision, recall, f1, _ = precision_recall_fscore_support(true, pred, labels=list(range(size)),
                                                                zero_division=0)
    rows = []
    for i, j in zip(*np.nonzero(flagged)):
        rows.append({"true": classes.names[i], "pred": classes.names[j], "true_label": classes.labels[i],
                     "pred_label": classes.labels[j], "images": int(counts[i, j]), "mis_rate": off_diagonal[i, j],
                     "precision_pred": precision[j], "recall_true": recall[i], "f1_true": f1[i], "f1_pred": f1[j],
                     "centroid_similarity": centroid_similarity(similarity, classes.names[i], classes.names[j]),
                     "reverse_mis_rate": off_diagonal[j, i], "both_directions": bool(flagged[j, i])})
    frame = pd.DataFrame(rows, columns=CONFUSION_PAIR_COLUMNS)
    frame = frame.sort_values(["mis_rate", "true_label", "pred_label"], ascending=[False, True, True])
    return frame.reset_index(drop=True), rule


def centroid_similarity(similarity: pd.DataFrame | None, a: str, b: str) -> float:
    """The overlap stage's cosine between the centroids of classes ``a`` and ``b`` (NaN if absent)."""
    if similarity is None or a not in similarity.index or b not in similarity.columns:
        return float("nan")
    return float(similarity.loc[a, b])


# --------------------------------------------------------------------------------------------------
# cleanlab


def cleanlab_overlap(targets: np.ndarray, probabilities: np.ndarray, classes: ClassSet,
                     k: float) -> tuple[pd.DataFrame, OutlierRule | None]:
    """Every unordered class pair with cleanlab's estimate of how many training images the two
    classes share (``overlapping_examples``) and its joint probability, from out-of-sample
    ``probabilities`` of the training rows with ``targets``; most overlapping first. ``flagged``:
    joint probability ``>= mu + k * sigma`` over the non-zero ones."""
    found = find_overlapping_classes(labels=np.asarray(targets), pred_probs=np.asarray(probabilities))
    a = found["Class Index A"].to_numpy()
    b = found["Class Index B"].to_numpy()
    low, high = np.minimum(a, b), np.maximum(a, b)
    joint = found["Joint Probability"].to_numpy(dtype=np.float64)
    rule = outlier_rule(joint, k)
    frame = pd.DataFrame({
        "class_a": [classes.names[i] for i in low], "class_b": [classes.names[j] for j in high],
        "label_a": [classes.labels[i] for i in low], "label_b": [classes.labels[j] for j in high],
        "overlapping_examples": found["Num Overlapping Examples"].to_numpy(dtype=np.int64),
        "joint_probability": joint,
        "flagged": (joint >= rule.threshold) & (joint > 0) if rule else np.zeros(len(joint), dtype=bool),
    }, columns=CLEANLAB_COLUMNS)
    frame = frame.sort_values(["joint_probability", "label_a", "label_b"], ascending=[False, True, True])
    return frame.reset_index(drop=True), rule


# --------------------------------------------------------------------------------------------------
# the three measures side by side


def pair_measures(classes: ClassSet, rates: np.ndarray, similarity: pd.DataFrame | None,
                  centroid_pairs: pd.DataFrame, confusion: pd.DataFrame,
                  cleanlab: pd.DataFrame | None) -> pd.DataFrame:
    """Every unordered pair of ``classes`` with its three scores, whether each measure flags it, and
    its rank under each measure (1 = most overlapping; ties share the lower rank; NaN where a
    measure is unavailable). ``rates``: the row-normalised test confusion matrix; ``centroid_pairs``:
    the overlap stage's pairs.csv; ``confusion``: :func:`confusion_pairs`; ``cleanlab``:
    :func:`cleanlab_overlap`, or None when it could not be computed."""
    pairs = list(combinations(range(len(classes)), 2))
    centroid_flags = {frozenset(p) for p in zip(centroid_pairs["label_a"].astype(int),
                                                centroid_pairs["label_b"].astype(int))}
    confusion_flags = {frozenset(p) for p in zip(confusion["true_label"].astype(int),
                                                 confusion["pred_label"].astype(int))}
    joint = {} if cleanlab is None else {
        frozenset((int(a), int(b))): (float(p), bool(f))
        for a, b, p, f in cleanlab[["label_a", "label_b", "joint_probability", "flagged"]].itertuples(index=False)}
    rows = []
    for i, j in pairs:
        la, lb = classes.labels[i], classes.labels[j]
        key = frozenset((la, lb))
        rows.append({
            "class_a": classes.names[i], "class_b": classes.names[j], "label_a": la, "label_b": lb,
            "centroid_similarity": centroid_similarity(similarity, classes.names[i], classes.names[j]),
            "confusion_rate": rates[i, j] + rates[j, i],
            "cleanlab_joint": joint.get(key, (np.nan, False))[0] if cleanlab is not None else np.nan,
            "flagged_centroid": key in centroid_flags, "flagged_confusion": key in confusion_flags,
            "flagged_cleanlab": joint.get(key, (np.nan, False))[1],
        })
    frame = pd.DataFrame(rows, columns=MEASURE_COLUMNS[:-len(MEASURES)])
    for measure, column in SCORE_COLUMNS.items():
        frame[f"rank_{measure}"] = frame[column].rank(ascending=False, method="min")
    return frame[MEASURE_COLUMNS]


def available_measures(measures: pd.DataFrame) -> list[str]:
    """The measures that scored at least one pair."""
    return [m for m, column in SCORE_COLUMNS.items() if measures[column].notna().any()]


def _spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rho of two score columns; NaN with fewer than 3 pairs or a constant column."""
    keep = a.notna() & b.notna()
    if keep.sum() < 3 or a[keep].nunique() < 2 or b[keep].nunique() < 2:
        return float("nan")
    return float(spearmanr(a[keep], b[keep]).statistic)


def measure_agreement(measures: pd.DataFrame) -> pd.DataFrame:
    """For every two measures: how many pairs each flags, how many both flag (``shared``) or either
    (``union``), and Spearman's rho of their scores over the shared and over the union pairs (NaN
    where a measure is unavailable or fewer than 3 pairs remain)."""
    available = available_measures(measures)
    rows = []
    for a, b in combinations(MEASURES, 2):
        flag_a, flag_b = measures[f"flagged_{a}"], measures[f"flagged_{b}"]
        shared, union = measures[flag_a & flag_b], measures[flag_a | flag_b]
        usable = a in available and b in available
        rows.append({"measure_a": a, "measure_b": b, "flagged_a": int(flag_a.sum()), "flagged_b": int(flag_b.sum()),
                     "shared": len(shared), "union": len(union),
                     "spearman_shared": _spearman(shared[SCORE_COLUMNS[a]], shared[SCORE_COLUMNS[b]])
                     if usable else np.nan,
                     "spearman_union": _spearman(union[SCORE_COLUMNS[a]], union[SCORE_COLUMNS[b]])
                     if usable else np.nan})
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def disagreements(measures: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The pairs some available measure flags and another does not, those whose ranks differ most
    first (``rank_spread``: highest minus lowest rank among the available measures), at most ``rows``."""
    available = available_measures(measures)
    flags = measures[[f"flagged_{m}" for m in available]]
    split = flags.any(axis=1) & ~flags.all(axis=1)
    chosen = measures[split].copy()
    ranks = chosen[[f"rank_{m}" for m in available]]
    chosen["rank_spread"] = ranks.max(axis=1) - ranks.min(axis=1)
    chosen["flagged_by"] = [" ".join(m for m in available if row[f"flagged_{m}"]) for _, row in chosen.iterrows()]
    chosen["not_flagged_by"] = [" ".join(m for m in available if not row[f"flagged_{m}"])
                                for _, row in chosen.iterrows()]
    chosen = chosen.sort_values(["rank_spread", "label_a", "label_b"], ascending=[False, True, True])
    return chosen[DISAGREEMENT_COLUMNS].head(rows).reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# the whole analysis, its files


@dataclass
class Analysis:
    """Every table the report rule writes, the two flagging rules, headline figures and notes."""

    report: pd.DataFrame
    counts: pd.DataFrame
    rates: pd.DataFrame
    confusion: pd.DataFrame
    cleanlab: pd.DataFrame
    measures: pd.DataFrame
    agreement: pd.DataFrame
    disagreements: pd.DataFrame
    headline: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def analyse(classes: ClassSet, test_targets: np.ndarray, test_probabilities: np.ndarray, *, k: float,
            max_threshold: float, similarity: pd.DataFrame | None, centroid_pairs: pd.DataFrame,
            crossval_targets: np.ndarray | None, crossval_probabilities: np.ndarray | None,
            disagreement_rows: int, notes: Sequence[str] = ()) -> Analysis:
    """The report, confusion matrix, confusion pairs, cleanlab overlap (when out-of-sample
    probabilities are given; otherwise ``notes`` should say why not) and the three measures'
    agreement, for predictions ``argmax(test_probabilities)`` of the test rows."""
    notes = list(notes)
    predicted = np.asarray(test_probabilities).argmax(axis=1)
    names = list(classes.names)
    counts = confusion_counts(test_targets, predicted, len(classes))
    rates = row_normalise(counts)
    confusion, confusion_rule = confusion_pairs(test_targets, predicted, classes, k, max_threshold, similarity)
    if confusion_rule is None:
        notes.append("the classifier confused no two classes on the test images: no confusion pairs")
    cleanlab, cleanlab_rule = (None, None)
    if crossval_probabilities is not None:
        cleanlab, cleanlab_rule = cleanlab_overlap(crossval_targets, crossval_probabilities, classes, k)
    inside = centroid_pairs[centroid_pairs["label_a"].isin(classes.labels)
                            & centroid_pairs["label_b"].isin(classes.labels)]
    measures = pair_measures(classes, rates, similarity, inside, confusion, cleanlab)
    agreement = measure_agreement(measures)
    report = classification_table(test_targets, predicted, names)
    macro = report[report["class"] == "macro avg"].iloc[0]
    headline = {
        "classes": len(classes), "test_images": int(len(test_targets)),
        "accuracy": float(report.loc[report["class"] == "accuracy", "f1"].iloc[0]),
        "macro_f1": float(macro["f1"]),
        "confusion_pairs": int(len(confusion)),
        "pairs_flagged": {m: int(measures[f"flagged_{m}"].sum()) for m in MEASURES},
        "spearman_shared": {f"{a}~{b}": _none_if_nan(rho) for a, b, rho in
                            agreement[["measure_a", "measure_b", "spearman_shared"]].itertuples(index=False)},
        "spearman_union": {f"{a}~{b}": _none_if_nan(rho) for a, b, rho in
                           agreement[["measure_a", "measure_b", "spearman_union"]].itertuples(index=False)},
    }
    if cleanlab is None:
        headline["pairs_flagged"]["cleanlab"] = None
    return Analysis(
        report=report,
        counts=pd.DataFrame(counts, index=names, columns=names),
        rates=pd.DataFrame(rates, index=names, columns=names),
        confusion=confusion,
        cleanlab=cleanlab if cleanlab is not None else pd.DataFrame(columns=CLEANLAB_COLUMNS),
        measures=measures[measures[[f"flagged_{m}" for m in MEASURES]].any(axis=1)].reset_index(drop=True),
        agreement=agreement,
        disagreements=disagreements(measures, disagreement_rows),
        headline=headline,
        rules={"confusion": confusion_rule.as_dict() if confusion_rule else None,
               "cleanlab": cleanlab_rule.as_dict() if cleanlab_rule else None},
        notes=notes)


def clean_split_figures(analysis: Analysis, index: np.ndarray, targets: np.ndarray, probabilities: np.ndarray,
                        classes: ClassSet, kept: np.ndarray) -> None:
    """Add the test figures on the clean test split to ``analysis`` (headline ``clean_test_images``,
    ``clean_accuracy``, ``clean_macro_f1``, and a note beside the full split's): the test rows (their
    ``index_in_split`` in ``index``) that the dataset audit kept, ``kept`` being
    :func:`embedlens.audit.clean_index` of its clean_test_index.csv."""
    clean = np.isin(np.asarray(index), np.asarray(kept))
    report = classification_table(np.asarray(targets)[clean], np.asarray(probabilities)[clean].argmax(axis=1),
                                  list(classes.names))
    accuracy = float(report.loc[report["class"] == "accuracy", "f1"].iloc[0]) if clean.any() else None
    macro_f1 = float(report.loc[report["class"] == "macro avg", "f1"].iloc[0]) if clean.any() else None
    analysis.headline.update(clean_test_images=int(clean.sum()), clean_accuracy=accuracy, clean_macro_f1=macro_f1)
    full = analysis.headline["accuracy"]
    analysis.notes.append(
        f"On the clean test split (the dataset audit removed {int((~clean).sum())} of these {len(clean)} test images: "
        f"copies of training images, repeated test images, and label errors when audit.label_issue_fraction "
        f"asks): accuracy "
        + ("n/a" if accuracy is None else f"{100 * accuracy:.2f}%") + f" against {100 * full:.2f}% on the full split, "
        "macro F1 " + ("n/a" if macro_f1 is None else f"{macro_f1:.3f}") + f" against {analysis.headline['macro_f1']:.3f}.")


def empty_analysis(classes: ClassSet, reason: str) -> Analysis:
    """Well-formed, empty tables for a classifier that could not be trained, and ``reason`` as the note."""
    names = list(classes.names)
    return Analysis(
        report=pd.DataFrame(columns=REPORT_COLUMNS),
        counts=pd.DataFrame(index=pd.Index(names), columns=names, dtype=np.int64),
        rates=pd.DataFrame(index=pd.Index(names), columns=names, dtype=np.float64),
        confusion=pd.DataFrame(columns=CONFUSION_PAIR_COLUMNS), cleanlab=pd.DataFrame(columns=CLEANLAB_COLUMNS),
        measures=pd.DataFrame(columns=MEASURE_COLUMNS), agreement=pd.DataFrame(columns=AGREEMENT_COLUMNS),
        disagreements=pd.DataFrame(columns=DISAGREEMENT_COLUMNS),
        headline={"classes": len(classes), "test_images": 0, "accuracy": None, "macro_f1": None,
                  "confusion_pairs": 0, "pairs_flagged": {m: None for m in MEASURES},
                  "spearman_shared": {}, "spearman_union": {}},
        rules={"confusion": None, "cleanlab": None}, notes=[f"no classifier: {reason}"])


def _none_if_nan(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def write_csv(frame: pd.DataFrame, path: str | Path, *, index_label: str | None = None) -> None:
    """``frame`` as CSV, written atomically; floats with 6 decimals; the index only when labelled."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index_label is not None, index_label=index_label, float_format="%.6f")


def write_analysis(analysis: Analysis, paths: Mapping[str, str | Path]) -> None:
    """Write every table of ``analysis`` to ``paths`` (keys: report, confusion, confusion_normalized,
    pairs, cleanlab_pairs, measures, agreement, disagreements, analysis)."""
    write_csv(analysis.report, paths["report"])
    write_csv(analysis.counts, paths["confusion"], index_label="true_class")
    write_csv(analysis.rates, paths["confusion_normalized"], index_label="true_class")
    write_csv(analysis.confusion, paths["pairs"])
    write_csv(analysis.cleanlab, paths["cleanlab_pairs"])
    write_csv(analysis.measures, paths["measures"])
    write_csv(analysis.agreement, paths["agreement"])
    write_csv(analysis.disagreements, paths["disagreements"])
    write_text_atomic(paths["analysis"], json.dumps({"headline": analysis.headline, "rules": analysis.rules,
                                                     "notes": analysis.notes}, indent=2) + "\n")


def read_confusion_pairs(path: str | Path) -> pd.DataFrame:
    """Read the confusion pairs CSV (class names stay text)."""
    return pd.read_csv(path, dtype={"true": str, "pred": str}, keep_default_na=False, na_values=[""])
