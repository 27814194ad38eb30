"""The novelty stage run by snakemake on tiny data: the fit's files and summary, new images of another
dataset scored later without refitting, and bad input stopping with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from embedlens.novelty.model import NoveltyModel
from embedlens.summary import StageSummary

from conftest import pixels, save
from test_workflow import LITE0, TINY_BACKBONE, planned, snakemake

pytestmark = pytest.mark.workflow

NOVELTY = "results/shapes/tiny/novelty"


def shapes_config(**novelty) -> dict:
    return {
        "datasets": [{"name": "shapes", "kind": "synthetic", "num_classes": 6, "image_size": 32,
                      "images_per_class": {"train": 10, "test": 4}, "overlapping_pairs": 1}],
        "backbones": [TINY_BACKBONE],
        "extract": {"shards": 1, "batch_size": 16, "num_workers": 0},
        "overlap": {"export": False},
        "novelty": {"k_max": 8, "quality": {"draws": 2}, **novelty},
        "cluster": {"enabled": False},
        "audit": {"enabled": False},
    }


def test_novelty_fits_scores_and_later_scores_new_images_without_refitting(tmp_path, check_artifacts):
    config = shapes_config()
    snakemake(tmp_path, config=config)  # the default target (the report) builds the novelty stage
    novelty = tmp_path / NOVELTY
    summary = StageSummary.read(novelty / "summary.json")
    assert summary.stage == "novelty" and summary.dataset == "shapes" and summary.backbone == "tiny"
    check_artifacts(novelty, summary)
    fit = json.loads((novelty / "fit.json").read_text())
    assert fit["fit_images"] + fit["held_out_images"] == 6 * 14 and fit["held_out_images"] == 17
    assert summary.headline["k"] == fit["k"] and 2 <= fit["k"] <= 8
    scores = pd.read_csv(novelty / "scores.csv")
    assert len(scores) == 17 and scores["knn_distance"].is_monotonic_decreasing
    assert scores["class_name"].notna().all() and set(scores["split"]) <= {"train", "test"}
    assert (scores["novel"] == (scores["novelty_score"] > 2.0)).all()
    elbow = pd.read_csv(novelty / "elbow.csv")
    assert elbow["k"].tolist() == list(range(2, 9))
    quality = pd.read_csv(novelty / "quality.csv")
    assert set(quality["score"]) == {"knn_distance", "novelty_score", "surprise_score"}
    assert (quality["draws"] == 2).all()
    # images of a held-out drawn class lie farther from the rest than seen ones: 0.87 measured, chance 0.5
    assert quality.set_index("score").loc["knn_distance", "auroc_mean"] > 0.75, quality
    assert summary.headline["auroc"] == pytest.approx(quality.set_index("score").loc["knn_distance", "auroc_mean"],
                                                      abs=1e-4)
    draws = pd.read_csv(novelty / "quality_draws.csv")  # k chosen in each draw on its seen classes alone
    assert draws.groupby("draw")["k"].nunique().eq(1).all() and draws["k"].between(2, 8).all()
    assert json.loads((novelty / "quality.json").read_text())["k_per_draw"] == draws.groupby("draw")["k"].first().tolist()
    colourings = pd.read_csv(novelty / "map_columns.csv")
    assert len(colourings) == 84 and colourings["novelty kNN distance"].notna().sum() == 17
    assert colourings["novelty cluster"].str.fullmatch(r"cluster \d").all()
    assert "novelty kNN distance" in (tmp_path / "results/shapes/tiny/explore.html").read_text()
    model = NoveltyModel.load(novelty / "model.h5")
    assert model.k == fit["k"] and len(model.reference) == fit["fit_images"]
    assert not (novelty / "checkpoints").exists()  # the quality draws' markers go once the tables are written

    # Tomorrow's images: a folder with a broken file, scored against the saved model.
    root = tmp_path / "tomorrow"
    for i in range(4):
        save(root / f"new_{i}.png", Image.fromarray(pixels(40, 40)))
    (root / "broken.png").write_bytes(b"not an image")
    later = shapes_config(score_datasets=["tomorrow"])
    later["datasets"].append({"name": "tomorrow", "kind": "folder", "root": str(root)})
    plan = planned(tmp_path, later, target=f"{NOVELTY}/summary.json")
    assert "novelty_fit" not in plan and "novelty_quality" not in plan  # no refit
    assert plan == {"manifest": 1, "extract_shard": 1, "merge_features": 1, "novelty_score": 1,
                    "novelty_summary": 1}  # only the new images are embedded
    snakemake(tmp_path, config=later)
    assert not (tmp_path / "results/tomorrow/tiny/novelty").exists()  # a scored dataset gets no fit
    scored = pd.read_csv(novelty / "score/tomorrow/scores.csv")
    assert sorted(Path(path).name for path in scored["path"]) == [f"new_{i}.png" for i in range(4)]
    assert all(Path(path).is_file() for path in scored["path"])
    assert (scored["label"] == -1).all()
    # random pixels are far from the synthetic shapes the model knows
    assert scored["knn_distance"].min() > scores["knn_distance"].median()
    summary = StageSummary.read(novelty / "summary.json")
    assert "score/tomorrow/novel.png" in [figure.path for figure in summary.figures]
    assert any("tomorrow: 4 images scored" in note and "1 could not be read" in note for note in summary.notes)
    assert (root / "broken.png").read_bytes() == b"not an image"  # inputs untouched
    report = (tmp_path / "results/report.html").read_text()
    assert "Novelty and surprise" in report and "its scores are in their novelty sections" in report


def test_a_fixed_k_above_the_number_of_images_stops_with_a_clear_message(tmp_path):
    config = shapes_config(k=40)
    config["datasets"][0]["images_per_class"] = {"train": 3, "test": 1}  # 24 images, 19 to fit
    result = snakemake(tmp_path, "-n", f"{NOVELTY}/summary.json", config=config, check=False)
    assert result.returncode != 0  # the dry run already: the synthetic dataset's counts are known
    assert ("novelty.k is 40, but dataset 'shapes' gives k-means only 19 images to fit (novelty.fit_fraction of its "
            "images); set novelty.k below 19") in result.stdout + result.stderr


def test_score_datasets_must_name_datasets_of_the_config(tmp_path):
    result = snakemake(tmp_path, "-n", config=shapes_config(score_datasets=["tomorow"]), check=False)
    assert result.returncode != 0
    assert "novelty.score_datasets: tomorow not among the datasets of the config; configured: shapes" in (
        result.stdout + result.stderr)


@pytest.mark.realdata
def test_images_of_an_unseen_cifar100_class_score_higher_than_held_out_seen_ones(tmp_path, cifar100_root):
    cifar = {"kind": "cifar100", "root": str(cifar100_root), "download": False}
    config = {
        "datasets": [{"name": "cifar100", **cifar, "classes": ["apple", "bicycle", "cloud", "dolphin", "keyboard"],
                      "max_per_class": 12},
                     {"name": "tigers", **cifar, "classes": ["tiger"], "splits": ["test"], "max_per_class": 10}],
        "backbones": [LITE0],
        "extract": {"shards": 1, "batch_size": 32, "num_workers": 0},
        "overlap": {"export": False},
        "novelty": {"score_datasets": ["tigers"], "knn_k": 5, "quality": {"draws": 2}},
    }
    snakemake(tmp_path, "results/cifar100/lite0/novelty/summary.json", config=config)
    novelty = tmp_path / "results/cifar100/lite0/novelty"
    seen = pd.read_csv(novelty / "scores.csv")
    tigers = pd.read_csv(novelty / "score/tigers/scores.csv")
    assert len(seen) == 24 and len(tigers) == 10 and (tigers["class_name"] == "tiger").all()
    is_unseen = np.r_[np.zeros(len(seen)), np.ones(len(tigers))]
    auroc = roc_auc_score(is_unseen, pd.concat([seen["knn_distance"], tigers["knn_distance"]]))
    assert auroc > 0.8, auroc
