"""A hand-made results tree with what the stages write for the report: dataset files, stage summaries
(features as the features stage's contract describes it, overlap from the real overlap code), subsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedlens.overlap import (compute_overlap, overlap_summary, write_pairs_csv,
                               write_similarity_csv)
from embedlens.plots import similarity_heatmap
from embedlens.report.page import DatasetFiles, PairFiles
from embedlens.store import FeatureStore, SplitFeatures, write_store
from embedlens.summary import Artifact, StageSummary

from conftest import overlap_settings

CLASSES = ["cat", "lynx", "truck", "car"]


def features_summary(dataset: str, backbone: str, folder: Path, images_per_second: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "skipped.csv").write_text("split,index_in_split,source,reason\ntrain,3,3,decoder said no\n")
    StageSummary(
        stage="features", title="Feature extraction", dataset=dataset, backbone=backbone,
        headline={"images": 15, "skipped": 1, "dim": 8, "device": "cpu", "precision": "float32", "preprocess": "pil",
                  "seconds": 2.5, "images_per_second": images_per_second},
        tables=[Artifact("skipped.csv", "Images that failed to decode at extraction.")],
        settings={"model": "resnet10t", "crop": 32}).write(folder / "summary.json")
    return folder / "summary.json"


def overlap_files(dataset: str, backbone: str, folder: Path, threshold: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = np.array([[1.0, 0.1, 0], [1.0, 0, 0.1], [0, 1.0, 0.3], [0.1, 1.0, 0.35]])
    labels = np.repeat(np.arange(4), 4)
    features = (base[labels] + 0.01 * rng.normal(size=(16, 3))).astype(np.float32)
    write_store(folder / "features.h5", {"train": SplitFeatures(features, labels, np.arange(16))},
                {"dataset": dataset, "class_names": CLASSES})
    result = compute_overlap(FeatureStore(folder / "features.h5"), overlap_settings(threshold=threshold))
    write_pairs_csv(result.pairs, folder / "pairs.csv")
    write_similarity_csv(result.similarity, result.centroids.names, folder / "similarity.csv")
    similarity_heatmap(result.similarity, result.centroids.names, folder / "similarity.png")
    overlap_summary(result, dataset=dataset, backbone=backbone).write(folder / "summary.json")
    return folder / "summary.json"


def results_tree(root: Path) -> tuple[list[DatasetFiles], list[PairFiles]]:
    """Dataset ``toy`` (2 skipped files) x backbones ``small`` (with a subset, an explore page and a
    classifier summary, standing in for a stage built later) and ``large`` (no subset)."""
    data = root / "toy"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({
        "name": "toy", "kind": "folder", "class_names": CLASSES, "images": {"train": 12, "test": 4}, "skipped": 2,
        "designed_overlapping_pairs": [["cat", "lynx"]]}))
    (data / "skipped.csv").write_text("split,source,reason\ntrain,cat/a.png,empty file\n"
                                      "train,car/b.jpg,truncated JPEG\n")
    pairs = []
    for backbone, speed, threshold in (("small", 123.4, 0.99), ("large", 45.6, 0.999)):
        folder = data / backbone
        summaries = [features_summary("toy", backbone, folder / "features", speed),
                     overlap_files("toy", backbone, folder / "overlap", threshold)]
        pairs.append(PairFiles("toy", backbone, summaries))
    small = pairs[0]
    (data / "small" / "subset.json").write_text(json.dumps({
        "images": {"train": 6, "test": 2}, "num_classes": 2, "skipped": 0,
        "images_per_class": {"train": {"toy_cat": 3, "toy_lynx": 3}, "test": {"toy_cat": 1, "toy_lynx": 1}}}))
    small.subset = data / "small" / "subset.json"
    small.explore = data / "small" / "explore.html"
    small.explore.write_text("<!DOCTYPE html><title>map</title>")
    classify = data / "small" / "classify"
    classify.mkdir()
    StageSummary(stage="classify", title="Classifier", dataset="toy", backbone="small",
                 headline={"accuracy": 0.7835, "pairs_flagged": {"centroid": 3, "confusion": 0},
                           "spearman_union": {"centroid~confusion": -0.5, "confusion~cleanlab": None},
                           "search_seconds": {"cross": 0.25213}, "best_epochs": [12, 30]}, notes=["evaluated at the best epoch"]).write(classify / "summary.json")
    small.summaries.append(classify / "summary.json")
    distill = data / "small" / "distill"
    distill.mkdir()
    StageSummary.skipped("distill", "distill needs at least two classes with two or more images in "
                         "distill.train_split ('train'); dataset 'toy' has 1", dataset="toy", backbone="small",
                         settings={"per_class": 10}).write(distill / "summary.json")
    small.summaries.insert(len(small.summaries) - 1, distill / "summary.json")
    return [DatasetFiles(data / "dataset.json", data / "skipped.csv")], pairs
