"""Overlapping classes: class centroids, the class x class cosine matrix, the overlap set, refinement.

The reference behaviour (the overlap notebook this replaces): one centroid per class, the mean of its
features over train and test together; the cosine similarity between every two centroids; a pair of
classes overlaps when its similarity is strictly greater than 0.9; the overlap set is the union of
the classes of the overlapping pairs. Everything here matches that by default and adds:

- ``normalized=True`` centroids: the mean of L2-normalised features (every image weighs the same in
  the direction of its class, whatever its feature norm);
- ``inclusive=True``: a pair at exactly the threshold counts too (``>=`` instead of ``>``);
- ``selection="top_n"``: the N most similar pairs, whatever their similarity, for a fixed-size subset;
- per-sample refinement: of the images of an overlapping class keep only those that lie close to a
  *partner* class (the other class of a pair it belongs to), scored by the cosine between the image's
  feature and the partner's centroid. A class in several pairs scores each image by the **maximum**
  over its partners: an image is ambiguous when it looks like any one of the classes it is confused
  with.

Labels are the dataset's integer labels (``class_names[label]`` is the name), never re-numbered.
Pairs are ordered so that ``label_a < label_b`` and sorted by similarity, high to low (ties: by
``label_a``, then ``label_b``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedlens.atomic import atomic_path, write_text_atomic
from embedlens.config import settings_values
from embedlens.geometry import Centroids, l2_normalize, similarity_matrix, streamed_class_centroids
from embedlens.store import FeatureStore
from embedlens.summary import Artifact, StageSummary

CENTROIDS = ("mean", "normalized_mean")
SELECTIONS = ("threshold", "top_n")
REFINE_MODES = ("none", "threshold", "top_fraction")
PAIR_COLUMNS = ["class_a", "class_b", "similarity", "label_a", "label_b"]
SIMILARITY_COLUMN = "partner_similarity"


# --------------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class RefineSettings:
    """The ``overlap.refine`` section: per-sample refinement of the exported subset (its defaults live in
    the schema only).

    ``mode``: ``none`` keeps every image of the overlapping classes; ``threshold`` keeps the images
    whose partner similarity is at least ``threshold`` (``>=``); ``top_fraction`` keeps, per class and
    split, the ``ceil(fraction * n)`` images with the highest partner similarity (at least one image
    of every non-empty class and split).
    """

    mode: str
    threshold: float
    fraction: float

    def __post_init__(self):
        if self.mode not in REFINE_MODES:
            raise ValueError(f"overlap.refine.mode {self.mode!r}; allowed values: {', '.join(REFINE_MODES)}")
        check_threshold(self.threshold, "overlap.refine.threshold")
        if not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1):
            raise ValueError(f"overlap.refine.fraction is {self.fraction!r}; it must lie in (0, 1]")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class OverlapSettings:
    """Every key of the schema's ``overlap`` section (its defaults live in the schema only; see
    ``embedlens/config.schema.yaml`` for each one).

    ``splits``: the splits whose images feed the centroids; None takes every split of the feature
    store (the workflow sets the dataset's fit split). ``classes``: restrict the analysis to these
    class names (None: every class with images).
    """

    splits: tuple[str, ...] | None
    centroid: str
    selection: str
    threshold: float
    inclusive: bool
    top_n: int
    classes: tuple[str, ...] | None
    refine: RefineSettings
    export: bool

    def __post_init__(self):
        if self.centroid not in CENTROIDS:
            raise ValueError(f"overlap.centroid {self.centroid!r}; allowed values: {', '.join(CENTROIDS)}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"overlap.selection {self.selection!r}; allowed values: {', '.join(SELECTIONS)}")
        check_threshold(self.threshold, "overlap.threshold")
        if not (isinstance(self.top_n, int) and self.top_n >= 1):
            raise ValueError(f"overlap.top_n is {self.top_n!r}; it must be an integer >= 1")

    @classmethod
    def from_config(cls, section: Mapping) -> OverlapSettings:
        """Build from a validated config's ``overlap`` section (every key present: validation fills in
        the schema's defaults); :func:`embedlens.config.settings_values` names unknown and missing keys."""
        values = settings_values("overlap", section, cls)
        values["refine"] = RefineSettings(**settings_values("overlap.refine", values["refine"], RefineSettings))
        for key in ("splits", "classes"):
            if values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def as_dict(self) -> dict:
        """JSON-friendly form, for provenance in ``classes.json``."""
        return {
            "splits": list(self.splits) if self.splits is not None else None,
            "centroid": self.centroid,
            "selection": self.selection,
            "threshold": self.threshold,
            "inclusive": self.inclusive,
            "top_n": self.top_n,
            "classes": list(self.classes) if self.classes is not None else None,
            "refine": {"mode": self.refine.mode, "threshold": self.refine.threshold,
                       "fraction": self.refine.fraction},
            "export": self.export,
        }


# --------------------------------------------------------------------------------------------------
# input checks


def check_threshold(threshold: float, key: str = "overlap.threshold") -> float:
    """Return ``threshold`` as a float; raise ValueError naming ``key`` unless it lies in [-1, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"{key} is {threshold!r}; it must be a number in [-1, 1] (a cosine similarity)")
    if not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
        raise ValueError(f"{key} is {threshold!r}; a cosine similarity lies in [-1, 1]")
    return float(threshold)


def resolve_classes(wanted: Sequence[str] | None, class_names: Sequence[str],
                    present: Sequence[int] | None = None) -> list[int] | None:
    """Turn configured class names into dataset labels (ascending); None when ``wanted`` is None.

    Raises ValueError naming every configured class the dataset lacks, and (when ``present``, the
    labels that have images, is given) every class that has no images in the feature store.
    """
    if wanted is None:
        return None
    lookup: dict[str, list[int]] = {}
    for label, name in enumerate(class_names):
        lookup.setdefault(name, []).append(label)
    missing = [name for name in wanted if name not in lookup]
    if missing:
        raise ValueError(
            f"overlap.classes: {missing} are not classes of this dataset; it has {len(class_names)} "
            f"classes, e.g. {list(class_names[:10])}")
    labels = sorted({label for name in wanted for label in lookup[name]})
    if present is not None:
        present_set = {int(x) for x in present}
        empty = [class_names[label] for label in labels if label not in present_set]
        if empty:
            raise ValueError(
                f"overlap.classes: {empty} have no images in the feature store (filtered out by the "
                f"dataset's classes or max_per_class, or absent from the centroid splits)")
    if len(labels) < 2:
        raise ValueError(f"overlap.classes: {list(wanted)} names fewer than two classes; a pair needs two")
    return labels


def _empty_pairs() -> pd.DataFrame:
    return pd.DataFrame({"class_a": pd.Series(dtype="object"), "class_b": pd.Series(dtype="object"),
                         "similarity": pd.Series(dtype="float64"), "label_a": pd.Series(dtype="int64"),
                         "label_b": pd.Series(dtype="int64")})


def select_pairs(similarity: np.ndarray, names: Sequence[str], labels: Sequence[int] | None = None, *,
                 selection: str, threshold: float | None = None, inclusive: bool = False,
                 top_n: int | None = None) -> pd.DataFrame:
    """The overlapping class pairs of a K x K similarity matrix.

    ``selection="threshold"``: every pair (i < j) with similarity ``> threshold`` (``>=`` when
    ``inclusive``). ``selection="top_n"``: the ``top_n`` most similar pairs (all pairs if fewer),
    whatever their similarity. ``names``/``labels`` describe the rows (labels default to 0..K-1).

    Returns a DataFrame with columns class_a, class_b, similarity, label_a, label_b (label_a <
    label_b), sorted by similarity high to low, ties by label_a then label_b; no rows when nothing
    overlaps.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    k = len(names)
    if similarity.shape != (k, k):
        raise ValueError(f"similarity matrix {similarity.shape} does not match {k} class names")
    labels = np.arange(k) if labels is None else np.asarray(labels, dtype=np.int64)
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r}; allowed values: {', '.join(SELECTIONS)}")
    rows, cols = np.triu_indices(k, 1)
    values = similarity[rows, cols]
    if selection == "threshold":
        threshold = check_threshold(threshold)
        keep = values >= threshold if inclusive else values > threshold
        rows, cols, values = rows[keep], cols[keep], values[keep]
    elif top_n is None or int(top_n) < 1:
        raise ValueError(f"top_n is {top_n!r}; selection top_n needs an integer >= 1")
    # Orient every pair so that label_a < label_b (rows may not be in label order).
    la, lb = labels[rows], labels[cols]
    swap = la > lb
    rows, cols = np.where(swap, cols, rows), np.where(swap, rows, cols)
    la, lb = labels[rows], labels[cols]
    order = np.lexsort((lb, la, -values))
    if selection == "top_n":
        order = order[:int(top_n)]
    if len(order) == 0:
        return _empty_pairs()
    return pd.DataFrame({
        "class_a": [names[i] for i in rows[order]],
        "class_b": [names[j] for j in cols[order]],
        "similarity": values[order],
        "label_a": la[order].astype(np.int64),
        "label_b": lb[order].astype(np.int64),
    }, columns=PAIR_COLUMNS).reset_index(drop=True)


