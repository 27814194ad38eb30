"""Every dataset shape a user brings, in one config and one run: a folder without splits (one of its
classes has a single image) beside a folder with train/val (ImageNet's layout; the train/test layout of
CIFAR-100 is every other workflow test's). The default target builds; every stage runs or says in its
summary why it was skipped; no job ends in a traceback; reordering the config's keys reruns nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from embedlens.summary import StageSummary

from test_workflow import TINY_BACKBONE, planned, snakemake

pytestmark = pytest.mark.workflow

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
STAGES = ("features", "overlap", "classify", "cluster", "novelty", "audit", "distill")
SPLITS = {"nosplit": [None], "trainval": ["train", "val"]}


def draw(path: Path, colour, rng) -> None:
    pixels = np.clip(np.array(colour, dtype=float) + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def folders(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name, splits in SPLITS.items():
        for split in splits:
            per_class = 10 if split in (None, "train") else 4
            for cls, colour in COLOURS.items():
                for i in range(per_class):
                    draw(root / name / (split or "") / cls / f"{i}.png", colour, rng)
    draw(root / "nosplit" / "lonely" / "0.png", (200, 200, 30), rng)  # a class with one image


def shapes_config(root: Path) -> dict:
    return {
        "datasets": [{"name": "nosplit", "kind": "folder", "root": str(root / "nosplit")},
                     {"name": "trainval", "kind": "folder", "root": str(root / "trainval"), "splits": ["train", "val"]}],
        "backbones": [TINY_BACKBONE],
        "extract": {"shards": 1, "batch_size": 32, "num_workers": 0},
        "overlap": {"selection": "top_n", "top_n": 2},
        "classify": {"max_epochs": 3, "folds": 2, "pair_figures": 1, "samples_per_class": 2, "misclassified_samples": 2},
        "cluster": {"temi": {"steps": 4, "heads": 2, "batch_size": 16}, "map": "tsne",
                    "map_points": 30, "representatives": 3, "grid_clusters": 3},
        "novelty": {"quality": {"draws": 1}},
        "audit": {"folds": 2, "probe_min_steps": 50},
        "distill": {"enabled": True, "per_class": 1, "experts": 1, "expert_epochs": 3, "batch_size": 8,
                    "syn_batch": 8, "syn_steps": 2, "expert_epochs_to_match": 1, "max_start_epoch": 1,
                    "iterations": 3, "eval_seeds": 1, "eval_epochs": 3, "full_epochs": 2, "neighbours": 2,
                    "grid_rows": 3},
        "report": {"map_points": 50},
    }


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("shapes")
    folders(workdir / "data")
    config = shapes_config(workdir / "data")
    result = snakemake(workdir, config=config, check=False)
    return workdir, config, result


def summary(workdir: Path, dataset: str, stage: str) -> StageSummary:
    return StageSummary.read(workdir / "results" / dataset / "tiny" / stage / "summary.json")


def test_every_shape_builds_the_report_and_no_job_ends_in_a_traceback(shapes_run):
    workdir, _, result = shapes_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert (workdir / "results" / "report.html").is_file()
    logs = list((workdir / "results" / "logs").rglob("*.log"))
    assert logs and not [path for path in logs if "Traceback" in path.read_text()]
    for dataset in SPLITS:
        for stage in STAGES:
            found = summary(workdir, dataset, stage)
            assert found.status in ("ok", "skipped") and (found.status == "ok") == (found.reason is None)


def test_each_stage_uses_the_datasets_own_split_roles(shapes_run):
    workdir, _, _ = shapes_run
    assert summary(workdir, "trainval", "audit").settings["query_split"] == "val"
    assert summary(workdir, "trainval", "cluster").settings["test_split"] == "val"
    assert summary(workdir, "trainval", "classify").settings["test_split"] == "val"
    clustered = json.loads((workdir / "results/trainval/tiny/cluster/kmeans/results.json").read_text())
    assert set(clustered["metrics"]) == {"train", "val", "val (clean)"}  # the audit audits val: a clean val too
    assert summary(workdir, "trainval", "overlap").settings["splits"] == ["train"]
    plan = shapes_run[2].stderr
    assert "  skipped   decided for nosplit once its manifest is built" in plan
    assert "embedlens: classify skipped for dataset nosplit" not in plan  # found by its job, before training


def test_a_folder_without_splits_holds_out_part_of_it_and_audits_it_alone(shapes_run):
    workdir, _, _ = shapes_run
    distill = summary(workdir, "nosplit", "distill")
    assert distill.status == "ok"
    assert any("stratified hold-out of 0.2 of split 'train' (6 images; 25 left to fit)" in note for note in distill.notes)
    audit = summary(workdir, "nosplit", "audit")
    assert audit.status == "ok" and "no leakage between splits" in audit.notes[0]
    assert audit.headline["query_images"] == 31 and set(audit.headline["search_seconds"]) == {"within"}
    clustered = json.loads((workdir / "results/nosplit/tiny/cluster/kmeans/results.json").read_text())
    assert set(clustered["metrics"]) == {"train", "train (clean)"}  # scored on the fit split: it sees no labels
    classify = summary(workdir, "nosplit", "classify")  # the one-image class cannot be split for validation
    assert classify.status == "skipped" and "lonely (1)" in classify.reason
    html = (workdir / "results" / "report.html").read_text()
    assert "Classifier: skipped for this dataset: " in html


def test_reordering_the_configs_keys_reruns_nothing(shapes_run):
    workdir, config, _ = shapes_run
    reordered = {key: config[key] for key in reversed(list(config))}
    reordered["datasets"] = [{key: entry[key] for key in reversed(list(entry))} for entry in config["datasets"]]
    reordered["distill"] = {key: config["distill"][key] for key in reversed(list(config["distill"]))}
    assert planned(workdir, reordered, target="results/report.html") == {}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))  # as the run left it


def test_another_shard_count_re_embeds_the_images_as_the_readme_says(shapes_run):
    workdir, config, _ = shapes_run
    counts = planned(workdir, {**config, "extract": {**config["extract"], "shards": 2}}, target="results/report.html")
    assert counts["extract_shard"] == 2 * len(SPLITS) and counts["merge_features"] == len(SPLITS)


def test_a_stage_setting_under_one_dataset_reruns_that_datasets_stage_only(shapes_run):
    workdir, config, _ = shapes_run
    changed = {**config, "datasets": [dict(entry) for entry in config["datasets"]]}
    changed["datasets"][1]["audit"] = {"neighbours": 3}
    assert planned(workdir, changed, target="results/report.html") == {
        "audit_duplicates": 1, "audit_labels": 1, "audit_clean": 1, "classify_report": 1, "cluster_results": 2,
        "classify_pair_figures": 1, "classify_summary": 1, "cluster_summary": 1, "explore": 1, "report": 1}
