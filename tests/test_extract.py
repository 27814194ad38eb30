"""Extraction (decode failures, the PIL mode), batch preprocessing against the notebooks' PIL path, and
shard files merged into a store."""

from __future__ import annotations

import logging
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision import transforms

from embedlens.backbones import load_backbone
from embedlens.datasets import ImageDataset
from embedlens.extract import Progress, collate_images, embed_images, extract_features
from embedlens.preprocess import Preprocessing, preprocess_batch
from embedlens.manifest import read_manifest, write_table
from embedlens.recipe import job_recipe, requested_recipe
from embedlens.shards import NonFiniteFeatures, merge_shards, open_shard, shard_rows
from embedlens.store import FeatureStore, StoreMismatch, read_attrs, read_split, store_splits

from conftest import extract_options

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


def test_collate_stacks_equal_sizes_keeps_mixed_sizes_apart_and_sets_failures_aside():
    same = collate_images([(i, torch.zeros(4, 5, 3, dtype=torch.uint8)) for i in range(3)])
    assert same.images.shape == (3, 4, 5, 3) and same.positions == [0, 1, 2] and same.failed == []
    mixed = collate_images([(0, torch.zeros(4, 5, 3, dtype=torch.uint8)), (1, "truncated"),
                            (2, torch.zeros(6, 5, 3, dtype=torch.uint8))])
    assert isinstance(mixed.images, list) and mixed.positions == [0, 2] and mixed.failed == [(1, "truncated")]


def _notebook_transform(prep: Preprocessing):
    interpolation = getattr(transforms.InterpolationMode, prep.interpolation.upper())
    return transforms.Compose([
        transforms.Resize(prep.resize, interpolation=interpolation),
        transforms.CenterCrop(prep.crop),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])


@pytest.mark.parametrize("shape", [(32, 32), (300, 400), (375, 500), (500, 333), (224, 600)])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("texture", ["smooth", "noise"])
def test_batch_preprocessing_gives_the_pil_paths_pixels(shape, interpolation, texture):
    rng = np.random.default_rng(0)
    if texture == "smooth":  # like photos
        small = rng.integers(0, 256, size=(shape[0] // 8 + 1, shape[1] // 8 + 1, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(small).resize(shape[::-1], Image.BILINEAR))
    else:  # white noise, where resamplers differ most
        image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    prep = Preprocessing(resize=256, crop=224, interpolation=interpolation)
    expected = _notebook_transform(prep)(Image.fromarray(image))
    ours = preprocess_batch(torch.from_numpy(image.copy())[None], prep)[0]
    assert ours.shape == expected.shape == (3, 224, 224)
    # In grey levels: PIL's coefficients and 8-bit rounding; float32 sums (PIL sums in fixed point)
    # round the other way at a few pixels that sit at a half.
    difference = ((ours - expected) * torch.tensor(prep.std).view(3, 1, 1) * 255).abs()
    assert difference.max() < 1.01
    assert (difference > 0.01).float().mean() < 5e-3


def test_mixed_sizes_in_one_batch_equal_one_by_one_in_order():
    rng = np.random.default_rng(1)
    shapes = [(40, 60, 3), (80, 50, 3), (40, 60, 3), (33, 33, 3)]  # sizes interleave: grouped, then put back
    images = [torch.from_numpy(rng.integers(0, 256, size=s, dtype=np.uint8)) for s in shapes]
    together = preprocess_batch(images, DINO)
    apart = torch.cat([preprocess_batch(image[None], DINO) for image in images])
    assert torch.allclose(together, apart)


def test_batch_preprocessing_keeps_pils_pixels_under_bf16_autocast():
    # extract.amp runs the loop under bfloat16 autocast; the resampling products must stay float32.
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8))
    plain = preprocess_batch(image, DINO)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = preprocess_batch(image, DINO)
    assert autocast.dtype == torch.float32 and torch.equal(plain, autocast)


