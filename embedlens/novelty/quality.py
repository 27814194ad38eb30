"""How well the novelty scores find novel images: whole classes held out as unseen, the model fitted on
the other classes alone (k chosen on them too), and each score's AUROC and false-positive rate at 95%
true-positive rate of telling the unseen classes' images from held-out images of the seen classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from embedlens.novelty.fit import choose_k, split_fit_holdout
from embedlens.novelty.model import SCORES, fit_model
from embedlens.novelty.settings import NoveltyInputError, NoveltySettings

DRAW_COLUMNS = ["draw", "score", "auroc", "fpr_at_95_tpr", "k", "seen_images", "unseen_images", "unseen_classes"]


def fpr_at_tpr(is_novel: np.ndarray, scores: np.ndarray, tpr: float = 0.95) -> float:
    """The false-positive rate at the lowest threshold that catches at least ``tpr`` of the novel
    images (``is_novel`` True, the positives), higher scores meaning more novel."""
    fpr, true_positive_rate, _ = roc_curve(is_novel, scores)
    return float(fpr[np.searchsorted(true_positive_rate, tpr, side="left")])


def detection_quality(is_novel: np.ndarray, scores: pd.DataFrame, names: Sequence[str] = SCORES) -> dict:
    """``{score: {"auroc": ..., "fpr_at_95_tpr": ...}}`` of each column ``names`` of ``scores``
    against ``is_novel``."""
    is_novel = np.asarray(is_novel, dtype=bool)
    if is_novel.all() or not is_novel.any():
        raise NoveltyInputError("detection quality needs both novel and ordinary images")
    return {name: {"auroc": float(roc_auc_score(is_novel, scores[name])),
                   "fpr_at_95_tpr": fpr_at_tpr(is_novel, scores[name].to_numpy())} for name in names}


def unseen_count(classes: int, fraction: float) -> int:
    """How many of ``classes`` to hold out as unseen: ``round(fraction * classes)``, at least 1 and
    at most ``classes - 2`` (k-means on the seen ones needs two classes at least)."""
    if classes < 3:
        raise NoveltyInputError(f"{classes} class(es) with images: holding out unseen classes needs at least 3 "
                                "(one unseen, two seen)")
    return int(min(max(round(fraction * classes), 1), classes - 2))


def unseen_class_quality(features: np.ndarray, labels: np.ndarray, settings: NoveltySettings,
                         class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Measured detection quality: ``settings.quality.draws`` times, draw the unseen classes (seeded),
    split the other classes' images into a fit and a held-out part, choose k on that fit part alone
    (the elbow, or ``settings.k``: the unseen classes must not shape the model that is to find them),
    fit, and score the held-out part (negatives) together with every image of the unseen classes
    (positives).

    ``features`` (N, D) raw embeddings, ``labels`` (N,) (rows labelled -1 are left out). One row per
    draw and score: :data:`DRAW_COLUMNS` (``k``: the draw's chosen k).
    """
    features, labels = np.asarray(features), np.asarray(labels)
    labelled = labels >= 0
    features, labels = features[labelled], labels[labelled]
    classes = np.unique(labels)
    count = unseen_count(len(classes), settings.quality.unseen_fraction)
    rng = np.random.default_rng(settings.seed)
    rows = []
    for draw in range(settings.quality.draws):
        unseen = np.sort(rng.choice(classes, count, replace=False))
        is_unseen = np.isin(labels, unseen)
        seen_positions = np.flatnonzero(~is_unseen)
        fit_part, held_out = split_fit_holdout(len(seen_positions), settings.fit_fraction, settings.seed + draw)
        fit_features = features[seen_positions[fit_part]]
        k, _, _ = choose_k(fit_features, settings)
        model = fit_model(fit_features, k, settings, calibrate=False)
        scored = np.concatenate([seen_positions[held_out], np.flatnonzero(is_unseen)])
        quality = detection_quality(is_unseen[scored], model.score(features[scored]))
        names = ", ".join(str(class_names[c]) if class_names else str(c) for c in unseen.tolist())
        for score, values in quality.items():
            rows.append({"draw": draw, "score": score, **values, "k": k, "seen_images": len(held_out),
                         "unseen_images": int(is_unseen.sum()), "unseen_classes": names})
    return pd.DataFrame(rows, columns=DRAW_COLUMNS)


def summarize_quality(per_draw: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (ddof 1, 0 for a single draw) over draws of each score's AUROC and
    FPR at 95% TPR, best AUROC first. Columns ``score, auroc_mean, auroc_std, fpr_at_95_tpr_mean,
    fpr_at_95_tpr_std, draws``."""
    grouped = per_draw.groupby("score", sort=False)
    table = pd.DataFrame({
        "auroc_mean": grouped["auroc"].mean(), "auroc_std": grouped["auroc"].std().fillna(0.0),
        "fpr_at_95_tpr_mean": grouped["fpr_at_95_tpr"].mean(),
        "fpr_at_95_tpr_std": grouped["fpr_at_95_tpr"].std().fillna(0.0),
        "draws": grouped["draw"].nunique()}).reset_index()
    return table.sort_values("auroc_mean", ascending=False, kind="stable").reset_index(drop=True)


def quality_document(per_draw: pd.DataFrame, table: pd.DataFrame, labels: np.ndarray,
                     settings: NoveltySettings) -> dict:
    """What ``quality.json`` records for the summary when the quality was measured: classes, unseen
    classes per draw, draws, the k of each draw (and how it was chosen) and the scores' table."""
    classes = len(set(np.asarray(labels)[np.asarray(labels) >= 0].tolist()))
    return {"measured": True, "classes": classes,
            "unseen_classes": unseen_count(classes, settings.quality.unseen_fraction),
            "draws": settings.quality.draws, "k_searched": settings.k is None,
            "k_per_draw": [int(k) for k in per_draw.groupby("draw", sort=True)["k"].first().tolist()],
            "scores": table.to_dict(orient="records")}


def measure_quality(labels: np.ndarray, settings: NoveltySettings) -> str | None:
    """Why the held-out-class measurement cannot run on images with these ``labels`` (None when it can)."""
    if settings.quality.draws == 0:
        return "novelty.quality.draws is 0"
    classes = np.unique(np.asarray(labels)[np.asarray(labels) >= 0])
    if len(classes) < 3:
        return (f"the images have {len(classes)} class(es); holding out unseen classes needs at least 3 "
                "(one unseen, two seen)")
    return None
