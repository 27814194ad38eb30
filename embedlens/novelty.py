"""Novelty and surprise: k-means on frozen embeddings, three scores per image, and their measured quality.

The reference behaviour (the novelty notebook this replaces), with its vague rules made settings:

1. The embeddings are split 80/20 (``fit_fraction``, seeded). k-means is fitted on the 80% (the *fit*
   part) for every k of a range; k is taken at the elbow of the inertia curve, found with the Kneedle
   method (Satopää et al. 2011, the ``kneed`` package), and k-means is refitted with it. A fixed ``k``
   skips the search.
2. Every image of the 20% (the *held-out* part), and later any new image, gets three scores, each
   higher for a more unusual image:

   - **novelty** (the notebook's rule): the image's Euclidean distance to the centroid of its cluster
     as a z-score against that cluster's distances on the fit part, ``(d - mean_c) / std_c``;
     flagged above ``novelty_threshold``;
   - **surprise** (the notebook's rule): the distance to the nearest centroid divided by the mean
     distance between two centroids; flagged above ``surprise_threshold``, or, when that is None
     (the default: the ratio's scale depends on the backbone, on k and on normalisation), above the
     ``flag_quantile`` quantile of the fit images' own ratios;
   - **kNN distance** (deep-kNN out-of-distribution detection, Sun et al., ICML 2022): the cosine
     distance ``1 - cos`` to the ``knn_k``-th most similar fit embedding; flagged above the
     ``flag_quantile`` quantile of the same distance among the fit embeddings themselves (each
     without itself), so about ``1 - flag_quantile`` of ordinary images are flagged.

With ``normalize`` (the default) embeddings are L2-normalised before k-means, so that distances
reflect directions, as the cosine of the kNN score does; the notebook clustered the raw embeddings.

3. Quality: when the images have classes, :func:`unseen_class_quality` holds out whole classes as
   unseen, fits on the others and reports, per score, the AUROC and the false-positive rate at 95%
   true-positive rate of telling the unseen classes' images (positives) from held-out images of the
   seen classes (negatives), over several random draws of unseen classes.

The fitted model (:class:`NoveltyModel`: centroids, per-cluster distance statistics, thresholds and
the fit embeddings) is saved to HDF5, so new images are scored later without refitting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from kneed import KneeLocator
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import pairwise_distances_argmin_min, roc_auc_score, roc_curve
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import train_test_split

from embedlens.atomic import atomic_path
from embedlens.datasets import ImageDataset
from embedlens.geometry import l2_normalize
from embedlens.knn import cosine_topk
from embedlens.recipe import recipe_differences
from embedlens.store import FeatureStore
from embedlens.summary import Artifact, StageSummary

SCORES = ("novelty_score", "surprise_score", "knn_distance")
"""The per-image scores whose detection quality is measured, each higher for a more unusual image.
``centroid_distance`` is left out: the surprise score is that distance over a constant (the centroid
spacing), so the two rank images identically and share their AUROC."""
SCORE_COLUMNS = ["cluster", "centroid_distance", "novelty_score", "novel", "surprise_score", "surprising",
                 "knn_distance", "knn_novel"]
CALIBRATION_ROWS = 10_000  # fit rows whose own kNN distances set the kNN threshold (a seeded sample)
# Below this many fit images per cluster, a cluster's mean and spread of distances (the z-score) and the
# calibration quantiles rest on a handful of points: on 36 images in 3 classes 62% of held-out images
# came out "novel". The summary then says the flags are not to be trusted.
TRUSTED_IMAGES_PER_CLUSTER = 30
MODEL_FORMAT = 1


class NoveltyInputError(ValueError):
    """The data cannot support the requested fit (too few images, classes or clusters); the message
    says what there is and which setting would work."""


@dataclass(frozen=True)
class QualitySettings:
    """Held-out-class evaluation: ``draws`` random draws of ``unseen_fraction`` of the classes (at least
    one, at most all but two); ``draws: 0`` switches it off."""

    unseen_fraction: float = 0.1
    draws: int = 5


@dataclass(frozen=True)
class NoveltySettings:
    """The ``novelty:`` section of the config (defaults live in the schema; these mirror it for tests).

    ``k``: fixed number of clusters, or None to search ``k_min..k_max`` for the elbow (on at most
    ``search_sample`` fit rows, with Kneedle sensitivity ``knee_sensitivity``). ``n_init``: k-means
    restarts. Thresholds: ``novelty_threshold`` (z-score), ``surprise_threshold`` (distance ratio, or
    None to calibrate it), ``flag_quantile`` (share of fit images below a calibrated threshold). ``knn_k``: the neighbour whose
    distance is the kNN score.
    """

    splits: tuple[str, ...] | None = None
    seed: int = 0
    fit_fraction: float = 0.8
    normalize: bool = True
    k: int | None = None
    k_min: int = 2
    k_max: int = 20
    search_sample: int = 20_000
    knee_sensitivity: float = 1.0
    n_init: int = 3
    novelty_threshold: float = 2.0
    surprise_threshold: float | None = None
    knn_k: int = 10
    flag_quantile: float = 0.95
    top_images: int = 24
    scatter_points: int = 5_000
    quality: QualitySettings = field(default_factory=QualitySettings)

    @classmethod
    def from_config(cls, section: Mapping) -> NoveltySettings:
        """Settings from the validated ``novelty:`` config section (keys the workflow alone uses,
        such as ``enabled`` and ``score_datasets``, are left out)."""
        known = set(cls.__dataclass_fields__) - {"quality"}
        values = {key: section[key] for key in known if key in section}
        if values.get("splits") is not None:
            values["splits"] = tuple(values["splits"])
        return cls(**values, quality=QualitySettings(**section.get("quality", {})))

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


# --------------------------------------------------------------------------------------------------
# the fit / held-out split and the choice of k


def split_fit_holdout(count: int, fit_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``0..count-1`` split at random (``seed``) into a fit part of ``fit_fraction`` and a
    held-out part (each sorted). Both parts get at least one row; fewer than two rows is an error."""
    if count < 2:
        raise NoveltyInputError(f"{count} image(s): the novelty stage needs at least 2, one to fit and one "
                                "to score (and more than k to fit k clusters)")
    fit, held_out = train_test_split(np.arange(count), train_size=fit_fraction, random_state=seed)
    return np.sort(fit), np.sort(held_out)


