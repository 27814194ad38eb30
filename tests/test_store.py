"""The feature store reader: lazy and chunked access, the manifest join, and the checks that keep a
stage from trusting a store of another dataset, recipe or manifest; the recipe and geometry helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from embedlens.geometry import class_centroids, streamed_class_centroids
from embedlens.recipe import file_digest, job_recipe, recipe_differences, requested_recipe
from embedlens.store import FeatureStore, SplitFeatures, StoreMismatch, write_store

DINO = {"name": "dino_vits16", "kind": "timm", "model": "vit_small_patch16_224.dino"}
EXTRACT = {"device": "auto", "amp": True, "preprocess": "device", "batch_size": 64, "shards": 4}


def _store(tmp_path, manifest_path=None, backbone=DINO, dataset="cifar100"):
    rng = np.random.default_rng(0)
    requested = requested_recipe({"name": dataset}, backbone, EXTRACT)
    digest = file_digest(manifest_path) if manifest_path else "sha256:none"
    described = {"model": backbone["model"], "weights": "hub", "dim": 3, "preprocessing": {}}
    recipe = job_recipe(requested, manifest_digest=digest, described=described, device_type="cuda", amp=True)
    path = tmp_path / "features.h5"
    write_store(path, {"train": SplitFeatures(rng.normal(size=(7, 3)), np.array([0, 1, 0, 2, 1, 0, 2]), np.arange(7)),
                       "test": SplitFeatures(rng.normal(size=(2, 3)), np.array([1, 2]), np.array([0, 3]))},
                {"dataset": dataset, "class_names": ["a", "b", "c"], "recipe": recipe})
    return path, requested


def test_the_reader_gives_rows_whole_by_position_and_in_chunks(tmp_path):
    path, _ = _store(tmp_path)
    store = FeatureStore(path)
    assert store.splits == ["train", "test"] and store.dim == 3 and len(store) == 9
    assert store.class_names == ["a", "b", "c"] and store.recipe["resolved"]["precision"] == "bfloat16"
    train = store.features("train")
    assert np.array_equal(store.features("train", [5, 1, 5, 0]), train[[5, 1, 5, 0]])
    assert store.features("train", []).shape == (0, 3)
    chunks = list(store.iter_chunks(chunk_rows=3))
    assert [(c.split, c.start, len(c.labels)) for c in chunks] == [("train", 0, 3), ("train", 3, 3),
                                                                  ("train", 6, 1), ("test", 0, 2)]
    assert np.array_equal(np.concatenate([c.features for c in chunks[:3]]), train)
    assert store.positions("train", labels=[0]).tolist() == [0, 2, 5]
    assert store.positions("test", index=[3]).tolist() == [1]
    with pytest.raises(KeyError, match=r"no rows for index_in_split \[1\]"):
        store.positions("test", index=[1])
    with pytest.raises(KeyError, match="no split 'val'; the store has train, test"):
        store.labels("val")
    with pytest.raises(IndexError, match="has 2 rows"):
        store.features("test", [2])
    assert store.skipped().empty and list(store.skipped().columns) == ["split", "index_in_split", "source", "reason"]


def test_join_manifest_puts_the_manifest_rows_in_store_order(tmp_path):
    path, _ = _store(tmp_path)
    manifest = pd.DataFrame({"index_in_split": [0, 1, 2, 3], "split": "test", "label": [1, 5, 5, 2],
                             "class_name": ["b", "x", "x", "c"], "source": ["t0", "t1", "t2", "t3"]})
    assert FeatureStore(path).join_manifest("test", manifest)["source"].tolist() == ["t0", "t3"]
    with pytest.raises(StoreMismatch, match=r"holds images \[3\] that the manifest lacks"):
        FeatureStore(path).join_manifest("test", manifest.iloc[:3])


def test_a_stage_refuses_a_store_of_another_dataset_backbone_recipe_or_manifest(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("index_in_split,split,label,class_name,source\n0,train,0,a,0\n")
    path, requested = _store(tmp_path, manifest)
    store = FeatureStore(path)
    store.check(dataset="cifar100", recipe=requested, manifest=manifest)
    with pytest.raises(StoreMismatch, match="dataset: \"cifar100\" here, \"cifar10\" expected"):
        store.check(dataset="cifar10")
    # Another 384-d backbone: same dimension, different model; it must never mix.
    other = requested_recipe({"name": "cifar100"}, {**DINO, "name": "dinov2_s", "kind": "hf_dinov2",
                                                    "model": "facebook/dinov2-small"}, EXTRACT)
    with pytest.raises(StoreMismatch) as error:
        store.check(recipe=other)
    message = str(error.value)
    assert 'backbone.kind: "timm" here, "hf_dinov2" expected' in message
    assert 'backbone.model: "vit_small_patch16_224.dino" here, "facebook/dinov2-small" expected' in message
    assert str(path) in message and "--forcerun merge_features" in message
    with pytest.raises(StoreMismatch, match="extract.amp: true here, false expected"):
        store.check(recipe=requested_recipe({"name": "cifar100"}, DINO, {**EXTRACT, "amp": False}))
    manifest.write_text(manifest.read_text() + "1,train,0,a,1\n")
    with pytest.raises(StoreMismatch, match="another version of .*manifest.csv"):
        store.check(manifest=manifest)


def test_a_store_without_a_recipe_is_refused_when_a_recipe_is_expected(tmp_path):
    path = tmp_path / "old.h5"
    write_store(path, {"train": SplitFeatures(np.ones((1, 2)), np.array([0]), np.array([0]))}, {"dataset": "d"})
    with pytest.raises(StoreMismatch, match="records no feature recipe"):
        FeatureStore(path).check(recipe=requested_recipe({"name": "d"}, DINO, EXTRACT))


def test_the_requested_recipe_holds_only_what_changes_the_features():
    recipe = requested_recipe({"name": "d", "root": "/data"}, DINO, EXTRACT)
    assert recipe == {"dataset": "d", "backbone": DINO,
                      "extract": {"device": "auto", "amp": True, "preprocess": "device"}}
    assert recipe_differences({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": (1, 3)}, "d": 0}) == [
        "a.c: [1, 2] here, [1, 3] expected", "d: null here, 0 expected"]


def test_streamed_centroids_equal_centroids_in_memory():
    rng = np.random.default_rng(1)
    features, labels = rng.normal(size=(101, 5)), rng.integers(-1, 6, 101)
    whole = class_centroids(features, labels, list("abcdef"), normalized=True, classes=[0, 2, 5])
    chunks = [(features[i:i + 7], labels[i:i + 7]) for i in range(0, 101, 7)]
    streamed = streamed_class_centroids(chunks, 5, list("abcdef"), normalized=True, classes=[0, 2, 5])
    assert streamed.labels.tolist() == whole.labels.tolist() == [0, 2, 5] and streamed.names == ["a", "c", "f"]
    np.testing.assert_allclose(streamed.vectors, whole.vectors, rtol=1e-12)
    assert streamed.counts.tolist() == whole.counts.tolist()
