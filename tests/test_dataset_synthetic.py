"""The ``synthetic`` dataset kind: drawn shapes with designed look-alike class pairs."""

from __future__ import annotations

import hashlib
import itertools
import pickle
import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from embedlens.config import validate_config
from embedlens.datasets import KINDS, open_dataset
from embedlens.datasets.synthetic import (BASE_DESIGNS, COLOUR_JITTER, COLOURS, SyntheticDataset,
                                          class_designs)
from embedlens.manifest import MANIFEST_COLUMNS


def spec(**extra) -> dict:
    return {"name": "syn", "kind": "synthetic", **extra}


def colour_family(rgb) -> str:
    return next(entry[0] for entry in COLOURS if tuple(rgb) in (entry[1], entry[3]))


def test_defaults_match_the_schema_and_the_manifest_interleaves_classes():
    backbone = {"name": "b", "kind": "timm", "model": "m"}
    config = validate_config({"datasets": [spec()], "backbones": [backbone]})
    entry = config["datasets"][0]
    assert (entry["num_classes"], entry["images_per_class"], entry["image_size"], entry["overlapping_pairs"],
            entry["seed"]) == (10, {"train": 40, "test": 10}, 64, 2, 0)
    assert KINDS["synthetic"] is SyntheticDataset
    validated, bare = open_dataset(entry), SyntheticDataset(spec())  # code defaults = schema defaults
    assert validated.class_names == bare.class_names and validated.splits == bare.splits == ["train", "test"]

    scan = bare.scan()
    manifest = scan.manifest
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["split"].value_counts().to_dict() == {"train": 400, "test": 100}
    train = manifest[manifest["split"] == "train"]
    assert train["index_in_split"].tolist() == list(range(400))
    assert train["source"].tolist() == [str(i) for i in range(400)]
    assert train["label"].tolist() == [i % 10 for i in range(400)]  # image i has class i % num_classes
    assert train["class_name"].tolist() == [scan.class_names[i % 10] for i in range(400)]
    assert manifest["label"].dtype == np.int64 and scan.skipped.empty


def test_class_names_are_readable_and_pairs_are_ground_truth():
    dataset = SyntheticDataset(spec(num_classes=12, overlapping_pairs=3))
    scan = dataset.scan()
    assert scan.class_names[:3] == ["red_circle_solid", "green_square_dotted", "blue_triangle_ringed"]
    assert all(re.fullmatch(r"[a-z]+_[a-z]+_[a-z]+", name) for name in scan.class_names)
    assert len(set(scan.class_names)) == 12
    assert scan.extras == {"designed_overlapping_pairs": [
        ["red_circle_solid", "crimson_circle_solid"],
        ["green_square_dotted", "emerald_square_dotted"],
        ["blue_triangle_ringed", "cobalt_triangle_ringed"]]}
    assert scan.class_names[-3:] == ["crimson_circle_solid", "emerald_square_dotted",
                                     "cobalt_triangle_ringed"]
    assert SyntheticDataset(spec(overlapping_pairs=0)).scan().extras == {"designed_overlapping_pairs": []}


@pytest.mark.parametrize("pairs", [0, 5, 24])
def test_design_look_alikes_share_shape_and_texture_and_all_other_pairs_differ_twice(pairs):
    designs = class_designs(BASE_DESIGNS + pairs, pairs)
    assert len({d.name for d in designs}) == len(designs)
    designed = {frozenset((d.name, d.twin_of)) for d in designs if d.twin_of}
    assert len(designed) == pairs
    for a, b in itertools.combinations(designs, 2):
        if frozenset((a.name, b.name)) in designed:
            assert (a.shape, a.texture) == (b.shape, b.texture) and a.colour != b.colour
            # The colour difference is smaller than the within-class colour jitter.
            assert np.linalg.norm(np.subtract(a.colour, b.colour)) < COLOUR_JITTER
        else:
            differences = ((a.shape != b.shape) + (a.texture != b.texture)
                           + (colour_family(a.colour) != colour_family(b.colour)))
            assert differences >= 2, (a.name, b.name)
    first = class_designs(7, 0)  # the first seven differ in shape, colour and texture at once
    for attribute in ("shape", "colour", "texture"):
        assert len({getattr(d, attribute) for d in first}) == 7