def overlap_classes(pairs: pd.DataFrame) -> list[dict]:
    """The union of the classes of ``pairs``: ``[{"label": int, "name": str}, ...]`` by label."""
    found: dict[int, str] = {}
    for a, b, la, lb in pairs[["class_a", "class_b", "label_a", "label_b"]].itertuples(index=False):
        found[int(la)] = str(a)
        found[int(lb)] = str(b)
    return [{"label": label, "name": found[label]} for label in sorted(found)]


def partners(pairs: pd.DataFrame) -> dict[int, list[int]]:
    """label -> the labels it is paired with (each list ascending)."""
    out: dict[int, set[int]] = {}
    for la, lb in pairs[["label_a", "label_b"]].itertuples(index=False):
        out.setdefault(int(la), set()).add(int(lb))
        out.setdefault(int(lb), set()).add(int(la))
    return {label: sorted(others) for label, others in sorted(out.items())}


@dataclass
class OverlapResult:
    """What the overlap rule writes: centroids, their similarity matrix, the pairs, the class union."""

    centroids: Centroids
    similarity: np.ndarray
    pairs: pd.DataFrame
    classes: list[dict]
    settings: OverlapSettings
    splits: list[str]


def compute_overlap(store: FeatureStore, settings: OverlapSettings) -> OverlapResult:
    """Centroids over ``settings.splits`` (None: every split of the store), streamed chunk by chunk
    so memory stays bounded, then the cosine matrix, the pairs and the overlap set."""
    use = list(settings.splits) if settings.splits is not None else list(store.splits)
    absent = [s for s in use if s not in store.splits]
    if absent:
        raise ValueError(f"overlap.splits: {absent} are not in the feature store; it has {store.splits}")
    if not use:
        raise ValueError("overlap.splits is empty; name at least one split")
    present = np.unique(np.concatenate([store.labels(split) for split in use]))
    wanted = resolve_classes(settings.classes, store.class_names, present=present)
    centroids = streamed_class_centroids(((chunk.features, chunk.labels) for chunk in store.iter_chunks(use)),
                                         store.dim, store.class_names,
                                         normalized=settings.centroid == "normalized_mean", classes=wanted)
    similarity = similarity_matrix(centroids.vectors)
    pairs = select_pairs(similarity, centroids.names, centroids.labels, selection=settings.selection,
                         threshold=settings.threshold, inclusive=settings.inclusive, top_n=settings.top_n)
    return OverlapResult(centroids, similarity, pairs, overlap_classes(pairs), settings, use)