def prepare(features: np.ndarray, normalize: bool) -> np.ndarray:
    """The embeddings as k-means sees them: float32, L2-normalised rows when ``normalize``."""
    return (l2_normalize(features) if normalize else np.asarray(features)).astype(np.float32, copy=False)


def kmeans(features: np.ndarray, k: int, *, seed: int, n_init: int) -> KMeans:
    """scikit-learn's k-means (k-means++ starts, ``n_init`` restarts, ``seed``) fitted on ``features``."""
    if k > len(features):
        raise NoveltyInputError(f"k={k} clusters need at least {k} images to fit; there are {len(features)}. "
                                "Lower novelty.k (or novelty.k_max), or add images")
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(features)


def inertia_curve(features: np.ndarray, ks: Sequence[int], *, seed: int, n_init: int,
                  sample: int | None = None) -> pd.DataFrame:
    """k-means inertia per image (within-cluster sum of squared distances / rows) for every k of
    ``ks``, on at most ``sample`` rows of ``features`` (a seeded random sample). Columns ``k, inertia``."""
    if sample is not None and len(features) > sample:
        features = features[np.sort(np.random.default_rng(seed).choice(len(features), sample, replace=False))]
    inertias = [kmeans(features, k, seed=seed, n_init=n_init).inertia_ / len(features) for k in ks]
    return pd.DataFrame({"k": list(ks), "inertia": inertias})


def elbow_k(ks: Sequence[int], inertias: Sequence[float], sensitivity: float = 1.0) -> int:
    """The k at the elbow of a decreasing inertia curve, by Kneedle (``kneed.KneeLocator``, convex,
    decreasing, sensitivity ``S``): the k whose normalised inertia lies farthest below the straight
    line from the first to the last point, when that point stands out by Kneedle's threshold. When no
    point does (a curve close to a straight line), the farthest point is taken anyway, so there is
    always an answer; with fewer than three k values there is no elbow and the smallest k is taken."""
    ks, inertias = [int(k) for k in ks], list(inertias)
    if len(ks) < 3:
        return ks[0]
    locator = KneeLocator(ks, inertias, S=sensitivity, curve="convex", direction="decreasing")
    if locator.knee is not None:
        return int(locator.knee)
    return ks[int(np.argmax(locator.y_difference))]


