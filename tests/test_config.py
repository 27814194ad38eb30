"""The configuration is checked against the schema, with defaults filled in and errors that name keys."""

from __future__ import annotations

import copy

import pytest
import yaml

from embedlens.config import ConfigError, entry, load_config, validate_config

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
                                 "amp": True, "preprocess": "device"}
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