def test_nearest_takes_the_pixel_under_each_centre_like_pil():
    image = np.random.default_rng(4).integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
    prep = Preprocessing(resize=64, crop=56, interpolation="nearest")
    expected = _notebook_transform(prep)(Image.fromarray(image))
    assert torch.allclose(preprocess_batch(torch.from_numpy(image)[None], prep)[0], expected, atol=1e-5)


def test_progress_reports_images_rate_and_time_left(caplog):
    logger = logging.getLogger("embedlens.test_progress")
    progress = Progress(total=100, logger=logger, label="shard 1-of-2: ", every=0.0)
    with caplog.at_level(logging.INFO, logger="embedlens.test_progress"):
        progress.update(25, preprocess_seconds=0.0)
    assert "shard 1-of-2: 25/100 images (25%)" in caplog.text
    assert "images/s" in caplog.text and "left" in caplog.text
    assert "preprocessing 0.0 s (0.0% of the time)" in caplog.text


def test_extraction_tells_progress_the_preprocessing_seconds(tiny_backbone, caplog):
    logger = logging.getLogger("embedlens.test_progress")
    progress = Progress(total=5, logger=logger, every=0.0)
    with caplog.at_level(logging.INFO, logger="embedlens.test_progress"):
        extract_features(tiny_backbone, ToyImages(), _rows(["0", "1", "2", "3", "4"]), device=torch.device("cpu"),
                         **extract_options(batch_size=2, num_workers=0), progress=progress)
    assert progress.done == 5 and 0 < progress.preprocess_seconds < time.monotonic() - progress.start
    assert caplog.text.count("preprocessing") == 3 and "5/5 images" in caplog.text


TINY = {"name": "tiny", "kind": "timm", "model": "resnet10t", "pretrained": False,
        "preprocessing": {"resize": 32, "crop": 32}}
EXTRACT = {"device": "cpu", "amp": True, "preprocess": "device"}


def recipe_for(dim: int = 4, **extract) -> dict:
    """A complete job recipe as an extraction job records it, for a toy manifest."""
    requested = requested_recipe({"name": "toy"}, TINY, {**EXTRACT, **extract})
    described = {"model": "resnet10t", "weights": "random", "dim": dim, "preprocessing": DINO.as_dict()}
    return job_recipe(requested, manifest_digest="sha256:toy", described=described, device_type="cpu",
                      amp=requested["extract"]["amp"])


def make_shard(path, rows, features, recipe=None, failed=None, seconds=1.0):
    """A shard file as an extraction job writes it."""
    features = np.asarray(features, dtype=np.float32)
    with open_shard(path, np.asarray(rows), features.shape[1], recipe or recipe_for(features.shape[1])) as shard:
        shard.features[...] = features
        shard.finish(failed or {}, seconds)
    return path


def _manifest(folder):
    """A five-image manifest file in ``folder``: three train images, then two test images."""
    path = folder / "manifest.csv"
    write_table(pd.DataFrame({"index_in_split": [0, 1, 2, 0, 1], "split": ["train"] * 3 + ["test"] * 2,
                              "label": [3, 1, 3, 1, 2], "class_name": ["c", "a", "c", "a", "b"],
                              "source": ["0", "1", "2", "0", "1"]}), path)
    return path


