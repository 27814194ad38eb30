"""The plan a run prints first: effective datasets, backbones, stages, targets, and inherited keys."""

from __future__ import annotations

import json

import pytest
import yaml

from embedlens.config import validate_config
from embedlens.plan import inherited_keys, known_info, plan_text, read_info

from conftest import REPO

DEFAULT = {"datasets": [{"name": "cifar100", "kind": "cifar100"}],
           "backbones": [{"name": "dino_vits16", "kind": "timm", "model": "vit_small_patch16_224.dino"}],
           "extract": {"shards": 4, "batch_size": 64, "amp": True}}


def test_inherited_keys_follow_snakemakes_merge():
    mine = {"datasets": [{"name": "pets", "kind": "folder", "root": "pictures"}], "extract": {"shards": 2}}
    assert inherited_keys(DEFAULT, mine) == ["backbones", "extract.batch_size", "extract.amp"]
    # a list is replaced whole, never merged entry by entry
    assert inherited_keys(DEFAULT, {**DEFAULT, "datasets": []}) == []


def test_known_counts_from_an_earlier_scan_or_from_synthetic_settings(tmp_path):
    synthetic = validate_config({"datasets": [{"name": "shapes", "kind": "synthetic", "num_classes": 4}],
                                 "backbones": DEFAULT["backbones"]})["datasets"][0]
    known = known_info(synthetic, tmp_path)
    assert known["images"] == {"train": 160, "test": 40}
    assert list(known["class_counts"]["test"].values()) == [10, 10, 10, 10]
    pets = {"name": "pets", "kind": "folder", "root": "pictures"}
    assert known_info(pets, tmp_path) is None
    (tmp_path / "pets").mkdir()
    info = {"images": {"train": 3}, "class_counts": {"train": {"cat": 2, "dog": 1}}}
    (tmp_path / "pets" / "dataset.json").write_text(json.dumps(info))
    assert known_info(pets, tmp_path) == info


def test_class_counts_of_an_older_scan_come_from_its_manifest(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"images": {"train": 3, "test": 1}}))
    (tmp_path / "manifest.csv").write_text("index_in_split,split,label,class_name,source\n0,train,0,cat,a\n"
                                           "1,train,0,cat,b\n2,train,1,dog,c\n0,test,-1,,d\n")
    info = read_info(tmp_path / "dataset.json", tmp_path / "manifest.csv")
    assert info["class_counts"] == {"train": {"cat": 2, "dog": 1}, "test": {}}
    (tmp_path / "dataset.json").unlink()  # a manifest made by hand, without its dataset.json
    assert read_info(tmp_path / "dataset.json", tmp_path / "manifest.csv")["images"] == {"train": 3, "test": 1}


def test_the_plan_names_what_runs_and_where_each_inherited_key_came_from(tmp_path):
    config = validate_config({"results": str(tmp_path),
                              "datasets": [{"name": "pets", "kind": "folder", "root": "pictures"},
                                           {"name": "shapes", "kind": "synthetic", "num_classes": 3}],
                              "backbones": DEFAULT["backbones"]})
    text = plan_text(config, stages=["features", "overlap", "report"], targets=["results/report.html"],
                     inherited=["backbones", "extract.amp"], default_file="config.yaml", user_files=["my.yaml"])
    assert text.splitlines() == [
        "embedlens plan (config: my.yaml over config.yaml)",
        "  dataset   pets (folder pictures): images counted by the manifest job",
        "  dataset   shapes (synthetic): 150 images (train 120, test 30)",
        "  backbone  dino_vits16 (timm vit_small_patch16_224.dino, hub weights)",
        "  stages    features, overlap, report",
        "  targets   results/report.html",
        "  from config.yaml, not from my.yaml: backbones, extract.amp",
        "  (to run without config.yaml: make run CONFIG=my.yaml, or snakemake --configfile my.yaml "
        "--replace-workflow-config)",
    ]
    alone = plan_text(config, stages=["features"], targets=["results/pets/manifest.csv"], inherited=[],
                      default_file="config.yaml", user_files=["my.yaml"])
    assert alone.splitlines()[0] == "embedlens plan (config: my.yaml)" and "from config.yaml" not in alone


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_example_configs_are_complete(path):
    """Merged over config.yaml, an example takes nothing from it: it runs the same on its own."""
    default = yaml.safe_load((REPO / "config.yaml").read_text())
    assert inherited_keys(default, yaml.safe_load(path.read_text())) == []
