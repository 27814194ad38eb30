"""The clustering stage run by snakemake on tiny data: both methods' files, pseudo labels and summary; data
without labels; and data that cannot be clustered, which leave empty files with the reason while the
report and the explore map still build."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedlens.summary import StageSummary

from conftest import pixels, save
from test_workflow import TINY_BACKBONE, snakemake

pytestmark = pytest.mark.workflow

CLUSTER = "results/shapes/tiny/cluster"
PSEUDO_KEYS = {"method", "split", "index", "cluster", "pseudo_label", "cluster_to_label", "representatives", "purity",
               "k"}


def shapes_config(**cluster) -> dict:
    return {
        "datasets": [{"name": "shapes", "kind": "synthetic", "num_classes": 4, "image_size": 32,
                      "images_per_class": {"train": 10, "test": 4}, "overlapping_pairs": 1}],
        "backbones": [TINY_BACKBONE],
        "extract": {"shards": 1, "batch_size": 16, "num_workers": 0},
        "overlap": {"export": False},
        "classify": {"enabled": False},
        "novelty": {"enabled": False},
        "cluster": {"representatives": 3, "grid_clusters": 3, "map_points": 30, "map": "tsne",
                    # six steps from a cold start leave TEMI in one cluster on 40 images: start it from k-means
                    "temi": {"neighbours": 3, "heads": 2, "steps": 6, "batch_size": 16, "hidden_dim": 32,
                             "bottleneck_dim": 16, "checkpoint_every": 1, "warm_start": "kmeans"}, **cluster},
    }


def test_temi_and_kmeans_write_their_results_pseudo_labels_and_the_stage_summary(tmp_path, check_artifacts):
    # the most likely label errors leave the audit's clean split too, up to a quarter of it
    snakemake(tmp_path, f"{CLUSTER}/summary.json", config={**shapes_config(), "audit": {"label_issue_fraction": 0.25}})
    stage = tmp_path / CLUSTER
    summary = StageSummary.read(stage / "summary.json")
    assert summary.stage == "cluster" and (summary.dataset, summary.backbone) == ("shapes", "tiny")
    check_artifacts(stage, summary)
    metrics = pd.read_csv(stage / "metrics.csv")
    # the dataset audit is on by default: the test figures come on its clean split too
    audit = tmp_path / "results/shapes/tiny/audit"
    clean = pd.read_csv(audit / "clean_test_index.csv", keep_default_na=False)
    kept = int(clean["kept"].sum())
    test_issues = (pd.read_csv(audit / "label_issues.csv")["split"] == "test").sum()
    assert 16 - kept == min(4, test_issues)  # no copies among independent drawings; a quarter of 16 at most
    assert clean.loc[~clean["kept"], "reason"].str.startswith("label issue").all()
    assert metrics[["method", "split"]].values.tolist() == [
        ["temi", "train"], ["temi", "test"], ["temi", "test (clean)"],
        ["kmeans", "train"], ["kmeans", "test"], ["kmeans", "test (clean)"]]
    assert (metrics["images"] == [40, 16, kept, 40, 16, kept]).all()
    # the four drawn classes are found: 0.75-0.9 measured, chance (one cluster) is 0.25
    assert (metrics.loc[metrics["split"] != "test (clean)", "acc"] >= 0.6).all(), metrics
    assert {"clean_acc", "clean_nmi", "clean_ari"} <= set(summary.headline)
    for method in ("temi", "kmeans"):
        results = json.loads((stage / method / "results.json").read_text())
        assert results["clusters"] == 4 and set(results["metrics"]) == {"train", "test", "test (clean)"}
        test = results["metrics"]["test"]
        assert {"acc", "nmi", "ari", "active_clusters", "size_min", "size_max", "size_mean", "size_std",
                "size_cv"} <= set(test)
        with np.load(stage / method / "predictions.npz") as predictions:
            assert len(predictions["test_cluster"]) == 16 and set(predictions["test_label"]) == {0, 1, 2, 3}
        pseudo = json.loads((stage / method / "pseudo_labels.json").read_text())
        assert PSEUDO_KEYS <= set(pseudo) and pseudo["method"] == method and pseudo["split"] == "train"
        assert len(pseudo["index"]) == len(pseudo["cluster"]) == len(pseudo["pseudo_label"]) == 40
        assert all(len(chosen) <= 3 for chosen in pseudo["representatives"].values())
        assert all(pseudo["pseudo_label"][i] == pseudo["cluster_to_label"][str(c)]
                   for i, c in enumerate(pseudo["cluster"]))
    headline = summary.headline
    temi = json.loads((stage / "temi/results.json").read_text())
    assert headline["method"] == "temi" and headline["acc"] == pytest.approx(temi["metrics"]["test"]["acc"], abs=1e-4)
    assert {"nmi", "ari", "acc_kmeans"} <= set(headline)
    fit = temi["fit"]
    assert (fit["heads"], fit["steps"], fit["epochs"], fit["steps_per_epoch"]) == (2, 6, 3, 2)  # 40 images, batches of 16
    assert fit["neighbours"] == 1  # 3 lowered to 10% of 10-image classes
    assert fit["neighbour_agreement"] >= 0.6  # a nearest neighbour mostly shares the class (0.7 measured; chance 0.25)
    assert pd.read_csv(stage / "temi/history.csv")["epoch"].tolist() == [1, 2, 3]
    assert not (stage / "temi/checkpoints").exists()  # removed once the results are written
    columns = pd.read_csv(stage / "map_columns.csv")
    assert len(columns) == 56 and {"temi cluster", "kmeans cluster"} <= set(columns.columns)
    assert columns["temi cluster"].str.fullmatch(r"cluster \d").all()


def test_only_the_configured_methods_run_and_without_labels_nothing_is_faked(tmp_path):
    root = tmp_path / "unlabelled"
    for split, count in (("train", 12), ("test", 4)):
        for i in range(count):
            save(root / split / f"{split}_{i}.png", Image.fromarray(pixels(32, 32)))
    config = shapes_config(methods=["kmeans"], clusters=2)
    config["datasets"] = [{"name": "shapes", "kind": "folder", "root": str(root), "splits": ["train", "test"]}]
    snakemake(tmp_path, f"{CLUSTER}/summary.json", config=config)
    stage = tmp_path / CLUSTER
    assert not (stage / "temi").exists()
    results = json.loads((stage / "kmeans/results.json").read_text())
    assert results["metrics"]["test"]["images"] == 4 and "acc" not in results["metrics"]["test"]
    assert "nmi" not in results["metrics"]["train"] and results["metrics"]["train"]["active_clusters"] == 2
    pseudo = json.loads((stage / "kmeans/pseudo_labels.json").read_text())
    assert pseudo["cluster_to_label"] == {} and set(pseudo["pseudo_label"]) == {-1}
    summary = StageSummary.read(stage / "summary.json")
    assert summary.headline["method"] == "kmeans" and summary.headline["clusters"] == 2
    assert "acc" not in summary.headline and pd.read_csv(stage / "metrics.csv")["acc"].isna().all()


def test_data_that_cannot_be_clustered_leave_empty_files_with_the_reason_and_the_report_still_builds(tmp_path):
    result = snakemake(tmp_path, config=shapes_config(test_split="val"))
    stage = tmp_path / CLUSTER
    reason = "cluster.test_split names split 'val', which dataset 'shapes' does not have (splits with images: "
    assert f"  skipped   cluster for shapes: {reason}" in result.stderr  # in the plan: the counts are known
    assert not (stage / "temi").exists() and not (stage / "kmeans").exists()  # decided before any of its jobs
    summary = StageSummary.read(stage / "summary.json")
    assert summary.status == "skipped" and summary.reason.startswith(reason)
    report = (tmp_path / "results/report.html").read_text()
    assert "Clustering: skipped for this dataset: cluster.test_split names split" in report
    assert "temi cluster" not in (tmp_path / "results/shapes/tiny/explore.html").read_text()