@pytest.mark.parametrize("chunk_rows", [1, 2, 1000])
def test_merge_orders_rows_by_manifest_and_groups_by_split(tmp_path, chunk_rows):
    manifest = _manifest(tmp_path)
    features = np.arange(20, dtype=np.float32).reshape(5, 4)
    shards = [make_shard(tmp_path / "2-of-2.h5", [3, 4], features[[3, 4]], seconds=2.0),
              make_shard(tmp_path / "1-of-2.h5", [0, 1, 2], features[[0, 1, 2]], seconds=3.0)]
    store = tmp_path / "features.h5"
    extraction = merge_shards(shards, manifest, store, {"dataset": "toy", "class_names": ["a", "b", "c", "d"]},
                              chunk_rows=chunk_rows)
    assert store_splits(store) == ["train", "test"]
    train, test = read_split(store, "train"), read_split(store, "test")
    assert np.array_equal(train.features, features[:3]) and np.array_equal(test.features, features[3:])
    assert train.labels.tolist() == [3, 1, 3] and test.index.tolist() == [0, 1]
    attrs = read_attrs(store)
    assert attrs["dataset"] == "toy" and attrs["backbone"] == "tiny" and attrs["dim"] == 4
    assert attrs["preprocessing"]["resize"] == 256 and attrs["class_names"][2] == "c"
    assert {"torch", "numpy", "h5py", "python"} <= set(attrs["versions"])
    assert attrs["recipe"]["extract"] == EXTRACT and attrs["recipe"]["resolved"]["precision"] == "float32"
    assert extraction == {**attrs["extraction"], "images": 5, "skipped": 0, "seconds": 5.0,
                          "images_per_second": 1.0, "shards": 2}
    with h5py.File(store) as handle:  # plain h5py users see the same layout
        assert handle["train/features"].shape == (3, 4)


def test_images_that_failed_to_decode_have_no_row_and_are_listed(tmp_path):
    manifest = _manifest(tmp_path)
    features = np.arange(20, dtype=np.float32).reshape(5, 4)
    features[[1, 3]] = 0  # an extraction job leaves failed rows at zero
    shards = [make_shard(tmp_path / "1.h5", [0, 1, 2], features[:3], failed={1: "image file is truncated"}),
              make_shard(tmp_path / "2.h5", [3, 4], features[3:], failed={0: "broken data stream"})]
    store = tmp_path / "features.h5"
    extraction = merge_shards(shards, manifest, store, {"dataset": "toy"}, chunk_rows=2)
    assert extraction["images"] == 3 and extraction["skipped"] == 2
    reader = FeatureStore(store)
    train, test = reader.read_split("train"), reader.read_split("test")
    assert train.index.tolist() == [0, 2] and train.labels.tolist() == [3, 3]
    assert np.array_equal(train.features, features[[0, 2]])
    assert test.index.tolist() == [1] and np.array_equal(test.features, features[[4]])
    skipped = reader.skipped()
    assert skipped.to_dict("records") == [
        {"split": "test", "index_in_split": 0, "source": "0", "reason": "broken data stream"},
        {"split": "train", "index_in_split": 1, "source": "1", "reason": "image file is truncated"}]
    joined = reader.join_manifest("train", read_manifest(manifest))
    assert joined["index_in_split"].tolist() == [0, 2] and joined["class_name"].tolist() == ["c", "c"]


def test_merge_refuses_shards_that_miss_or_repeat_rows(tmp_path):
    manifest = _manifest(tmp_path)
    make_shard(tmp_path / "a.h5", [0, 1, 1], np.zeros((3, 4)))
    make_shard(tmp_path / "b.h5", [3], np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"missing e.g. \[2, 4\], repeated e.g. \[1\]"):
        merge_shards([tmp_path / "a.h5", tmp_path / "b.h5"], manifest, tmp_path / "f.h5", {})
    assert not (tmp_path / "f.h5").exists()


def test_merge_refuses_nan_or_infinite_features_naming_the_images_and_writes_no_store(tmp_path):
    manifest = _manifest(tmp_path)
    features = np.arange(20, dtype=np.float32).reshape(5, 4)
    features[2, 1], features[4, 0] = np.nan, np.inf
    failed = np.arange(20, dtype=np.float32).reshape(5, 4)
    failed[1] = np.nan  # a row that failed to decode is no feature, whatever it holds
    shards = [make_shard(tmp_path / "1.h5", [0, 1, 2, 3, 4], features)]
    with pytest.raises(NonFiniteFeatures, match=r"dataset toy x backbone tiny: 2 image\(s\) got NaN or infinite "
                                                r"features, so no feature store was written; first: train #2 \(2\); "
                                                r"test #1 \(1\)"):
        merge_shards(shards, manifest, tmp_path / "f.h5", {"dataset": "toy"})
    assert not (tmp_path / "f.h5").exists()
    decoded = [make_shard(tmp_path / "2.h5", [0, 1, 2, 3, 4], failed, failed={1: "truncated"})]
    assert merge_shards(decoded, manifest, tmp_path / "g.h5", {"dataset": "toy"})["images"] == 4