def random_local_features(images: np.ndarray, filters: int = 256, k: int = 5) -> np.ndarray:
    """Generic pixel features: random 5x5 colour filters, ReLU, averaged over the image."""
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((k * k * 3, filters)) / np.sqrt(k * k * 3)).astype(np.float32)
    bias = (rng.standard_normal(filters) * 0.5).astype(np.float32)
    x = images.astype(np.float32) / 255.0 - 0.5
    patches = sliding_window_view(x, (k, k, 3), axis=(1, 2, 3))[:, ::3, ::3, 0]
    patches = patches.reshape(len(images), -1, k * k * 3)
    return np.maximum(patches @ weights + bias, 0.0).mean(axis=1)


def test_designed_pairs_are_confused_in_pixels_and_other_pairs_are_not():
    classes, per_class = 12, 20
    dataset = SyntheticDataset(spec(num_classes=classes, overlapping_pairs=3,
                                    images_per_class={"train": per_class, "test": per_class}))
    images = {split: np.stack([dataset.read_image(split, str(i)) for i in range(classes * per_class)])
              for split in ("train", "test")}
    labels = np.arange(classes * per_class) % classes
    names = dataset.class_names
    pairs = [(names.index(a), names.index(b)) for a, b in dataset.designed_overlapping_pairs()]

    # 1. Colour: the foreground (saturated pixels; the background is grey) of a designed pair has nearly
    #    the same mean colour; classes of different colour families are far apart.
    def foreground_colour(stack):
        spread = stack.max(-1).astype(int) - stack.min(-1)
        return stack[spread > 60].mean(axis=0)
    colours = [foreground_colour(images["train"][labels == k]) for k in range(classes)]
    for i, j in itertools.combinations(range(classes), 2):
        gap = np.linalg.norm(colours[i] - colours[j])
        if (i, j) in pairs:
            assert gap < 30, (names[i], names[j], gap)
        elif colour_family(dataset.designs[i].colour) != colour_family(dataset.designs[j].colour):
            assert gap > 60, (names[i], names[j], gap)

    # 2. Everything: a linear classifier on generic local pixel features, trained on train and tested
    #    on test, mixes up the designed pairs and (almost) nothing else.
    train, test = (random_local_features(images[s]) for s in ("train", "test"))
    mean, std = train.mean(0), train.std(0) + 1e-6
    design = np.c_[(train - mean) / std, np.ones(len(train))]
    ridge = np.linalg.solve(design.T @ design + 10.0 * np.eye(design.shape[1]),
                            design.T @ np.eye(classes)[labels])
    predicted = (np.c_[(test - mean) / std, np.ones(len(test))] @ ridge).argmax(1)
    confusion = np.zeros((classes, classes))
    np.add.at(confusion, (labels, predicted), 1.0 / per_class)
    mixed = confusion + confusion.T  # share of images of either class taken for the other
    designed = [mixed[i, j] for i, j in pairs]
    others = [mixed[i, j] for i, j in itertools.combinations(range(classes), 2) if (i, j) not in pairs]
    assert min(designed) >= 0.3, designed
    assert max(others) <= 0.15, max(others)
    assert min(designed) > 3 * max(others)
    assert np.trace(confusion) / classes > 0.7  # the rest is told apart


def test_images_are_rgb_uint8_squares():
    for size in (16, 64, 100):
        image = SyntheticDataset(spec(image_size=size)).read_image("train", "3")
        assert image.shape == (size, size, 3) and image.dtype == np.uint8 and image.flags.writeable


# Pins the drawing: any change to how images are drawn changes these bytes (and must be deliberate).
EXPECTED_DIGEST = "f55b6ca056c2c47a4e3adc968c97bcecec79ac7011a2d45c91b0c68437d9988f"


def digest(dataset: SyntheticDataset, split: str, indices) -> str:
    h = hashlib.sha256()
    for i in indices:
        h.update(dataset.read_image(split, str(i)).tobytes())
    return h.hexdigest()


