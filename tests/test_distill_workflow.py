"""The distillation stage run by snakemake on tiny data: the distilled set, the evaluation against the
three baselines, the nearest real images and the summary; with true labels and with the clustering
stage's pseudo labels."""

from __future__ import annotations

import json

import h5py
import pandas as pd
import pytest

from embedlens.summary import StageSummary

from test_workflow import TINY_BACKBONE, planned, snakemake

pytestmark = pytest.mark.workflow

DISTILL = "results/shapes/tiny/distill"


def shapes_config(**distill) -> dict:
    return {
        "datasets": [{"name": "shapes", "kind": "synthetic", "num_classes": 4, "image_size": 32,
                      "images_per_class": {"train": 8, "test": 4}, "overlapping_pairs": 1}],
        "backbones": [TINY_BACKBONE],
        "extract": {"shards": 1, "batch_size": 16, "num_workers": 0},
        "overlap": {"export": False},
        "distill": {"enabled": True, "per_class": 2, "experts": 2, "expert_epochs": 4, "batch_size": 8,
                    "syn_batch": 8, "syn_steps": 3, "expert_epochs_to_match": 1, "max_start_epoch": 2,
                    "iterations": 6, "lr_features": 1.0, "eval_seeds": 2, "eval_epochs": 10, "full_epochs": 4, "neighbours": 3,
                    "grid_rows": 5, **distill},
    }


def test_distillation_writes_the_set_its_evaluation_pictures_and_summary(tmp_path, check_artifacts):
    config = shapes_config()
    assert planned(tmp_path, config, target=f"{DISTILL}/summary.json") == {
        "manifest": 1, "extract_shard": 1, "merge_features": 1, "distill_fit": 1, "distill_evaluate": 1,
        "distill_neighbours": 1, "distill_summary": 1}
    snakemake(tmp_path, f"{DISTILL}/summary.json", config=config)
    distill = tmp_path / DISTILL
    summary = StageSummary.read(distill / "summary.json")
    assert summary.stage == "distill" and summary.dataset == "shapes" and summary.backbone == "tiny"
    check_artifacts(distill, summary)
    with h5py.File(distill / "distilled.h5", "r") as handle:
        assert handle["features"].shape[0] == 8 and sorted(handle["labels"][:].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
        assert handle.attrs["learned_lr"] > 0 and json.loads(handle.attrs["settings"])["per_class"] == 2
        assert json.loads(handle.attrs["label_source"]) == "true labels"
    document = json.loads((distill / "distill.json").read_text())
    assert set(document["accuracy"]) == {"distilled", "random", "centroids", "full"}
    # 8 train images per class: 1 of each (distill.val_fraction 0.1) is held out to choose on, 7 are fitted
    assert document["train_images"] == 28 and document["validation_images"] == 4
    assert document["compression_ratio"] == 3.5
    evaluation = pd.read_csv(distill / "evaluation.csv")
    assert evaluation["set"].tolist() == ["distilled", "random", "centroids", "full"]
    assert evaluation["vectors"].tolist() == [8, 8, 4, 28] and (evaluation["seeds"] == 2).all()
    choices = pd.read_csv(distill / "validation.csv")
    assert choices.groupby("set").size().to_dict() == {"distilled": 1, "random": 4, "centroids": 4, "full": 3}
    chosen = choices[choices["chosen"]].set_index("set")
    assert chosen["learning_rate"].to_dict() == pytest.approx(evaluation.set_index("set")["learning_rate"].to_dict())
    for name in ("random", "centroids", "full"):
        assert chosen.loc[name, "validation_accuracy"] == choices[choices["set"] == name]["validation_accuracy"].max()
    assert "chosen on a validation part of 4 train images" in " ".join(summary.notes)
    assert (evaluation["accuracy_mean"] > 0.45).all(), evaluation  # four drawn classes: 0.81 measured
    assert summary.headline["accuracy"] == pytest.approx(evaluation.loc[0, "accuracy_mean"], abs=1e-4)
    assert summary.headline["beats_random"] == document["beats_random"]
    neighbours = pd.read_csv(distill / "neighbours.csv")
    assert len(neighbours) == 8 * 3 and set(neighbours["split"]) == {"train"}
    assert not (distill / "checkpoints").exists()  # removed once the set is written
    assert (tmp_path / "results/logs/distill_fit/shapes/tiny.log").read_text().count("iteration 6: matching loss") == 1


def test_pseudo_labels_of_the_clustering_stage_are_distilled_and_tested_against_the_true_labels(tmp_path):
    config = shapes_config(labels="pseudo", cluster_method="kmeans")
    config["cluster"] = {"methods": ["kmeans"], "representatives": 3, "grid_clusters": 3, "map_points": 30,
                         "map": "tsne"}
    snakemake(tmp_path, f"{DISTILL}/summary.json", config=config)
    pseudo = json.loads((tmp_path / "results/shapes/tiny/cluster/kmeans/pseudo_labels.json").read_text())
    labelled = sorted({label for label in pseudo["pseudo_label"] if label >= 0})
    with h5py.File(tmp_path / DISTILL / "distilled.h5", "r") as handle:
        assert sorted(set(handle["labels"][:].tolist())) == labelled  # the classes the clusters voted for
        assert "pseudo labels of clustering method kmeans" in json.loads(handle.attrs["label_source"])
    document = json.loads((tmp_path / DISTILL / "distill.json").read_text())
    assert document["label_source"].startswith("pseudo labels") and document["classes"] == len(labelled)
    assert document["train_images"] + document["validation_images"] == sum(label >= 0 for label in pseudo["pseudo_label"])
    assert "Labels: pseudo labels of clustering method kmeans" in " ".join(
        StageSummary.read(tmp_path / DISTILL / "summary.json").notes)


def test_pseudo_labels_of_a_method_the_clustering_does_not_run_stop_before_any_job(tmp_path):
    config = shapes_config(labels="pseudo", cluster_method="temi")
    config["cluster"] = {"methods": ["kmeans"]}
    result = snakemake(tmp_path, "-n", f"{DISTILL}/summary.json", config=config, check=False)
    assert result.returncode != 0
    assert "distill.cluster_method: temi is not among cluster.methods (kmeans)" in result.stdout + result.stderr


def test_a_bad_setting_stops_before_any_job(tmp_path):
    result = snakemake(tmp_path, "-n", f"{DISTILL}/summary.json", config=shapes_config(classifier="forest"),
                       check=False)
    assert result.returncode != 0 and "distill" in result.stdout + result.stderr
    assert "forest" in result.stdout + result.stderr