def test_merge_refuses_shards_of_different_recipes_naming_shard_and_key(tmp_path):
    manifest = _manifest(tmp_path)
    first = make_shard(tmp_path / "1-of-2.h5", [0, 1, 2], np.zeros((3, 4)))
    other = make_shard(tmp_path / "2-of-2.h5", [3, 4], np.zeros((2, 4)), recipe=recipe_for(amp=False))
    with pytest.raises(StoreMismatch, match=r"2-of-2.h5 differs from .*1-of-2.h5: extract.amp: false here, "
                                            r"true expected"):
        merge_shards([first, other], manifest, tmp_path / "f.h5", {})
    assert not (tmp_path / "f.h5").exists()


def test_merge_refuses_shards_made_for_another_config_or_manifest(tmp_path):
    manifest = _manifest(tmp_path)
    shards = [make_shard(tmp_path / "1.h5", [0, 1, 2, 3, 4], np.zeros((5, 4)))]
    good = {**requested_recipe({"name": "toy"}, TINY, EXTRACT), "manifest_digest": "sha256:toy"}
    merge_shards(shards, manifest, tmp_path / "f.h5", {}, expected=good)
    changed = {**good, "extract": {**EXTRACT, "preprocess": "pil"}}
    with pytest.raises(StoreMismatch, match=r"1.h5 differs from the config: extract.preprocess: \"device\" "
                                            r"here, \"pil\" expected"):
        merge_shards(shards, manifest, tmp_path / "g.h5", {}, expected=changed)
    with pytest.raises(StoreMismatch, match="manifest_digest"):
        merge_shards(shards, manifest, tmp_path / "g.h5", {}, expected={**good, "manifest_digest": "sha256:new"})
    assert not (tmp_path / "g.h5").exists()


def test_an_unfinished_shard_never_appears(tmp_path):
    path = tmp_path / "1-of-1.h5"
    with pytest.raises(RuntimeError, match="finish"):
        with open_shard(path, np.arange(3), 4, recipe_for()):
            pass
    assert not path.exists() and not list(tmp_path.iterdir())


class ToyImages(ImageDataset):
    """Smooth random images of mixed sizes held in memory; sources named "bad" fail to decode."""

    kind = "toy"
    default_splits = ("train",)

    def __init__(self):
        super().__init__({"name": "toy"})
        rng = np.random.default_rng(3)
        self.images = {str(i): np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
                                          .resize(size, Image.BILINEAR))
                       for i, size in enumerate([(40, 30), (40, 30), (64, 48), (31, 57), (40, 30)])}

    def _scan(self):
        raise NotImplementedError

    def read_image(self, split, source):
        if source == "bad":
            raise OSError("image file is truncated (3 bytes not processed)")
        return self.images[source]


def _rows(sources):
    return pd.DataFrame({"index_in_split": range(len(sources)), "split": "train", "label": 0,
                         "class_name": "a", "source": sources})


@pytest.fixture(scope="module")
def tiny_backbone():
    return load_backbone(TINY)


def test_an_image_that_fails_to_decode_is_skipped_with_its_reason_and_the_rest_embedded(tiny_backbone):
    dataset = ToyImages()
    rows = _rows(["0", "bad", "1", "2", "bad", "3"])
    features, failed = extract_features(tiny_backbone, dataset, rows, device=torch.device("cpu"),
                                        **extract_options(batch_size=4, num_workers=0))
    assert failed == {1: "image file is truncated (3 bytes not processed)", 4: failed[1]}
    assert np.all(features[[1, 4]] == 0) and np.all(np.abs(features[[0, 2, 3, 5]]).sum(axis=1) > 0)
    alone, none_failed = extract_features(tiny_backbone, dataset, _rows(["0", "1", "2", "3"]),
                                          device=torch.device("cpu"), **extract_options(batch_size=4, num_workers=0))
    assert none_failed == {}
    np.testing.assert_allclose(features[[0, 2, 3, 5]], alone, rtol=1e-5, atol=1e-5)