def test_deterministic_across_instances_order_and_pickling():
    a, b = SyntheticDataset(spec(seed=7)), SyntheticDataset(spec(seed=7))
    forward = [a.read_image("train", str(i)) for i in range(12)]
    backward = [b.read_image("train", str(i)) for i in reversed(range(12))][::-1]
    for x, y in zip(forward, backward):
        np.testing.assert_array_equal(x, y)
    clone = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(clone.read_image("test", "5"), a.read_image("test", "5"))
    assert clone.scan().manifest.equals(a.scan().manifest)
    # Each image depends on seed, split and index.
    first = a.read_image("train", "0")
    assert not np.array_equal(first, SyntheticDataset(spec(seed=8)).read_image("train", "0"))
    assert not np.array_equal(first, a.read_image("test", "0"))
    assert not np.array_equal(first, SyntheticDataset(spec(seed=-7)).read_image("train", "0"))
    # Byte-identical on any machine: a fixed digest of the first images of the default dataset.
    assert digest(SyntheticDataset(spec()), "train", range(20)) == EXPECTED_DIGEST


def test_classes_and_max_per_class_filters_keep_labels_and_extras():
    dataset = SyntheticDataset(spec(classes=["crimson_circle_solid", "red_circle_solid"], max_per_class=3))
    scan = dataset.scan()
    assert scan.class_names == SyntheticDataset(spec()).class_names
    train = scan.manifest[scan.manifest["split"] == "train"]
    assert train["label"].tolist() == [0, 8, 0, 8, 0, 8]
    assert train["index_in_split"].tolist() == [0, 8, 10, 18, 20, 28]
    assert len(scan.manifest[scan.manifest["split"] == "test"]) == 6
    assert scan.extras["designed_overlapping_pairs"] == [["red_circle_solid", "crimson_circle_solid"]]
    one_side = SyntheticDataset(spec(classes=["crimson_circle_solid", "green_square_dotted"])).scan()
    assert one_side.extras["designed_overlapping_pairs"] == []
    image = dataset.read_image("train", "18")
    np.testing.assert_array_equal(image, SyntheticDataset(spec()).read_image("train", "18"))


def test_splits_follow_images_per_class_and_can_be_restricted():
    dataset = SyntheticDataset(spec(images_per_class={"train": 3, "val": 2, "test": 1}, num_classes=4,
                                    overlapping_pairs=1))
    assert dataset.splits == ["train", "val", "test"]
    assert dataset.scan().manifest["split"].value_counts().to_dict() == {"train": 12, "val": 8, "test": 4}
    only = SyntheticDataset(spec(images_per_class={"train": 3, "val": 2}, splits=["val"]))
    assert only.scan().manifest["split"].unique().tolist() == ["val"]
    with pytest.raises(ValueError, match=r"splits \['test'\] have no count in images_per_class"):
        SyntheticDataset(spec(images_per_class={"train": 3}, splits=["train", "test"]))


@pytest.mark.parametrize("settings, message", [
    ({"overlapping_pairs": 6}, r"overlapping_pairs: 6 pairs need 12 classes but num_classes is 10"),
    ({"num_classes": 60, "overlapping_pairs": 2}, r"num_classes: 60 .* at most 51 classes"),
    ({"num_classes": 1}, r"num_classes must be >= 2"),
    ({"image_size": 8}, r"image_size must be >= 16"),
    ({"overlapping_pairs": -1}, r"overlapping_pairs must be >= 0"),
    ({"seed": "zero"}, r"seed must be an integer"),
    ({"num_classes": 2.5}, r"num_classes must be an integer"),
    ({"images_per_class": {"train": 0}}, r"images_per_class.train must be an integer >= 1"),
    ({"images_per_class": [40, 10]}, r"images_per_class must be a mapping"),
    ({"images_per_class": {"train": 2}, "splits": ["train", "train"]}, r"splits: \['train'\] listed more"),
])
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        SyntheticDataset(spec(**settings))


def test_largest_dataset_is_allowed_and_read_image_checks_its_arguments():
    largest = SyntheticDataset(spec(num_classes=BASE_DESIGNS + 10, overlapping_pairs=10))
    assert len(set(largest.class_names)) == BASE_DESIGNS + 10
    dataset = SyntheticDataset(spec())
    with pytest.raises(IndexError, match="0..399"):
        dataset.read_image("train", "400")
    with pytest.raises(KeyError, match="no split 'val'"):
        dataset.read_image("val", "0")
