"""The configuration is checked against the schema, with defaults filled in and errors that name keys."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import yaml

from embedlens.config import SCHEMA_PATH, ConfigError, entry, load_config, validate_config

from conftest import REPO

MINIMAL = {
    "datasets": [{"name": "cifar", "kind": "cifar100"}],
    "backbones": [{"name": "dino", "kind": "timm", "model": "vit_small_patch16_224.dino"}],
}


def test_default_config_is_valid_and_names_dino_on_cifar100():
    config = load_config(REPO / "config.yaml")
    assert config["datasets"][0]["kind"] == "cifar100"
    assert config["backbones"][0]["model"] == "vit_small_patch16_224.dino"
    assert config["extract"]["shards"] >= 1


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    load_config(path)


def test_defaults_are_filled_per_kind():
    config = validate_config(copy.deepcopy(MINIMAL))
    assert config["results"] == "results"
    assert config["extract"] == {"shards": 4, "batch_size": 64, "num_workers": 2, "device": "auto",
                                 "amp": False, "preprocess": "device", "compile": False}
    assert config["datasets"][0]["root"] == "resources/cifar100"
    assert config["datasets"][0]["download"] is True
    # keys of other kinds are not filled in
    assert "num_classes" not in config["datasets"][0]
    synthetic = validate_config({**copy.deepcopy(MINIMAL),
                                 "datasets": [{"name": "s", "kind": "synthetic"}]})["datasets"][0]
    assert synthetic["num_classes"] == 10 and synthetic["overlapping_pairs"] == 2


@pytest.mark.parametrize("change, expected", [
    (lambda c: c["datasets"][0].update(kind="cifar10"),
     "datasets[0].kind: 'cifar10' is not allowed; allowed values: cifar100, folder"),
    (lambda c: c["datasets"][0].update(colour="red"), "datasets[0]: unknown key(s) 'colour'"),
    (lambda c: c.update(extract={"shards": 0}), "extract.shards: 0 is less than the minimum of 1"),
    (lambda c: c.update(extract={"shard": 2}), "extract: unknown key(s) 'shard'; allowed keys: amp"),
    (lambda c: c["backbones"][0].pop("model"), "backbones[0]: 'model' is a required property"),
    (lambda c: c["backbones"][0].update(preprocessing={"interpolation": "lanczos"}),
     "backbones[0].preprocessing.interpolation: 'lanczos' is not allowed; allowed values: bilinear"),
    (lambda c: c["datasets"].append({"name": "cifar", "kind": "folder", "root": "x"}),
     "datasets: names must be unique; repeated: cifar"),
    (lambda c: c["datasets"].append({"name": "pictures", "kind": "folder"}),
     "datasets[1]: 'root' is a required property"),
    (lambda c: c.update(datasets=[]), "datasets: [] should be non-empty"),
])
def test_errors_name_the_key_and_what_is_allowed(change, expected):
    config = copy.deepcopy(MINIMAL)
    change(config)
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    assert expected in str(raised.value)


def test_every_problem_is_reported_at_once(tmp_path):
    config = copy.deepcopy(MINIMAL)
    config["datasets"][0]["kind"] = "cifar10"
    config["extract"] = {"batch_size": "big"}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert "datasets[0].kind" in message and "extract.batch_size: 'big' is not of type 'integer'" in message


def test_entry_lookup_names_the_known_entries():
    config = validate_config(copy.deepcopy(MINIMAL))
    assert entry(config, "backbones", "dino")["kind"] == "timm"
    with pytest.raises(KeyError, match="configured: cifar"):
        entry(config, "datasets", "imagenet")


def test_keys_of_another_kind_are_refused_listing_only_the_kinds_keys():
    config = copy.deepcopy(MINIMAL)
    config["datasets"].append({"name": "pets", "kind": "folder", "root": "pictures", "num_classes": 3})
    config["backbones"].append({"name": "clip", "kind": "hf_clip", "model": "openai/clip-vit-base-patch32",
                                "weights": "clip.pth"})
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    lines = str(raised.value).splitlines()[1:]
    assert [line.strip() for line in lines] == [
        "backbones[1]: unknown key(s) 'weights' for kind hf_clip; allowed keys: kind, model, name, "
        "preprocessing, pretrained",
        "datasets[1]: unknown key(s) 'num_classes' for kind folder; allowed keys: audit, classes, classify, cluster, "
        "distill, eval_split, extensions, fit_split, holdout_fraction, kind, max_per_class, name, novelty, overlap, "
        "root, splits",
    ]


def test_weights_layout_is_filled_in_for_timm_backbones_only():
    config = copy.deepcopy(MINIMAL)
    config["backbones"].append({"name": "dinov2", "kind": "hf_dinov2", "model": "facebook/dinov2-small"})
    backbones = validate_config(config)["backbones"]
    assert backbones[0]["weights_layout"] == "names" and "weights_layout" not in backbones[1]


def test_an_installed_wheel_validates_configs_without_the_checkout(tmp_path):
    """The schema is package data: a non-editable install (the Kubernetes image) finds it."""
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "embedlens", source / "embedlens", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    installed = tmp_path / "site"
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("embedlens-*.whl"))) as wheel:
        wheel.extractall(installed)
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({**MINIMAL, "extract": {"shard": 2}}))
    script = ("import embedlens.config as c\n"
              "print(c.SCHEMA_PATH)\n"
              "c.load_config('my.yaml')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(installed)})
    assert result.stdout.startswith(str(installed / "embedlens")), result.stdout + result.stderr
    assert "extract: unknown key(s) 'shard'" in result.stderr


def test_snakemakes_own_validate_reads_the_packaged_schema():
    from snakemake.utils import validate

    config = copy.deepcopy(MINIMAL)
    validate(config, str(SCHEMA_PATH))
    assert config["extract"]["shards"] == 4
