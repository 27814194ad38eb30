"""How well the novelty scores find novel images: whole classes held out as unseen, the model fitted on
the other classes alone (k chosen on them too), and each score's AUROC and false-positive rate at 95%
true-positive rate of telling the unseen classes' images from held-out images of the seen classes."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from embedlens.atomic import write_text_atomic
from embedlens.checkpoint import fingerprint
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
                         class_names: Sequence[str] | None = None, *, folder: str | Path | None = None,
                         report: Callable[[str], None] = lambda message: None) -> pd.DataFrame:
    """Measured detection quality: ``settings.quality.draws`` times, draw the unseen classes (seeded),
    split the other classes' images into a fit and a held-out part, choose k on that fit part alone
    (the elbow, or ``settings.k``: the unseen classes must not shape the model that is to find them),
    fit, and score the held-out part (negatives) together with every image of the unseen classes
    (positives).

    ``features`` (N, D) raw embeddings, ``labels`` (N,) (rows labelled -1 are left out). One row per
    draw and score: :data:`DRAW_COLUMNS` (``k``: the draw's chosen k). ``folder``: where each finished
    draw leaves its rows (``draw-N.json``, with the fingerprint of the data and settings), so that a
    killed run started again skips the draws already done and gives the same table; ``report`` gets
    one line saying how many were. Markers of other data or settings are ignored.
    """
    features, labels = np.asarray(features), np.asarray(labels)
    labelled = np.flatnonzero(labels >= 0)
    classes = np.unique(labels[labelled])
    count = unseen_count(len(classes), settings.quality.unseen_fraction)
    draws = settings.quality.draws
    key = fingerprint([settings.as_dict(), list(class_names or [])], features, labels) if folder else ""
    done = finished_draws(Path(folder), key, draws) if folder else {}
    if done:
        report(f"resumed: {len(done)} of {draws} draws done")
    rng = np.random.default_rng(settings.seed)
    rows = []
    for draw in range(draws):
        unseen = np.sort(rng.choice(classes, count, replace=False))  # drawn for a finished draw too: same sequence
        if draw not in done:
            done[draw] = quality_draw(features, labels, labelled, unseen, draw, settings, class_names)
            if folder:
                write_text_atomic(_marker(Path(folder), draw), json.dumps({"key": key, "rows": done[draw]}) + "\n")
        rows.extend(done[draw])
    return pd.DataFrame(rows, columns=DRAW_COLUMNS)


def quality_draw(features: np.ndarray, labels: np.ndarray, labelled: np.ndarray, unseen: np.ndarray, draw: int,
                 settings: NoveltySettings, class_names: Sequence[str] | None) -> list[dict]:
    """One draw of :func:`unseen_class_quality` with the classes ``unseen`` held out, on the rows
    ``labelled``: its rows of :data:`DRAW_COLUMNS`. Only the fit part is copied (the kNN reference);
    the scored rows are taken from ``features`` block by block."""
    is_unseen = np.isin(labels, unseen)
    seen_positions, unseen_positions = labelled[~is_unseen[labelled]], labelled[is_unseen[labelled]]
    fit_part, held_out = split_fit_holdout(len(seen_positions), settings.fit_fraction, settings.seed + draw)
    fit_features = features[seen_positions[fit_part]]
    k, _, _ = choose_k(fit_features, settings)
    model = fit_model(fit_features, k, settings, calibrate=False)
    scored = np.concatenate([seen_positions[held_out], unseen_positions])
    quality = detection_quality(is_unseen[scored], model.score(features, scored, settings.device))
    names = ", ".join(str(class_names[c]) if class_names else str(c) for c in unseen.tolist())
    return [{"draw": draw, "score": score, **values, "k": int(k), "seen_images": int(len(held_out)),
             "unseen_images": int(len(unseen_positions)), "unseen_classes": names} for score, values in quality.items()]


def _marker(folder: Path, draw: int) -> Path:
    return folder / f"draw-{draw}.json"


def finished_draws(folder: Path, key: str, draws: int) -> dict[int, list[dict]]:
    """The rows of the draws a run with fingerprint ``key`` finished in ``folder`` (made if absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = {}
    for draw in range(draws):
        if _marker(folder, draw).is_file():
            saved = json.loads(_marker(folder, draw).read_text())
            if saved.get("key") == key:
                done[draw] = saved["rows"]
    return done


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