def test_pil_mode_reproduces_the_notebooks_per_image_path_exactly(tiny_backbone):
    dataset = ToyImages()
    rows = _rows(["0", "1", "2", "3", "4"])
    ours, _ = extract_features(tiny_backbone, dataset, rows, device=torch.device("cpu"),
                               **extract_options(batch_size=5, num_workers=1, preprocess="pil"))
    transform = _notebook_transform(tiny_backbone.preprocessing)
    batch = torch.stack([transform(Image.fromarray(dataset.read_image("train", s))) for s in rows["source"]])
    notebooks = tiny_backbone.embed(batch).numpy()
    assert np.array_equal(ours, notebooks)
    device_path, _ = extract_features(tiny_backbone, dataset, rows, device=torch.device("cpu"),
                                      **extract_options(batch_size=5, num_workers=0))
    assert not np.array_equal(device_path, notebooks)  # the modes really differ


@pytest.mark.parametrize("preprocess", ["device", "pil"])
def test_images_in_memory_are_embedded_exactly_as_extraction_embeds_their_files(tiny_backbone, preprocess):
    dataset = ToyImages()
    rows = _rows(["0", "1", "2", "3", "4"])  # three sizes
    extracted, _ = extract_features(tiny_backbone, dataset, rows, device=torch.device("cpu"),
                                    **extract_options(batch_size=5, num_workers=0, preprocess=preprocess))
    in_memory = embed_images(tiny_backbone, [dataset.read_image("train", s) for s in rows["source"]], preprocess,
                             batch_size=2)
    np.testing.assert_allclose(in_memory, extracted, rtol=1e-5, atol=1e-6)


def test_an_unknown_preprocess_mode_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="extract.preprocess 'gpu'; allowed values: device, pil"):
        extract_features(tiny_backbone, ToyImages(), _rows(["0"]), device=torch.device("cpu"),
                         **extract_options(preprocess="gpu"))
    with pytest.raises(ValueError, match="extract.preprocess 'gpu'; allowed values: device, pil"):
        embed_images(tiny_backbone, [ToyImages().read_image("train", "0")], "gpu")


def test_compile_runs_the_torch_compiled_model_with_equal_features(tiny_backbone, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def compile_eagerly(module, **kwargs):  # dynamo traces the model; no C++ compiler needed in tests
        compiled.append(module)
        return real_compile(module, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_eagerly)
    rows = _rows(["0", "1", "2", "3"])
    plain, _ = extract_features(tiny_backbone, ToyImages(), rows, device=torch.device("cpu"),
                                **extract_options(batch_size=4, num_workers=0))
    fast, _ = extract_features(tiny_backbone, ToyImages(), rows, device=torch.device("cpu"),
                               **extract_options(batch_size=4, num_workers=0, compile=True))
    assert compiled == [tiny_backbone.module] and not isinstance(tiny_backbone.module, torch._dynamo.OptimizedModule)
    np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-5)


def test_channels_last_gives_the_same_features(tiny_backbone):
    pixels = preprocess_batch(torch.from_numpy(ToyImages().images["0"].copy())[None], tiny_backbone.preprocessing)
    plain = tiny_backbone.embed(pixels)
    fast = tiny_backbone.for_speed(channels_last=True)
    try:
        assert fast.module.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fast.embed(pixels), plain, rtol=1e-4, atol=1e-5)
    finally:
        tiny_backbone.module.to(memory_format=torch.contiguous_format)
        tiny_backbone.for_speed(channels_last=False)