def k_range(settings: NoveltySettings, fit_rows: int) -> list[int]:
    """The k values to search: ``k_min..k_max``, limited to fewer clusters than fit images."""
    top = min(settings.k_max, fit_rows - 1)
    if top < settings.k_min:
        raise NoveltyInputError(f"{fit_rows} images in the fit part: too few to search k from novelty.k_min="
                                f"{settings.k_min} (k-means needs more images than clusters). Add images, "
                                f"or set novelty.k to a fixed value below {fit_rows}")
    return list(range(settings.k_min, top + 1))


# --------------------------------------------------------------------------------------------------
# the model


@dataclass
class NoveltyModel:
    """A fitted novelty model: everything needed to score new embeddings of the same backbone.

    ``centroids`` (k, D) in the space k-means saw (L2-normalised when ``normalize``);
    ``cluster_mean``/``cluster_std`` (k,): distances of the fit images to their own centroid;
    ``centroid_spacing``: mean Euclidean distance between two centroids; ``reference`` (N, D): the fit
    embeddings as stored (the kNN score's reference); thresholds of the three flags (``knn_threshold``
    is NaN when not calibrated). ``info`` carries provenance (dataset, recipe, settings).
    """

    centroids: np.ndarray
    cluster_mean: np.ndarray
    cluster_std: np.ndarray
    centroid_spacing: float
    reference: np.ndarray
    normalize: bool
    knn_k: int
    novelty_threshold: float
    surprise_threshold: float
    knn_threshold: float
    info: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid of each row of ``features`` (raw embeddings) and the distance to it."""
        cluster, distance = pairwise_distances_argmin_min(prepare(features, self.normalize), self.centroids)
        return cluster.astype(np.int64), distance.astype(np.float64)

    def knn_distances(self, features: np.ndarray) -> np.ndarray:
        """Cosine distance of each row to its ``knn_k``-th most similar reference embedding."""
        if not len(features):
            return np.zeros(0)
        neighbours = cosine_topk(features, self.reference, k=self.knn_k)
        return 1.0 - neighbours.similarities[:, -1].astype(np.float64)

    def score(self, features: np.ndarray) -> pd.DataFrame:
        """The scores and flags of each row of ``features`` (raw embeddings, the backbone's), in
        order, columns :data:`SCORE_COLUMNS`."""
        features = np.asarray(features)
        if not len(features):
            return pd.DataFrame({name: pd.Series(dtype=bool if name in ("novel", "surprising", "knn_novel")
                                                 else "int64" if name == "cluster" else "float64")
                                 for name in SCORE_COLUMNS})
        cluster, distance = self.assign(features)
        knn = self.knn_distances(features)
        novelty = (distance - self.cluster_mean[cluster]) / self.cluster_std[cluster]
        surprise = distance / self.centroid_spacing
        return pd.DataFrame({
            "cluster": cluster, "centroid_distance": distance,
            "novelty_score": novelty, "novel": novelty > self.novelty_threshold,
            "surprise_score": surprise, "surprising": surprise > self.surprise_threshold,
            "knn_distance": knn, "knn_novel": knn > self.knn_threshold,
        })

    # -- saving -------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the model to an HDF5 file, atomically (arrays as datasets, the rest as attributes)."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
            for name in ("centroids", "cluster_mean", "cluster_std"):
                handle.create_dataset(name, data=getattr(self, name))
            handle.create_dataset("reference", data=np.asarray(self.reference, dtype=np.float32),
                                  chunks=True if len(self.reference) else None)
            handle.attrs["format"] = MODEL_FORMAT
            for name in ("centroid_spacing", "normalize", "knn_k", "novelty_threshold", "surprise_threshold",
                         "knn_threshold"):
                handle.attrs[name] = getattr(self, name)
            handle.attrs["info"] = json.dumps(self.info)

    @classmethod
    def load(cls, path: str | Path) -> NoveltyModel:
        """Read a model written by :meth:`save`; the error names the file when it is not one."""
        with h5py.File(path, "r") as handle:
            if handle.attrs.get("format") != MODEL_FORMAT:
                raise ValueError(f"{path}: not a novelty model of format {MODEL_FORMAT} (written by the novelty "
                                 "rule's novelty_fit); rebuild it")
            attrs = handle.attrs
            return cls(centroids=handle["centroids"][:], cluster_mean=handle["cluster_mean"][:],
                       cluster_std=handle["cluster_std"][:], reference=handle["reference"][:],
                       centroid_spacing=float(attrs["centroid_spacing"]), normalize=bool(attrs["normalize"]),
                       knn_k=int(attrs["knn_k"]), novelty_threshold=float(attrs["novelty_threshold"]),
                       surprise_threshold=float(attrs["surprise_threshold"]),
                       knn_threshold=float(attrs["knn_threshold"]), info=json.loads(attrs["info"]))


def fit_model(features: np.ndarray, k: int, settings: NoveltySettings, *, calibrate: bool = True,
              info: Mapping | None = None) -> NoveltyModel:
    """Fit k-means with ``k`` clusters on ``features`` (the fit part, raw embeddings) and the statistics
    the scores need. With ``calibrate`` the kNN threshold is the ``flag_quantile`` of the fit rows' own
    kNN distances (on at most :data:`CALIBRATION_ROWS` of them, seeded), else NaN (enough for AUROC).
    Without a ``surprise_threshold`` setting, the surprise threshold is the ``flag_quantile`` of the
    fit rows' own surprise ratios.

    ``knn_k`` is lowered to the number of fit rows less one when there are fewer; k must be at least 2
    (the surprise score divides by the spacing of the centroids)."""
    features = np.asarray(features)
    if k < 2:
        raise NoveltyInputError(f"k={k}: the surprise score needs at least 2 clusters; set novelty.k >= 2")
    prepared = prepare(features, settings.normalize)
    model_fit = kmeans(prepared, k, seed=settings.seed, n_init=settings.n_init)
    centroids = model_fit.cluster_centers_
    cluster, distance = pairwise_distances_argmin_min(prepared, centroids)
    counts = np.bincount(cluster, minlength=k)
    sums = np.bincount(cluster, weights=distance, minlength=k)
    mean = sums / np.maximum(counts, 1)
    spread = np.sqrt(np.bincount(cluster, weights=(distance - mean[cluster]) ** 2, minlength=k) / np.maximum(counts, 1))
    # A cluster of one image (or of identical ones) has no spread of its own; the spread of all fit
    # images around their centroids stands in, so its z-scores stay finite.
    overall = float(np.std(distance - mean[cluster])) or 1.0
    spread = np.where(spread > 0, spread, overall)
    pairwise = euclidean_distances(centroids)
    spacing = float(pairwise[np.triu_indices(k, 1)].mean())
    surprise_threshold = (settings.surprise_threshold if settings.surprise_threshold is not None
                          else float(np.quantile(distance / spacing, settings.flag_quantile)))
    model = NoveltyModel(centroids=centroids, cluster_mean=mean, cluster_std=spread, centroid_spacing=spacing,
                         reference=features.astype(np.float32, copy=False), normalize=settings.normalize,
                         knn_k=min(settings.knn_k, len(features) - 1), novelty_threshold=settings.novelty_threshold,
                         surprise_threshold=surprise_threshold, knn_threshold=float("nan"),
                         info=dict(info or {}))
    if calibrate:
        model.knn_threshold = float(np.quantile(own_knn_distances(model, settings.seed), settings.flag_quantile))
    return model


def own_knn_distances(model: NoveltyModel, seed: int) -> np.ndarray:
    """The kNN score of (at most :data:`CALIBRATION_ROWS`, seeded) fit rows against the other fit rows:
    what the score looks like for images the model knows."""
    count = len(model.reference)
    rows = np.arange(count)
    if count > CALIBRATION_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(count, CALIBRATION_ROWS, replace=False))
    neighbours = cosine_topk(model.reference[rows], model.reference, k=model.knn_k + 1)
    # Drop each row's own entry (or, when a duplicate outranked it, the last one) to leave k others.
    is_self = neighbours.indices == rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    others = neighbours.similarities[~is_self].reshape(len(rows), model.knn_k)
    return 1.0 - others[:, -1].astype(np.float64)


# --------------------------------------------------------------------------------------------------
# the fit as a whole


@dataclass
class NoveltyFit:
    """What :func:`fit_novelty` found: the model, the rows of each part (positions into the features
    it was given), the inertia curve (``k, inertia``; with a fixed k its one point), ``searched``
    (whether k came from the elbow), the scores of the held-out rows, and notes."""

    model: NoveltyModel
    fit_rows: np.ndarray
    held_out_rows: np.ndarray
    curve: pd.DataFrame
    searched: bool
    scores: pd.DataFrame
    notes: list[str]


def fit_novelty(features: np.ndarray, settings: NoveltySettings, info: Mapping | None = None) -> NoveltyFit:
    """The whole stage on ``features`` (N, D raw embeddings): split, choose k (or take ``settings.k``),
    fit, score the held-out part."""
    features = np.asarray(features)
    fit_rows, held_out_rows = split_fit_holdout(len(features), settings.fit_fraction, settings.seed)
    fit_features = features[fit_rows]
    notes = []
    curve = None
    if settings.k is None:
        ks = k_range(settings, len(fit_rows))
        if ks[-1] < settings.k_max:
            notes.append(f"k was searched up to {ks[-1]}, not novelty.k_max={settings.k_max}: the fit part has "
                         f"{len(fit_rows)} images and k-means needs more images than clusters.")
        curve = inertia_curve(prepare(fit_features, settings.normalize), ks, seed=settings.seed,
                              n_init=settings.n_init, sample=settings.search_sample)
        k = elbow_k(curve["k"], curve["inertia"], settings.knee_sensitivity)
    else:
        k = settings.k
        if k >= len(fit_rows):
            raise NoveltyInputError(f"novelty.k={k} but the fit part has only {len(fit_rows)} images "
                                    f"({settings.fit_fraction:.0%} of {len(features)}); k-means needs more images "
                                    f"than clusters: set novelty.k below {len(fit_rows)} or add images")
    model = fit_model(fit_features, k, settings, info=info)
    if curve is None:  # the fixed k's own point, so the elbow table and plot exist either way
        _, distance = model.assign(fit_features)
        curve = pd.DataFrame({"k": [k], "inertia": [float(np.mean(distance ** 2))]})
    if model.knn_k < settings.knn_k:
        notes.append(f"The kNN score uses neighbour {model.knn_k}, not novelty.knn_k={settings.knn_k}: "
                     f"the fit part has only {len(fit_rows)} images.")
    scores = model.score(features[held_out_rows])
    return NoveltyFit(model, fit_rows, held_out_rows, curve, settings.k is None, scores, notes)


def pca_map(fit_features: np.ndarray, model: NoveltyModel, *, points: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 2-D PCA of the fit embeddings (as k-means saw them) for drawing: ``(xy, clusters, centroid_xy,
    explained)`` for at most ``points`` fit rows (seeded sample), the centroids projected the same way,
    and the share of variance the two axes explain."""
    prepared = prepare(fit_features, model.normalize)
    rows = np.arange(len(prepared))
    if len(rows) > points:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), points, replace=False))
    components = min(2, len(rows), prepared.shape[1])
    pca = PCA(n_components=components, random_state=seed).fit(prepared[rows])
    xy = np.zeros((len(rows), 2))
    xy[:, :components] = pca.transform(prepared[rows])
    centroid_xy = np.zeros((model.k, 2))
    centroid_xy[:, :components] = pca.transform(model.centroids.astype(prepared.dtype))
    clusters, _ = pairwise_distances_argmin_min(prepared[rows], model.centroids)
    return xy, clusters, centroid_xy, pca.explained_variance_ratio_


