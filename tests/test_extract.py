"""Shards, batch preprocessing against the notebooks' PIL path, and merging shards into a store."""

from __future__ import annotations

import logging

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms

from embedlens.extract import Progress, collate_images, merge_shards, shard_rows, write_shard
from embedlens.preprocess import Preprocessing, preprocess_batch
from embedlens.store import read_attrs, read_split, store_splits

DINO = Preprocessing(resize=256, crop=224, interpolation="bicubic")


@pytest.mark.parametrize("total, count", [(10, 3), (7, 7), (3, 5), (0, 2), (1000, 4)])
def test_shards_cover_every_row_once_and_are_contiguous(total, count):
    parts = [shard_rows(total, f"{i}-of-{count}") for i in range(1, count + 1)]
    joined = np.concatenate(parts)
    assert joined.tolist() == list(range(total))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("name", ["0-of-3", "4-of-3", "shard1", "1of3"])
def test_bad_shard_names_are_refused(name):
    with pytest.raises(ValueError, match="expected '<i>-of-<k>'"):
        shard_rows(10, name)


def test_collate_stacks_equal_sizes_and_keeps_mixed_sizes_apart():
    same = [torch.zeros(4, 5, 3, dtype=torch.uint8)] * 3
    assert collate_images(same).shape == (3, 4, 5, 3)
    mixed = [torch.zeros(4, 5, 3, dtype=torch.uint8), torch.zeros(6, 5, 3, dtype=torch.uint8)]
    assert isinstance(collate_images(mixed), list)


def _notebook_transform(prep: Preprocessing):
    interpolation = getattr(transforms.InterpolationMode, prep.interpolation.upper())
    return transforms.Compose([
        transforms.Resize(prep.resize, interpolation=interpolation),
        transforms.CenterCrop(prep.crop),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])


@pytest.mark.parametrize("shape", [(32, 32), (300, 400), (375, 500), (500, 333)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_batch_preprocessing_matches_the_per_image_pil_path(shape, interpolation):
    rng = np.random.default_rng(0)
    # Smooth images (like photos) rather than white noise, where any two resamplers differ most.
    small = rng.integers(0, 256, size=(shape[0] // 8 + 1, shape[1] // 8 + 1, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize(shape[::-1], Image.BILINEAR))
    prep = Preprocessing(resize=256, crop=224, interpolation=interpolation)
    expected = _notebook_transform(prep)(Image.fromarray(image))
    ours = preprocess_batch(torch.from_numpy(image.copy())[None], prep)[0]
    assert ours.shape == expected.shape == (3, 224, 224)
    # In [0, 255] pixel units: PIL rounds to uint8 after resizing, we keep floats.
    difference = ((ours - expected) * torch.tensor(prep.std).view(3, 1, 1) * 255).abs()
    assert difference.mean() < 1.0
    assert difference.max() < 40


def test_mixed_sizes_in_one_batch_equal_one_by_one():
    rng = np.random.default_rng(1)
    images = [torch.from_numpy(rng.integers(0, 256, size=s, dtype=np.uint8)) for s in [(40, 60, 3), (80, 50, 3)]]
    together = preprocess_batch(images, DINO)
    apart = torch.cat([preprocess_batch(image[None], DINO) for image in images])
    assert torch.allclose(together, apart)


def test_progress_reports_images_rate_and_time_left(caplog):
    logger = logging.getLogger("embedlens.test_progress")
    progress = Progress(total=100, logger=logger, label="shard 1-of-2: ", every=0.0)
    with caplog.at_level(logging.INFO, logger="embedlens.test_progress"):
        progress.update(25)
    assert "shard 1-of-2: 25/100 images (25%)" in caplog.text
    assert "images/s" in caplog.text and "left" in caplog.text


BACKBONE = {"name": "tiny", "kind": "timm", "model": "tiny_vit", "weights": "random", "dim": 4,
            "preprocessing": DINO.as_dict()}


def _manifest():
    return pd.DataFrame({"index_in_split": [0, 1, 2, 0, 1], "split": ["train"] * 3 + ["test"] * 2,
                         "label": [3, 1, 3, 1, 2], "class_name": ["c", "a", "c", "a", "b"],
                         "source": ["0", "1", "2", "0", "1"]})


def test_merge_orders_rows_by_manifest_and_groups_by_split(tmp_path):
    manifest = _manifest()
    features = np.arange(20, dtype=np.float32).reshape(5, 4)
    shards = [tmp_path / "2-of-2.h5", tmp_path / "1-of-2.h5"]
    write_shard(shards[0], np.array([3, 4]), features[[3, 4]], BACKBONE)
    write_shard(shards[1], np.array([0, 1, 2]), features[[0, 1, 2]], BACKBONE)
    store = tmp_path / "features.h5"
    merge_shards(shards, manifest, store, {"dataset": "toy", "class_names": ["a", "b", "c", "d"]})
    assert store_splits(store) == ["train", "test"]
    train, test = read_split(store, "train"), read_split(store, "test")
    assert np.array_equal(train.features, features[:3]) and np.array_equal(test.features, features[3:])
    assert train.labels.tolist() == [3, 1, 3] and test.index.tolist() == [0, 1]
    attrs = read_attrs(store)
    assert attrs["dataset"] == "toy" and attrs["backbone"] == "tiny" and attrs["dim"] == 4
    assert attrs["preprocessing"]["resize"] == 256 and attrs["class_names"][2] == "c"
    assert {"torch", "numpy", "h5py", "python"} <= set(attrs["versions"])
    with h5py.File(store) as handle:  # plain h5py users see the same layout
        assert handle["train/features"].shape == (3, 4)


def test_merge_refuses_shards_that_miss_or_repeat_rows(tmp_path):
    manifest = _manifest()
    write_shard(tmp_path / "a.h5", np.array([0, 1, 1]), np.zeros((3, 4)), BACKBONE)
    write_shard(tmp_path / "b.h5", np.array([3]), np.zeros((1, 4)), BACKBONE)
    with pytest.raises(ValueError, match=r"missing e.g. \[2, 4\], repeated e.g. \[1\]"):
        merge_shards([tmp_path / "a.h5", tmp_path / "b.h5"], manifest, tmp_path / "f.h5", {})
    assert not (tmp_path / "f.h5").exists()
