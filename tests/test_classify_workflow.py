"""The classifier stage run by snakemake on tiny data: a synthetic dataset with a random-weight timm
backbone; with and without an overlap set to classify."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from embedlens.summary import StageSummary

from conftest import run_snakemake
from test_workflow import TINY_BACKBONE

pytestmark = pytest.mark.workflow

SUMMARY = "results/shapes/tiny/classify/summary.json"


def tiny_config(**overlap) -> dict:
    return {
        "datasets": [{"name": "shapes", "kind": "synthetic", "num_classes": 4, "image_size": 32,
                      "images_per_class": {"train": 10, "test": 4}, "overlapping_pairs": 1}],
        "backbones": [TINY_BACKBONE],
        "extract": {"shards": 1, "batch_size": 16, "num_workers": 0},
        "overlap": {"export": False, **overlap},
        "classify": {"max_epochs": 30, "early_stopping_patience": 5, "folds": 3, "pair_figures": 2,
                     "samples_per_class": 2, "misclassified_samples": 2, "learning_rate": 0.01},
        "cluster": {"enabled": False},
        "audit": {"enabled": False},
    }


def snakemake_ok(workdir, *args, config):
    result = run_snakemake(workdir, *args, config=config)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result


def test_the_default_target_builds_the_classifier_stage_and_its_summary(tmp_path, check_artifacts):
    snakemake_ok(tmp_path, config=tiny_config(selection="top_n", top_n=3))
    stage = tmp_path / "results" / "shapes" / "tiny" / "classify"
    classes = json.loads((tmp_path / "results/shapes/tiny/overlap/classes.json").read_text())["classes"]
    names = [c["name"] for c in classes]
    training = json.loads((stage / "training.json").read_text())
    assert training["status"] == "trained" and training["classes"] == names
    assert 1 <= training["best_epoch"] <= training["epochs_run"] <= 30
    report = pd.read_csv(stage / "report.csv", keep_default_na=False, na_values=[""])
    assert report["class"].tolist() == names + ["accuracy", "macro avg", "weighted avg"]
    predictions = pd.read_csv(stage / "predictions.csv")
    assert len(predictions) == 4 * len(names)
    accuracy = report.loc[report["class"] == "accuracy", "f1"].item()
    assert accuracy == pytest.approx(predictions["correct"].mean(), abs=1e-6)
    counts = pd.read_csv(stage / "confusion.csv", index_col="true_class")
    assert counts.index.tolist() == names and counts.to_numpy().sum() == len(predictions)
    assert pd.read_csv(stage / "history.csv")["epoch"].tolist() == list(range(1, training["epochs_run"] + 1))
    crossval = json.loads((stage / "crossval.json").read_text())
    assert crossval["status"] == "done" and len(crossval["best_epochs"]) == 3
    cleanlab = pd.read_csv(stage / "cleanlab_pairs.csv")
    assert len(cleanlab) == len(names) * (len(names) - 1) // 2
    agreement = pd.read_csv(stage / "agreement.csv")
    assert agreement[["measure_a", "measure_b"]].values.tolist() == [
        ["centroid", "confusion"], ["centroid", "cleanlab"], ["confusion", "cleanlab"]]
    model = torch.load(stage / "model.pt", weights_only=False)
    assert model["class_names"] == names and "state_dict" in model
    pairs = pd.read_csv(stage / "pairs.csv")
    summary = StageSummary.read(stage / "summary.json")
    assert summary.stage == "classify" and summary.headline["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert summary.headline["confusion_pairs"] == len(pairs)
    check_artifacts(stage, summary)
    # The dataset draws one look-alike pair: every mistake mixes up that pair, the other classes are told apart.
    planted = set(json.loads((tmp_path / "results/shapes/dataset.json").read_text())["designed_overlapping_pairs"][0])
    mistakes = {(true, pred) for true in names for pred in names if true != pred and counts.loc[true, pred] > 0}
    assert mistakes and all({true, pred} == planted for true, pred in mistakes), counts
    others = report[report["class"].isin(set(names) - planted)]
    assert len(others) >= 1 and (others["recall"] >= 0.75).all(), report  # 1.0 measured
    pictured = [f.path for f in summary.figures if f.path.startswith("pair_figures/")]
    expected = min(2, len({frozenset(p) for p in zip(pairs["true"], pairs["pred"])}))
    assert len(pictured) == 2 * expected
    assert not (stage / "checkpoints").exists()
    logs = (tmp_path / "results" / "logs" / "classify_train" / "shapes" / "tiny.log").read_text()
    assert "epoch 1:" in logs and "test accuracy" in logs


def test_an_empty_overlap_set_gives_well_formed_outputs_that_say_why(tmp_path):
    snakemake_ok(tmp_path, SUMMARY, config=tiny_config(threshold=1.0, inclusive=False))
    stage = tmp_path / "results" / "shapes" / "tiny" / "classify"
    training = json.loads((stage / "training.json").read_text())
    assert training["status"] == "skipped" and "at least two classes" in training["reason"]
    for table in ("report.csv", "pairs.csv", "predictions.csv", "history.csv", "cleanlab_pairs.csv"):
        assert pd.read_csv(stage / table).empty, table
    summary = StageSummary.read(stage / "summary.json")
    assert summary.status == "skipped" and summary.headline == {}
    assert "at least two classes" in summary.reason and "overlap.threshold" in summary.reason
    assert (stage / "confusion.png").stat().st_size > 0
