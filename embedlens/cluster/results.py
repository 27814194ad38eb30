"""The clustering stage's files: the splits it reads, what each rule writes and the next one reads, the
pictures, the explore map's columns and the stage's ``summary.json``.

``predictions.npz`` of a method holds, for the fit split and the scored split: ``{split}_index`` (the
store's index_in_split, store order), ``{split}_cluster`` and ``{split}_label`` (true label, -1: none),
plus ``method``, ``clusters`` (K), ``splits`` and ``class_names``. ``results.json`` holds the metrics of
each split (:func:`embedlens.cluster.metrics.cluster_metrics`), the fit's details and the warnings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from embedlens.atomic import atomic_path, write_text_atomic
from embedlens.cluster.metrics import cluster_metrics
from embedlens.cluster.settings import ClusterInputError, ClusterSettings
from embedlens.cluster.temi import HISTORY_COLUMNS
from embedlens.datasets import ImageDataset
from embedlens.manifest import write_table
from embedlens.plots import bar_chart, image_rows, note_figure, scatter_maps
from embedlens.store import FeatureStore, SplitFeatures
from embedlens.summary import Artifact, StageSummary

METRIC_COLUMNS = ["method", "split", "images", "labelled", "acc", "nmi", "ari", "active_clusters", "size_min",
                  "size_max", "size_mean", "size_std", "size_cv"]
MATCH, MISMATCH = "tab:green", "tab:red"
# scikit-learn's own t-SNE perplexity, lowered to a third of the images less one for small splits (t-SNE needs
# about 3 x perplexity neighbours); like the UMAP maps (embedlens.plots.UMAP_NEIGHBOURS) it draws a picture only
TSNE_PERPLEXITY = 30.0


def clustering_problem(store: FeatureStore, settings: ClusterSettings) -> str | None:
    """Why ``store`` cannot be clustered as ``settings`` ask (a split it lacks, too few images, no way
    to know K), naming the setting that would work; None when it can. The stage then writes its files
    empty, with this reason, so that the rest of the workflow (the report) still runs."""
    for key in ("train_split", "test_split"):
        split = getattr(settings, key)
        if split not in store.splits:
            return (f"cluster.{key}: {store.path} has no split {split!r}; it has {', '.join(store.splits)} "
                    f"(set cluster.{key} to one of them)")
    images = store.split_size(settings.train_split)
    if settings.clusters is None:
        labels = store.labels(settings.train_split)
        if len(np.unique(labels[labels >= 0])) < 2:
            return (f"cluster.clusters is null, which takes the number of classes of split "
                    f"{settings.train_split!r}, but its images have fewer than 2 classes; set cluster.clusters")
    clusters = number_of_clusters(settings, store.labels(settings.train_split))
    if clusters > images:
        return (f"split {settings.train_split!r} has {images} images, too few for {clusters} clusters; lower "
                "cluster.clusters or add images")
    return None


def read_splits(store: FeatureStore, settings: ClusterSettings) -> tuple[SplitFeatures, SplitFeatures]:
    """The fit split's and the scored split's rows (``cluster.train_split``, ``cluster.test_split``)."""
    for key in ("train_split", "test_split"):
        split = getattr(settings, key)
        if split not in store.splits:
            raise ClusterInputError(f"cluster.{key}: {store.path} has no split {split!r}; it has "
                                    f"{', '.join(store.splits)}")
    return store.read_split(settings.train_split), store.read_split(settings.test_split)


def number_of_clusters(settings: ClusterSettings, train_labels: np.ndarray) -> int:
    """K: ``cluster.clusters``, or the number of classes with images in the fit split."""
    if settings.clusters is not None:
        return settings.clusters
    classes = len(np.unique(train_labels[train_labels >= 0]))
    if classes < 2:
        raise ClusterInputError(f"cluster.clusters is null, which takes the number of classes in split "
                                f"{settings.train_split!r}, but it has {classes}; set cluster.clusters")
    return classes


@dataclass
class Assignment:
    """The clusters of the images of one split, in store order."""

    index: np.ndarray    # int64 index_in_split
    cluster: np.ndarray  # int64
    label: np.ndarray    # int64 true label, -1: none


def save_predictions(path, method: str, clusters: int, assignments: Mapping[str, Assignment],
                     class_names: Sequence[str]) -> None:
    """Write ``predictions.npz`` (see the module docstring) atomically."""
    arrays = {"method": np.asarray(method), "clusters": np.asarray(clusters), "splits": np.asarray(list(assignments)),
              "class_names": np.asarray(list(class_names), dtype=str)}
    for split, assignment in assignments.items():
        arrays.update({f"{split}_index": np.asarray(assignment.index, np.int64),
                       f"{split}_cluster": np.asarray(assignment.cluster, np.int64),
                       f"{split}_label": np.asarray(assignment.label, np.int64)})
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def load_predictions(path) -> tuple[str, int, dict[str, Assignment], list[str]]:
    """``predictions.npz`` back: method, K, split -> :class:`Assignment`, class names."""
    with np.load(path) as data:
        splits = [str(split) for split in data["splits"]]
        return (str(data["method"]), int(data["clusters"]),
                {split: Assignment(data[f"{split}_index"], data[f"{split}_cluster"], data[f"{split}_label"])
                 for split in splits}, [str(name) for name in data["class_names"]])


def write_skipped_fit(method: str, reason: str, class_names: Sequence[str], *, predictions, fit, model=None,
                      history=None, curve=None) -> None:
    """A fit rule's files when the data cannot be clustered (:func:`clustering_problem`): ``fit``
    (status skipped and the reason), ``predictions`` without splits, and, where their paths are given,
    an empty ``history``, and a ``curve`` and ``model`` that carry the reason."""
    save_predictions(predictions, method, 0, {}, class_names)
    write_text_atomic(fit, json.dumps({"method": method, "status": "skipped", "reason": reason}, indent=2) + "\n")
    if model is not None:
        with atomic_path(model) as tmp:
            torch.save({"status": "skipped", "reason": reason}, tmp)
    if history is not None:
        write_table(pd.DataFrame(columns=HISTORY_COLUMNS), history)
    if curve is not None:
        note_figure(f"not clustered: {reason}", curve)


def skipped_results(fit: Mapping, class_names: Sequence[str], settings: ClusterSettings,
                    figures: Sequence[str]) -> tuple[dict, dict]:
    """``results.json`` and ``pseudo_labels.json`` of a skipped fit (empty, with its reason); each of
    the ``figures`` paths gets a picture that gives the reason."""
    for path in figures:
        note_figure(f"not clustered: {fit['reason']}", path)
    document = {"method": fit["method"], "status": "skipped", "reason": fit["reason"], "metrics": {}, "warnings": [],
                "fit": dict(fit)}
    pseudo = {"method": fit["method"], "split": settings.train_split, "k": settings.representatives, "index": [],
              "cluster": [], "pseudo_label": [], "cluster_to_label": {}, "representatives": {}, "purity": {},
              "class_names": list(class_names), "reason": fit["reason"]}
    return document, pseudo


def collapse_warning(active: int, clusters: int, fraction: float) -> str | None:
    """A warning when fewer than ``fraction`` of the ``clusters`` clusters hold a fit image."""
    if active >= fraction * clusters:
        return None
    return (f"collapse: the fit images fall into {active} of {clusters} clusters (fewer than "
            f"cluster.collapse_fraction = {fraction:g} of them)")


def clean_split_name(split: str) -> str:
    """The metrics key of ``split`` without the images the dataset audit flagged."""
    return f"{split} (clean)"


def results_document(method: str, clusters: int, assignments: Mapping[str, Assignment], fit: Mapping,
                     settings: ClusterSettings, clean_index: np.ndarray | None = None) -> dict:
    """``results.json``: the metrics of each split, the fit's details (``fit.json``) and the warnings
    (the fit's own, and collapse on the fit split).

    ``clean_index``: the index_in_split values of the scored split that the dataset audit keeps
    (:func:`embedlens.audit.clean_index`); the metrics of those rows alone are added under
    :func:`clean_split_name` of the scored split."""
    metrics = {split: cluster_metrics(a.label, a.cluster, clusters) for split, a in assignments.items()}
    if clean_index is not None:
        scored = assignments[settings.test_split]
        kept = np.isin(scored.index, clean_index)
        metrics[clean_split_name(settings.test_split)] = cluster_metrics(scored.label[kept], scored.cluster[kept],
                                                                         clusters)
    warnings = list(fit.get("warnings", []))
    collapsed = collapse_warning(metrics[settings.train_split]["active_clusters"], clusters,
                                 settings.collapse_fraction)
    if collapsed:
        warnings.append(collapsed)
    return {"method": method, "clusters": clusters, "fit_split": settings.train_split,
            "score_split": settings.test_split, "metrics": metrics, "warnings": warnings,
            "fit": {key: value for key, value in fit.items() if key != "warnings"}}


def metrics_table(documents: Sequence[Mapping]) -> pd.DataFrame:
    """One row per method and split: :data:`METRIC_COLUMNS` (label metrics empty without labels)."""
    rows = [{"method": document["method"], "split": split, **values}
            for document in documents for split, values in document["metrics"].items()]
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


# --------------------------------------------------------------------------------------------------
# pictures


def sizes_figure(cluster: np.ndarray, clusters: int, path, *, title: str) -> None:
    """Bar chart of the fit images per cluster, largest first, empty clusters included."""
    sizes = np.bincount(np.asarray(cluster, dtype=np.int64), minlength=clusters)
    order = np.argsort(-sizes, kind="stable")
    bar_chart([str(c) for c in order], sizes[order], path, xlabel="cluster (largest first)", ylabel="images",
              title=title)


def project(features: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``features``: cosine UMAP (the explore page's projection) or t-SNE (cosine,
    PCA start), seeded, and the method's description."""
    if method == "umap":
        from embedlens.report.explore import project_2d

        return project_2d(features, seed)
    from sklearn.manifold import TSNE

    perplexity = float(min(TSNE_PERPLEXITY, max(1.0, (len(features) - 1) / 3)))
    coords = TSNE(metric="cosine", init="pca", perplexity=perplexity, random_state=seed).fit_transform(
        np.asarray(features, dtype=np.float32))
    return coords, f"t-SNE (cosine, perplexity {perplexity:g})"


def map_figure(features: np.ndarray, assignment: Assignment, class_names: Sequence[str], path, *,
               settings: ClusterSettings, title: str) -> str:
    """The scored split's images (at most ``map_points``, a seeded sample) in 2-D (``cluster.map``),
    coloured by cluster and, beside it, by true class. Returns the caption's description of the map."""
    if len(features) < 2:
        note_figure(f"{len(features)} image(s) in the scored split: nothing to map", path)
        return "no map: too few images"
    rows = np.arange(len(features))
    if len(rows) > settings.map_points:
        rows = np.sort(np.random.default_rng(settings.seed).choice(len(rows), settings.map_points, replace=False))
    xy, name = project(features[rows], settings.map, settings.seed)
    panels = [("by cluster", [f"cluster {c}" for c in assignment.cluster[rows].tolist()])]
    labels = assignment.label[rows]
    if (labels >= 0).any():
        panels.append(("by true class", [class_names[c] if c >= 0 else "no class" for c in labels.tolist()]))
    scatter_maps(xy, panels, path, title=f"{title} ({len(rows)} images, {name})")
    return f"{len(rows)} images, {name}"


def representatives_figure(dataset: ImageDataset, rows: pd.DataFrame, document: Mapping, path, *, clusters_shown: int,
                           title: str) -> None:
    """The representatives of the ``clusters_shown`` largest clusters of a ``pseudo_labels.json``
    document, one row per cluster (its label and purity), each image captioned with its true class:
    green when it matches the cluster's pseudo label, red when not. ``rows``: the fit split's manifest
    rows in store order (:meth:`FeatureStore.join_manifest`)."""
    position = {int(index): i for i, index in enumerate(rows["index_in_split"].tolist())}
    sizes = pd.Series(document["cluster"]).value_counts()
    names = document["class_names"]
    grid, colours = [], []
    for cluster in sizes.index[:clusters_shown].tolist():
        label = document["cluster_to_label"].get(str(cluster))
        members = [rows.iloc[position[index]] for index in document["representatives"][str(cluster)]]
        heading = f"cluster {cluster}\n{sizes[cluster]} images"
        if label is not None:
            heading += f"\n→ {names[label]}\npurity {document['purity'][str(cluster)]:.0%}"
        grid.append((heading, [dataset.read_image(row["split"], row["source"]) for row in members],
                     [str(row["class_name"]) if row["label"] >= 0 else "no class" for row in members]))
        colours.append([MATCH if label is not None and row["label"] == label else MISMATCH for row in members])
    if not grid:
        note_figure("no clusters to show", path)
        return
    image_rows(grid, path, title=title, caption_colours=colours)


def map_columns(predictions: Mapping[str, Mapping[str, Assignment]]) -> pd.DataFrame:
    """The explore map's colourings (:mod:`embedlens.report.explore`): ``split, index_in_split`` and,
    per method, each image's cluster (``<method> cluster``: "cluster 3")."""
    table = pd.DataFrame({"split": pd.Series(dtype=str), "index_in_split": pd.Series(dtype="int64")})
    for method, assignments in predictions.items():  # a skipped method has no splits: an empty column
        parts = [pd.DataFrame({"split": split, "index_in_split": a.index,
                               f"{method} cluster": [f"cluster {c}" for c in a.cluster.tolist()]})
                 for split, a in assignments.items()]
        part = (pd.concat(parts, ignore_index=True) if parts
                else pd.DataFrame(columns=["split", "index_in_split", f"{method} cluster"]).astype(
                    {"split": str, "index_in_split": "int64"}))
        table = table.merge(part, on=["split", "index_in_split"], how="outer")
    return table


# --------------------------------------------------------------------------------------------------
# the summary


def _figure(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def cluster_summary(documents: Sequence[Mapping], settings: ClusterSettings, *, dataset: str,
                    backbone: str) -> StageSummary:
    """The stage's ``summary.json`` from the ``results.json`` of each method (in ``cluster.methods``
    order). The headline figures (``acc``, ``nmi``, ``ari``, ``active_clusters`` on the scored split)
    are the first method's, TEMI by default, so the report compares one method across backbones; the
    other methods' accuracy follows as ``acc_<method>``."""
    skipped = [document for document in documents if document.get("status") == "skipped"]
    documents = [document for document in documents if document.get("status") != "skipped"]
    notes = [f"{document['method']}: not clustered: {document['reason']}" for document in skipped]
    if not documents:
        return StageSummary(stage="cluster", title="Clustering", dataset=dataset, backbone=backbone,
                            headline={"clustered": "no"}, tables=[], figures=[], notes=notes,
                            settings=settings.as_dict())
    first = documents[0]
    scored = first["metrics"][first["score_split"]]
    headline = {"method": first["method"], "clusters": first["clusters"]}
    headline.update({key: round(scored[key], 4) for key in ("acc", "nmi", "ari") if key in scored})
    headline["active_clusters"] = scored["active_clusters"]
    clean = first["metrics"].get(clean_split_name(first["score_split"]), {})
    headline.update({f"clean_{key}": round(clean[key], 4) for key in ("acc", "nmi", "ari") if key in clean})
    for document in documents[1:]:
        other = document["metrics"][document["score_split"]]
        if "acc" in other:
            headline[f"acc_{document['method']}"] = round(other["acc"], 4)
    scored_acc = {document["method"]: document["metrics"][document["score_split"]].get("acc") for document in documents}
    if all(acc is not None for acc in scored_acc.values()):
        best = max(scored_acc, key=scored_acc.get)
        headline["best_method"] = best
        if best != first["method"]:  # said first: the headline's figures are the first method's
            notes.append(f"{best} clusters this data better than {first['method']}: ACC {scored_acc[best]:.3f} "
                         f"against {scored_acc[first['method']]:.3f} on {first['score_split']!r}; the headline "
                         f"figures are {first['method']}'s, the first of cluster.methods.")
    tables = [Artifact("metrics.csv", f"Per method and split: images, labelled images, Hungarian accuracy (acc), "
                       "NMI and ARI (empty without labels), the clusters holding at least one image (active_clusters) "
                       "and the cluster sizes (min, max, mean, std and coefficient of variation std/mean). Clusters "
                       f"are fitted on {settings.train_split!r} and scored on {settings.test_split!r}.")]
    figures = []
    for document in documents:
        method, fit = document["method"], document["fit"]
        scored = document["metrics"][document["score_split"]]
        notes.append(f"{method}: ACC {_figure(scored.get('acc'))}, NMI {_figure(scored.get('nmi'))}, ARI "
                     f"{_figure(scored.get('ari'))} on {document['score_split']!r} ({scored['images']} images), "
                     f"{scored['active_clusters']} of {document['clusters']} clusters active; fitted in "
                     f"{fit['seconds']:.0f} s on {fit['device']}.")
        clean = document["metrics"].get(clean_split_name(document["score_split"]))
        if clean is not None:
            notes.append(f"{method}: ACC {_figure(clean.get('acc'))}, NMI {_figure(clean.get('nmi'))}, ARI "
                         f"{_figure(clean.get('ari'))} on {document['score_split']!r} without the images the dataset "
                         f"audit flagged ({clean['images']} of {scored['images']} images).")
        notes += [f"{method}: warning: {warning}" for warning in document["warnings"]]
        if method == "temi":
            agreement = fit.get("neighbour_agreement")
            notes.append(f"temi: {fit['heads']} heads, {fit['steps']} steps ({fit['epochs']} epochs of "
                         f"{fit['steps_per_epoch']} batches of {fit['batch_size']}); head {fit['best_head']} has the lowest loss "
                         f"({fit['final_loss']:.4f}; uniform probabilities would give {fit['uniform_loss']:.4f})."
                         + ("" if agreement is None else
                            f" {agreement:.1%} of the mined neighbour pairs ({fit['neighbours']} per image) share a "
                            "label: pairs of other classes pull clusters apart, so this bounds what TEMI can learn."))
            tables.append(Artifact("temi/history.csv", "TEMI's training per epoch: mean loss over the heads, the best "
                                   "head's loss and number, learning rate and teacher momentum."))
            figures.append(Artifact("temi/training_curve.png", "TEMI's loss per epoch (mean over heads and best "
                                    "head) against the loss of uniform probabilities: a curve that stays on that line "
                                    "has learned nothing (the uniform solution)."))
        figures += [
            Artifact(f"{method}/map.png", f"{method}: the {document['score_split']!r} images in 2-D "
                     f"({document['map']}), coloured by cluster (left) and by true class (right): clusters that match "
                     "classes share their outlines."),
            Artifact(f"{method}/sizes.png", f"{method}: images of {document['fit_split']!r} per cluster, largest "
                     "first; a flat profile is balanced, a few tall bars and many empty clusters is collapse."),
            Artifact(f"{method}/representatives.png", f"{method}: the {settings.representatives} images nearest to "
                     f"the centre of each of the {settings.grid_clusters} largest clusters, which vote the cluster's pseudo "
                     "label; a caption is green when the image's true class is that label, red when not "
                     "(pseudo_labels.json has every cluster)."),
        ]
    notes.append(f"The headline figures are {first['method']}'s on {first['score_split']!r}"
                 + (", beside the others' accuracy." if len(documents) > 1 else "."))
    return StageSummary(stage="cluster", title="Clustering", dataset=dataset, backbone=backbone, headline=headline,
                        tables=tables, figures=figures, notes=notes, settings=settings.as_dict())