# --------------------------------------------------------------------------------------------------
# per-sample refinement


def partner_similarity(features: np.ndarray, labels: np.ndarray, centroids: Centroids,
                       partner_map: Mapping[int, Sequence[int]]) -> np.ndarray:
    """For each row, the cosine between its feature and the centroids of its class's partners, the
    maximum over partners; NaN for rows whose class has no partner."""
    features = l2_normalize(features)
    labels = np.asarray(labels, dtype=np.int64)
    unit = l2_normalize(centroids.vectors) if len(centroids) else centroids.vectors
    where = centroids.position()
    scores = np.full(len(labels), np.nan)
    for label, others in partner_map.items():
        rows = np.flatnonzero(labels == label)
        cols = [where[o] for o in others if o in where]
        if len(rows) and cols:
            scores[rows] = (features[rows] @ unit[cols].T).max(axis=1)
    return scores


def refine_keep(scores: np.ndarray, groups: np.ndarray | Sequence, refine: RefineSettings) -> np.ndarray:
    """Boolean mask of the rows to keep. ``scores`` are partner similarities (NaN: never kept unless
    refinement is off); ``groups`` holds one key per row (e.g. ``"split/label"``): ``top_fraction``
    takes ``ceil(fraction * n)`` rows of each group, highest score first (ties: earlier row first)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not refine.enabled:
        return np.ones(len(scores), dtype=bool)
    if refine.mode == "threshold":
        return np.nan_to_num(scores, nan=-np.inf) >= refine.threshold
    keep = np.zeros(len(scores), dtype=bool)
    groups = pd.Series(list(groups)) if not isinstance(groups, pd.Series) else groups.reset_index(drop=True)
    for _, positions in groups.groupby(groups, sort=False).indices.items():
        positions = np.asarray(positions)
        valid = positions[~np.isnan(scores[positions])]
        take = math.ceil(refine.fraction * len(valid))
        ranked = valid[np.argsort(-scores[valid], kind="stable")]
        keep[ranked[:take]] = True
    return keep


def subset_rows(manifest: pd.DataFrame, classes: Sequence[int], *, store: FeatureStore | None = None,
                centroids: Centroids | None = None, pairs: pd.DataFrame | None = None,
                refine: RefineSettings | None = None) -> pd.DataFrame:
    """The manifest rows to export: every image of ``classes`` (labels), in manifest order; with
    refinement on (``refine`` given and its mode not none), only the images close to a partner class, plus a ``partner_similarity`` column.
    Refinement needs the feature ``store`` (streamed split by split), ``centroids`` and ``pairs``;
    an image without features (it failed to decode at extraction) is never kept."""
    rows = manifest[manifest["label"].isin([int(c) for c in classes])].reset_index(drop=True)
    if refine is None or not refine.enabled:
        return rows
    if store is None or centroids is None or pairs is None:
        raise ValueError("refinement needs the feature store, the centroids and the pairs")
    partner_map = partners(pairs)
    paired = np.fromiter(partner_map, dtype=np.int64)
    scores = np.full(len(rows), np.nan)
    for split, part in rows.groupby("split", sort=False):
        if split not in store.splits:
            raise ValueError(f"refinement: split {split!r} of the manifest is not in the feature store "
                             f"(it has {store.splits})")
        index_parts, score_parts = [], []
        for chunk in store.iter_chunks([split]):
            take = np.isin(chunk.labels, paired)
            index_parts.append(chunk.index[take])
            score_parts.append(partner_similarity(chunk.features[take], chunk.labels[take], centroids,
                                                  partner_map))
        by_index = pd.Series(np.concatenate(score_parts) if score_parts else np.empty(0),
                             index=np.concatenate(index_parts) if index_parts else np.empty(0, np.int64))
        scores[part.index.to_numpy()] = by_index.reindex(part["index_in_split"].to_numpy()).to_numpy()
    groups = rows["split"].astype(str) + "/" + rows["label"].astype(str)
    keep = refine_keep(scores, groups, refine)
    rows = rows.assign(**{SIMILARITY_COLUMN: scores})
    return rows[keep].reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# writers and readers


def write_similarity_csv(similarity: np.ndarray, names: Sequence[str], path: str | Path) -> None:
    """The K x K matrix as CSV: a ``class`` column, then one column per class (same order as rows)."""
    frame = pd.DataFrame(np.asarray(similarity), index=list(names), columns=list(names))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index_label="class", float_format="%.6f")


def read_similarity_csv(path: str | Path) -> pd.DataFrame:
    """Read :func:`write_similarity_csv`'s file: a square DataFrame indexed by class name."""
    return pd.read_csv(path, index_col="class", keep_default_na=False)


