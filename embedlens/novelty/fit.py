"""The novelty stage's fit: the fit / held-out split, k at the elbow of the inertia curve (or
``novelty.k``), the model fitted on the fit part and the held-out part scored; and the 2-D PCA of the
fit images for drawing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from kneed import KneeLocator
from sklearn.decomposition import PCA
from sklearn.metrics import pairwise_distances_argmin_min
from sklearn.model_selection import train_test_split

from embedlens.kmeans import fit_kmeans, kmeans_space, sample_rows
from embedlens.novelty.model import NoveltyModel, fit_model
from embedlens.novelty.settings import NoveltyInputError, NoveltySettings


def split_fit_holdout(count: int, fit_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``0..count-1`` split at random (``seed``) into a fit part of ``fit_fraction`` and a
    held-out part (each sorted). Both parts get at least one row; fewer than two rows is an error."""
    if count < 2:
        raise NoveltyInputError(f"{count} image(s): the novelty stage needs at least 2, one to fit and one "
                                "to score (and more than k to fit k clusters)")
    fit, held_out = train_test_split(np.arange(count), train_size=fit_fraction, random_state=seed)
    return np.sort(fit), np.sort(held_out)


def inertia_curve(features: np.ndarray, ks: Sequence[int], settings: NoveltySettings) -> pd.DataFrame:
    """k-means inertia per image (within-cluster sum of squared distances / rows, in the space k-means
    sees) for every k of ``ks``, on at most ``settings.search_sample`` rows of the raw embeddings
    ``features`` (a seeded random sample). Columns ``k, inertia``."""
    if len(features) > settings.search_sample:
        features = features[sample_rows(len(features), settings.search_sample, settings.seed)]
    inertias = [fit_kmeans(features, k, settings, settings.seed).inertia_ / len(features) for k in ks]
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


def choose_k(fit_features: np.ndarray, settings: NoveltySettings) -> tuple[int, pd.DataFrame | None, list[str]]:
    """k for a fit on ``fit_features`` (raw embeddings) and only them: ``settings.k``, or the elbow of
    the inertia curve over ``k_min..k_max``. Returns k, the curve (None for a fixed k) and notes."""
    if settings.k is not None:
        if settings.k >= len(fit_features):
            raise NoveltyInputError(f"novelty.k={settings.k} but the fit part has only {len(fit_features)} images; "
                                    "k-means needs more images than clusters: set novelty.k below "
                                    f"{len(fit_features)} or add images")
        return settings.k, None, []
    ks = k_range(settings, len(fit_features))
    notes = []
    if ks[-1] < settings.k_max:
        notes.append(f"k was searched up to {ks[-1]}, not novelty.k_max={settings.k_max}: the fit part has "
                     f"{len(fit_features)} images and k-means needs more images than clusters.")
    curve = inertia_curve(fit_features, ks, settings)
    return elbow_k(curve["k"], curve["inertia"], settings.knee_sensitivity), curve, notes


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
    """The whole stage on ``features`` (N, D raw embeddings): split, choose k on the fit part (or take
    ``settings.k``), fit, score the held-out part. Memory: the fit part's rows (the kNN score's
    reference) beside ``features``; everything else goes block by block or on samples."""
    features = np.asarray(features)
    fit_rows, held_out_rows = split_fit_holdout(len(features), settings.fit_fraction, settings.seed)
    fit_features = features[fit_rows]
    k, curve, notes = choose_k(fit_features, settings)
    model = fit_model(fit_features, k, settings, info=info)
    if curve is None:  # the fixed k's own point, so the elbow table and plot exist either way
        _, distance = model.assign(fit_features)
        curve = pd.DataFrame({"k": [k], "inertia": [float(np.mean(distance ** 2))]})
    if model.knn_k < settings.knn_k:
        notes.append(f"The kNN score uses neighbour {model.knn_k}, not novelty.knn_k={settings.knn_k}: "
                     f"the fit part has only {len(fit_rows)} images.")
    scores = model.score(features, held_out_rows, settings.device)
    return NoveltyFit(model, fit_rows, held_out_rows, curve, settings.k is None, scores, notes)


def pca_map(model: NoveltyModel, *, points: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 2-D PCA of the fit embeddings (the model's reference, as k-means saw them) for drawing: ``(xy,
    clusters, centroid_xy, explained)`` for at most ``points`` fit rows (a seeded sample: only they are
    prepared, fitted and projected), the centroids projected the same way, and the share of variance the
    two axes explain."""
    prepared = kmeans_space(model.reference[sample_rows(len(model.reference), points, seed)], model.normalize)
    components = min(2, len(prepared), prepared.shape[1])
    pca = PCA(n_components=components, random_state=seed).fit(prepared)
    xy = np.zeros((len(prepared), 2))
    xy[:, :components] = pca.transform(prepared)
    centroid_xy = np.zeros((model.k, 2))
    centroid_xy[:, :components] = pca.transform(model.centroids.astype(prepared.dtype))
    clusters, _ = pairwise_distances_argmin_min(prepared, model.centroids)
    return xy, clusters, centroid_xy, pca.explained_variance_ratio_