# --------------------------------------------------------------------------------------------------
# measured quality


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


def unseen_class_quality(features: np.ndarray, labels: np.ndarray, k: int, settings: NoveltySettings,
                         class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Measured detection quality: ``settings.quality.draws`` times, draw the unseen classes (seeded),
    fit with ``k`` clusters on the fit part of the other classes' images, and score their held-out
    part (negatives) together with every image of the unseen classes (positives).

    ``features`` (N, D) raw embeddings, ``labels`` (N,) (rows labelled -1 are left out). One row per
    draw and score: ``draw, score, auroc, fpr_at_95_tpr, seen_images, unseen_images, unseen_classes``.
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
        model = fit_model(features[seen_positions[fit_part]], k, settings, calibrate=False)
        scored = np.concatenate([seen_positions[held_out], np.flatnonzero(is_unseen)])
        quality = detection_quality(is_unseen[scored], model.score(features[scored]))
        names = ", ".join(str(class_names[c]) if class_names else str(c) for c in unseen.tolist())
        for score, values in quality.items():
            rows.append({"draw": draw, "score": score, **values, "seen_images": len(held_out),
                         "unseen_images": int(is_unseen.sum()), "unseen_classes": names})
    return pd.DataFrame(rows)


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


# --------------------------------------------------------------------------------------------------
# from the store to tables and pictures (what the workflow's scripts call)

ROW_COLUMNS = ["split", "index_in_split", "source", "path", "label", "class_name"]


def read_images(store: FeatureStore, manifest: pd.DataFrame, dataset: ImageDataset,
                splits: Sequence[str] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """The features of every image of ``splits`` (default: every split of the store, in store order)
    and one row per image: :data:`ROW_COLUMNS`, ``path`` being the image file for file-backed
    kinds and empty for array-backed ones (CIFAR). A split the store lacks is an error naming those it has."""
    splits = list(splits or store.splits)
    absent = [split for split in splits if split not in store.splits]
    if absent:
        raise NoveltyInputError(f"novelty.splits: {absent} not in {store.path}; it has {store.splits}")
    features, tables = [], []
    for split in splits:
        features.append(store.features(split))
        tables.append(store.join_manifest(split, manifest))
    rows = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=ROW_COLUMNS)
    rows["path"] = [str(dataset.source_file(split, source) or "") for split, source in zip(rows["split"], rows["source"])]
    return (np.concatenate(features) if features else np.zeros((0, store.dim), np.float32)), rows[ROW_COLUMNS]


def scores_table(rows: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """The images' rows (:data:`ROW_COLUMNS`) beside their scores, most novel (largest kNN distance) first."""
    table = pd.concat([rows.reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    return table.sort_values("knn_distance", ascending=False, kind="stable").reset_index(drop=True)


def most_novel_images(dataset: ImageDataset, table: pd.DataFrame, count: int
                      ) -> tuple[list[np.ndarray | None], list[str]]:
    """The first ``count`` images of a :func:`scores_table` (the most novel) and their captions: where
    the image is from, its kNN distance and novelty z-score; an image that cannot be read is None."""
    images, captions = [], []
    for row in table.head(count).itertuples():
        try:
            images.append(dataset.read_image(row.split, row.source))
        except Exception:  # drawn blank: the scores are what matters, and the caption names the image
            images.append(None)
        lines = [Path(row.source).name if row.path else f"{row.split} #{row.index_in_split}"]
        if isinstance(row.class_name, str) and row.class_name:
            lines.append(row.class_name)
        # A grid cell is about 25 characters of caption wide.
        lines = [line if len(line) <= 25 else line[:24] + "…" for line in lines]
        captions.append("\n".join([*lines, f"kNN {row.knn_distance:.3f}  z {row.novelty_score:.1f}"]))
    return images, captions


def map_columns(rows: pd.DataFrame, fit: NoveltyFit, features: np.ndarray) -> pd.DataFrame:
    """Colourings of the explore map (:mod:`embedlens.report.explore`): ``split, index_in_split``, each
    image's cluster (``novelty cluster``: "cluster 3", a category) and, for held-out images, their kNN
    distance (``novelty kNN distance``; empty for fit images, whose own distance would include themselves).
    ``rows`` and ``features`` are the images :func:`fit_novelty` was given, in the same order."""
    cluster, _ = fit.model.assign(features)
    distance = np.full(len(rows), np.nan)
    distance[fit.held_out_rows] = fit.scores["knn_distance"].to_numpy()
    return pd.DataFrame({"split": rows["split"].to_numpy(), "index_in_split": rows["index_in_split"].to_numpy(),
                         "novelty cluster": [f"cluster {c}" for c in cluster.tolist()],
                         "novelty kNN distance": distance})


def flag_counts(scores: pd.DataFrame) -> dict:
    """How many images each flag marks: ``{"images", "novel", "surprising", "knn_novel"}``."""
    return {"images": int(len(scores)), "novel": int(scores["novel"].sum()),
            "surprising": int(scores["surprising"].sum()), "knn_novel": int(scores["knn_novel"].sum())}


def check_model_matches(model: NoveltyModel, store: FeatureStore) -> None:
    """Refuse to score ``store`` with ``model`` unless its embeddings come from the same backbone and
    extraction settings as the model's (the recipe's ``backbone`` and ``extract`` parts)."""
    problems = recipe_differences(store.recipe, model.info.get("recipe", {}), keys=["backbone", "extract"])
    if store.dim != model.centroids.shape[1]:
        problems.append(f"dim: {store.dim} here, {model.centroids.shape[1]} expected")
    if problems:
        raise NoveltyInputError(f"{store.path} cannot be scored with the novelty model of dataset "
                                f"{model.info.get('dataset')!r}: its features come from another recipe:\n  "
                                + "\n  ".join(problems) + "\nEmbed it with the same backbone entry and extract settings.")


def measure_quality(labels: np.ndarray, settings: NoveltySettings) -> str | None:
    """Why the held-out-class measurement cannot run on images with these ``labels`` (None when it can)."""
    if settings.quality.draws == 0:
        return "novelty.quality.draws is 0"
    classes = np.unique(np.asarray(labels)[np.asarray(labels) >= 0])
    if len(classes) < 3:
        return (f"the images have {len(classes)} class(es); holding out unseen classes needs at least 3 "
                "(one unseen, two seen)")
    return None


# --------------------------------------------------------------------------------------------------
# the stage's summary


def fit_document(fit: NoveltyFit, settings: NoveltySettings, *, unreadable: int) -> dict:
    """What ``fit.json`` records for the stage's summary: images of each part, k and how it was chosen,
    the thresholds, the flag counts of the held-out images and the notes (``unreadable``: images of the
    dataset that have no features)."""
    model = fit.model
    return {"k": model.k, "searched": fit.searched,
            "k_range": [int(fit.curve["k"].min()), int(fit.curve["k"].max())],
            "fit_images": int(len(fit.fit_rows)), "held_out_images": int(len(fit.held_out_rows)),
            "unreadable": int(unreadable), "knn_k": model.knn_k, "centroid_spacing": model.centroid_spacing,
            "thresholds": {"novelty_z": model.novelty_threshold, "surprise_ratio": model.surprise_threshold,
                           "knn_distance": model.knn_threshold},
            "flags": flag_counts(fit.scores), "notes": fit.notes, "settings": settings.as_dict()}


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0%"


def novelty_summary(fit: Mapping, quality: Mapping, scored: Sequence[Mapping], *, dataset: str,
                    backbone: str) -> StageSummary:
    """The stage's ``summary.json``: headline figures, tables and figures with captions, notes and the
    settings, from ``fit.json`` (:func:`fit_document`), ``quality.json`` and the ``score.json`` of
    each dataset scored against the model (paths relative to the novelty folder)."""
    flags, held_out = fit["flags"], fit["held_out_images"]
    thresholds = fit["thresholds"]
    headline = {"k": fit["k"], "fit_images": fit["fit_images"], "held_out_images": held_out,
                "novel": flags["novel"], "surprising": flags["surprising"], "knn_novel": flags["knn_novel"],
                "unreadable": fit["unreadable"]}
    chosen = (f"k = {fit['k']} at the elbow (Kneedle) of k = {fit['k_range'][0]}..{fit['k_range'][1]}"
              if fit["searched"] else f"k = {fit['k']} fixed by novelty.k (no search)")
    tables = [
        Artifact("scores.csv", "One row per held-out image, most novel (largest kNN distance) first: split, "
                 "index_in_split, source, path, label, class_name, its cluster, centroid_distance, novelty_score "
                 "(z-score of that distance within its cluster) and the flag novel, surprise_score (distance over "
                 "the mean centroid spacing) and surprising, knn_distance (cosine distance to the "
                 f"k-th nearest fit image, k = {fit['knn_k']}) and knn_novel."),
        Artifact("elbow.csv", "k-means inertia per image for each k searched (k, inertia)."),
    ]
    figures = [
        Artifact("elbow.png", f"Inertia per image against k; {chosen}, marked in red. Past the elbow, more "
                 "clusters buy little."),
        Artifact("pca.png", "The fit images in the first two principal components, coloured by cluster; crosses "
                 "are the centroids. Overlapping colours are expected: two components show little of the "
                 "embedding's structure."),
        Artifact("clusters.png", "How many held-out images fall into each cluster: the clusters' sizes, which "
                 "the novelty z-scores of a cluster are relative to."),
        Artifact("novel.png", "The held-out images with the largest kNN distance (most novel first), with "
                 "that distance and their novelty z-score."),
    ]
    notes = [f"{chosen}. Fitted on {fit['fit_images']} images ({fit['settings']['fit_fraction']:.0%}), "
             f"{held_out} held out and scored.",
             f"Flags on the held-out images: novel (z > {thresholds['novelty_z']:g}) {flags['novel']} "
             f"({_percent(flags['novel'], held_out)}), surprising (ratio > {thresholds['surprise_ratio']:.3g}"
             + ("" if fit["settings"]["surprise_threshold"] is not None else
                f", the {fit['settings']['flag_quantile']:.0%} quantile on the fit images") + ") "
             f"{flags['surprising']} ({_percent(flags['surprising'], held_out)}), kNN "
             f"(distance > {thresholds['knn_distance']:.4f}, the {fit['settings']['flag_quantile']:.0%} quantile "
             f"on the fit images) {flags['knn_novel']} ({_percent(flags['knn_novel'], held_out)}).",
             *fit["notes"]]
    if fit["fit_images"] < TRUSTED_IMAGES_PER_CLUSTER * fit["k"]:
        headline["trusted"] = "no"
        notes.insert(0, f"Too small to trust: {fit['fit_images']} fit images for k = {fit['k']} clusters, fewer than "
                        f"{TRUSTED_IMAGES_PER_CLUSTER} per cluster, so each cluster's distance statistics and the "
                        "calibrated thresholds rest on a few images; read the flags as a ranking, not as verdicts.")
    if fit["unreadable"]:
        notes.append(f"{fit['unreadable']} images of the dataset could not be read and have no scores; they are "
                     "listed in the dataset's skipped.csv and the features' skipped.csv.")
    if quality["measured"]:
        best = quality["scores"][0]
        knn = next(row for row in quality["scores"] if row["score"] == "knn_distance")
        # The kNN score's AUROC is the headline (the report compares it across backbones): the same
        # score for every run, and the one that is usually best.
        headline.update({"auroc": round(knn["auroc_mean"], 4), "fpr_at_95_tpr": round(knn["fpr_at_95_tpr_mean"], 4)})
        tables += [Artifact("quality.csv", f"Detection quality with {quality['unseen_classes']} of "
                            f"{quality['classes']} classes held out as unseen, over {quality['draws']} draws: per "
                            "score the AUROC (1: every unseen image scores above every seen one; 0.5: chance) and "
                            "the false-positive rate at 95% true-positive rate (lower is better), mean and std."),
                   Artifact("quality_draws.csv", "The same per draw, with the unseen classes of each draw.")]
        notes.append(f"Held-out classes: {best['score']} separates unseen from seen classes best, AUROC "
                     f"{best['auroc_mean']:.3f} ± {best['auroc_std']:.3f}, FPR at 95% TPR "
                     f"{best['fpr_at_95_tpr_mean']:.3f} ± {best['fpr_at_95_tpr_std']:.3f}.")
    else:
        notes.append(f"Detection quality was not measured: {quality['reason']}.")
    for document in scored:
        name, counts = document["dataset"], document["flags"]
        tables.append(Artifact(f"score/{name}/scores.csv", f"The images of dataset {name} scored against this "
                               "model without refitting (same columns as scores.csv)."))
        figures.append(Artifact(f"score/{name}/novel.png", f"The most novel images of dataset {name} (kNN "
                                "distance to this model's fit images)."))
        notes.append(f"Dataset {name}: {counts['images']} images scored, {counts['knn_novel']} flagged by kNN, "
                     f"{counts['novel']} novel, {counts['surprising']} surprising"
                     + (f"; {document['unreadable']} could not be read" if document["unreadable"] else "") + ".")
    return StageSummary(stage="novelty", title="Novelty and surprise", dataset=dataset, backbone=backbone,
                        headline=headline, tables=tables, figures=figures, notes=notes, settings=fit["settings"])