def write_pairs_csv(pairs: pd.DataFrame, path: str | Path) -> None:
    """``pairs`` (from :func:`select_pairs`) as CSV with columns :data:`PAIR_COLUMNS`."""
    with atomic_path(path) as tmp:
        pairs[PAIR_COLUMNS].to_csv(tmp, index=False, float_format="%.6f")


def read_pairs_csv(path: str | Path) -> pd.DataFrame:
    """Read :func:`write_pairs_csv`'s file (class names stay text, also ``"nan"`` or ``"null"``)."""
    frame = pd.read_csv(path, dtype={"class_a": str, "class_b": str}, keep_default_na=False)
    if len(frame) == 0:
        return _empty_pairs()
    return frame.astype({"similarity": "float64", "label_a": "int64", "label_b": "int64"})


def classes_document(result: OverlapResult, **provenance) -> dict:
    """What ``classes.json`` holds: the overlap set (label and name, by label), counts, settings."""
    return {
        **provenance,
        "num_classes": len(result.classes),
        "num_pairs": int(len(result.pairs)),
        "classes": result.classes,
        "centroid_splits": result.splits,
        "num_centroid_classes": len(result.centroids),
        "settings": result.settings.as_dict(),
    }


def write_classes_json(document: dict, path: str | Path) -> None:
    """Write ``classes.json`` atomically."""
    write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def save_centroids(centroids: Centroids, path: str | Path) -> None:
    """Centroids as NPZ (``labels``, ``names``, ``vectors``, ``counts``), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, labels=centroids.labels, names=np.asarray(centroids.names, dtype=str),
                     vectors=centroids.vectors, counts=centroids.counts)


def load_centroids(path: str | Path) -> Centroids:
    """Read :func:`save_centroids`'s file."""
    with np.load(path, allow_pickle=False) as data:
        return Centroids(data["labels"].astype(np.int64), [str(n) for n in data["names"]],
                         data["vectors"].astype(np.float64), data["counts"].astype(np.int64))


