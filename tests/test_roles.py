"""Split roles, per-dataset stage settings, the hold-out and the plan-time decision of what can run."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from embedlens.config import ConfigError, canonical, validate_config
from embedlens.roles import (SettingError, SplitRoles, check_settings, image_keys, skip_reason, split_roles,
                             stage_settings, stratified_holdout)

BACKBONES = [{"name": "tiny", "kind": "timm", "model": "resnet10t", "pretrained": False}]


def config_of(*datasets: dict, **sections) -> dict:
    return validate_config({"datasets": list(datasets), "backbones": copy.deepcopy(BACKBONES), **sections})


def info(**splits: dict) -> dict:
    """dataset.json's figures from {split: {class: images}}."""
    return {"images": {split: sum(counts.values()) for split, counts in splits.items()}, "class_counts": splits}


@pytest.mark.parametrize("splits, roles", [
    (["train", "test"], SplitRoles("train", "test")),        # CIFAR-100
    (["train", "val"], SplitRoles("train", "val")),          # ImageNet
    (["validation", "train"], SplitRoles("train", "validation")),  # a Hugging Face dataset, hub order
    (["fit", "check"], SplitRoles("fit", "check")),          # a folder's splits: first and second listed
    (["train"], SplitRoles("train", None)),                  # a folder without splits
])
def test_roles_follow_the_names_users_expect(splits, roles):
    assert split_roles({"name": "d"}, splits) == roles


def test_named_roles_win_and_a_role_naming_no_split_is_refused():
    assert split_roles({"name": "d", "fit_split": "val", "eval_split": "train"}, ["train", "val"]) == SplitRoles("val", "train")
    with pytest.raises(SettingError, match=r"datasets\[d\].eval_split: 'test' is not a split of dataset 'd'; its splits: train"):
        split_roles({"name": "d", "eval_split": "test"}, ["train"])


def test_stage_settings_look_in_the_dataset_entry_then_the_stage_section_then_the_roles():
    imagenet = {"name": "inet", "kind": "imagenet", "root": "x", "audit": {"neighbours": 3}}
    pets = {"name": "pets", "kind": "folder", "root": "y", "classify": {"test_split": "train", "max_epochs": 5}}
    config = config_of(imagenet, pets, audit={"neighbours": 9, "folds": 3})
    audit = stage_settings(config, "audit", config["datasets"][0], ["train", "val"])
    assert (audit["query_split"], audit["reference_split"], audit["neighbours"], audit["folds"]) == ("val", "train", 3, 3)
    classify = stage_settings(config, "classify", config["datasets"][1], ["train"])
    assert (classify["train_split"], classify["test_split"], classify["max_epochs"]) == ("train", "train", 5)
    assert classify["holdout_fraction"] == 0.2 and config["classify"]["max_epochs"] == 200  # only for pets
    overlap = stage_settings(config, "overlap", config["datasets"][0], ["train", "val"])
    assert overlap["splits"] == ["train"]  # the fit split: no evaluation label picks the classes


def test_a_bad_key_or_value_under_a_dataset_is_refused_naming_it():
    with pytest.raises(ConfigError) as raised:
        config_of({"name": "pets", "kind": "folder", "root": "y", "audit": {"neighbors": 3, "folds": 1}})
    text = str(raised.value)
    assert "datasets[0].audit: unknown key(s) 'neighbors'" in text
    assert "datasets[0].audit.folds: 1 is less than the minimum of 2" in text


def test_roles_and_stage_settings_never_reach_what_images_depend_on():
    entry = config_of({"name": "pets", "kind": "folder", "root": "y", "eval_split": "b", "splits": ["a", "b"],
                       "classify": {"max_epochs": 3}})["datasets"][0]
    assert image_keys(entry) == {"name": "pets", "kind": "folder", "root": "y", "splits": ["a", "b"],
                                 "extensions": entry["extensions"]}


def test_canonical_settings_do_not_depend_on_key_order():
    one = {"b": 1, "a": {"d": [{"y": 1, "x": 2}], "c": 3}}
    two = {"a": {"c": 3, "d": [{"x": 2, "y": 1}]}, "b": 1}
    assert repr(canonical(one)) == repr(canonical(two)) and repr(one) != repr(two)


def test_the_hold_out_is_stratified_seeded_and_leaves_small_classes_whole():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [-1] * 3)
    held, notes = stratified_holdout(labels, 0.2, seed=0)
    assert held[labels == 0].sum() == 2 and held[labels == 1].sum() == 1
    assert not held[labels == 2].any() and not held[labels < 0].any()
    assert len(notes) == 1 and "labels 2" in notes[0]
    again, _ = stratified_holdout(labels, 0.2, seed=0)
    other, _ = stratified_holdout(labels, 0.2, seed=1)
    assert (again == held).all() and not (other == held).all()


def test_what_cannot_run_is_said_in_one_sentence_naming_the_setting():
    config = config_of({"name": "pets", "kind": "folder", "root": "y"})
    pets = config["datasets"][0]
    one_class = info(train={"cat": 30})
    settings = {stage: stage_settings(config, stage, pets, ["train"]) for stage in ("overlap", "classify", "cluster",
                                                                                    "novelty", "audit", "distill")}
    assert "at least two classes" in skip_reason("overlap", settings["overlap"], one_class, "pets")
    assert "classify.train_split ('train')" in skip_reason("classify", settings["classify"], one_class, "pets")
    assert "cluster.clusters" in skip_reason("cluster", settings["cluster"], one_class, "pets")
    assert skip_reason("audit", settings["audit"], one_class, "pets") is None  # repeats need no classes
    assert skip_reason("novelty", settings["novelty"], one_class, "pets") is None
    two = info(train={"cat": 10, "dog": 1})
    assert skip_reason("classify", settings["classify"], two, "pets") is not None  # one image cannot be split
    assert skip_reason("cluster", settings["cluster"], two, "pets") is None
    assert "novelty.k_min" in skip_reason("novelty", settings["novelty"], info(train={"cat": 3}), "pets")
    missing = stage_settings(config_of({"name": "pets", "kind": "folder", "root": "y",
                                        "classify": {"test_split": "test"}}), "classify", pets | {
        "classify": {"test_split": "test"}}, ["train"])
    assert skip_reason("classify", missing, two, "pets") == (
        "classify.test_split names split 'test', which dataset 'pets' does not have (splits with images: train (11))")


def test_a_setting_that_can_never_work_stops_the_run_naming_the_key():
    config = config_of({"name": "pets", "kind": "folder", "root": "y", "novelty": {"k": 500}})
    settings = stage_settings(config, "novelty", config["datasets"][0], ["train"])
    with pytest.raises(SettingError, match="novelty.k is 500, but dataset 'pets' gives k-means only 36 images"):
        check_settings("novelty", settings, info(train={"cat": 20, "dog": 25}), "pets")