def describe_result(result: OverlapResult) -> str:
    """One line for logs and reports: what was selected, or why nothing was (with the closest pair)."""
    settings, pairs = result.settings, result.pairs
    if settings.selection == "top_n":
        rule = f"the top {settings.top_n} pairs"
    else:
        rule = f"similarity {'>=' if settings.inclusive else '>'} {settings.threshold:g}"
    if len(pairs):
        return (f"{len(pairs)} pairs over {len(result.classes)} classes ({rule}; of {len(result.centroids)} "
                f"classes); most similar: {pairs.class_a[0]} - {pairs.class_b[0]} {pairs.similarity[0]:.3f}")
    k = len(result.centroids)
    if k < 2:
        return f"no pairs: only {k} class(es) have images"
    upper = np.triu_indices(k, 1)
    best = int(np.argmax(result.similarity[upper]))
    i, j = upper[0][best], upper[1][best]
    return (f"no pairs ({rule}) among {k} classes: the overlap set is empty. The most similar pair is "
            f"{result.centroids.names[i]} - {result.centroids.names[j]} at {result.similarity[i, j]:.3f}; "
            f"lower overlap.threshold or use selection: top_n to get a subset")


THRESHOLD_NOTE = ("The threshold depends on the backbone: 0.9 is calibrated for DINO ViT-S/16 CLS features, and "
                  "other backbones put centroid similarities on other scales. Read the heatmap and similarity.csv "
                  "before reusing a threshold, or use selection: top_n.")


def overlap_summary(result: OverlapResult, *, dataset: str, backbone: str) -> StageSummary:
    """The stage summary the report renders: pairs and classes found, the rule that selected them, the
    most similar pair, and the tables and heatmap the overlap rule writes beside ``summary.json``."""
    settings, pairs = result.settings, result.pairs
    headline: dict = {"pairs": int(len(pairs)), "classes": len(result.classes)}
    if settings.selection == "top_n":
        headline["top_n"] = settings.top_n
    else:
        headline["threshold"] = f"{'>=' if settings.inclusive else '>'} {settings.threshold:g}"
    if len(result.centroids) >= 2:
        upper = np.triu_indices(len(result.centroids), 1)
        best = int(np.argmax(result.similarity[upper]))
        i, j = upper[0][best], upper[1][best]
        headline["most similar pair"] = (f"{result.centroids.names[i]} - {result.centroids.names[j]} "
                                         f"({result.similarity[i, j]:.3f})")
    notes = [describe_result(result)]
    if settings.selection == "threshold":
        notes.append(THRESHOLD_NOTE)
    return StageSummary(
        stage="overlap", title="Overlapping classes", dataset=dataset, backbone=backbone, headline=headline,
        tables=[Artifact("pairs.csv", "The overlapping class pairs, most similar first: cosine similarity of "
                                      "the two class centroids, and the classes' dataset labels."),
                Artifact("similarity.csv", "Cosine similarity of every two class centroids (1 on the diagonal); "
                                           "rows and columns in label order.")],
        figures=[Artifact("similarity.png", "Cosine similarity between class centroids, classes reordered by a "
                                            "hierarchical clustering so that similar classes sit side by side. "
                                            "Bright off-diagonal cells and blocks are classes the backbone "
                                            "barely tells apart; the colour scale starts at the smallest "
                                            "similarity of two different classes.")],
        notes=notes, settings=settings.as_dict())
