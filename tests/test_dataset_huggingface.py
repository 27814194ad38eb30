"""The ``huggingface`` dataset kind, offline, on small datasets written by the test: save_to_disk and parquet."""

from __future__ import annotations

import io
import pickle
from functools import partial

import numpy as np
import pytest
from PIL import Image

from embedlens.config import validate_config
from embedlens.datasets import KINDS, open_dataset
from embedlens.datasets.huggingface import HuggingFace
from embedlens.parallel import ordered_map

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()

NAMES = ["cat", "dog", "emu"]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _cut_in_pixel_data(jpeg: bytes) -> bytes:
    """``jpeg`` with its headers whole and half of its compressed pixel data cut off."""
    data = jpeg.index(b"\xff\xda")  # start of scan: the compressed data follows
    return jpeg[: data + (len(jpeg) - data) // 2]


@pytest.fixture(scope="module")
def images():
    """Eight train and three test images of several modes and sizes. Train row 5 is a JPEG cut in its
    pixel data (whole header: the scan keeps it, decoding fails), row 6 one cut inside its header."""
    rng = np.random.default_rng(0)
    train = [Image.fromarray(rng.integers(0, 256, (8 + i, 12, 3), dtype=np.uint8)) for i in range(8)]
    train[1] = Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8), mode="L")
    train[2] = Image.fromarray(rng.integers(0, 256, (6, 5, 4), dtype=np.uint8), mode="RGBA")
    test = [Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)) for _ in range(3)]
    cells = [{"bytes": _png(image), "path": None} for image in train]
    cells[5] = {"bytes": _cut_in_pixel_data(_jpeg(train[5])), "path": None}
    cells[6] = {"bytes": _jpeg(train[6])[:60], "path": None}
    return {"train": cells, "test": [{"bytes": _png(image), "path": None} for image in test],
            "train_pixels": [np.asarray(i.convert("RGB")) for i in train],
            "test_pixels": [np.asarray(i.convert("RGB")) for i in test],
            "train_labels": [0, 1, 2, 0, 1, 2, 0, 1], "test_labels": [2, 1, 0]}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # lossless, so pixels compare exactly
    return buffer.getvalue()


def _dataset_dict(images):
    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=NAMES),
                                  "other": datasets.Value("int32")})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"img": images[split], "fine": images[f"{split}_labels"], "other": list(range(len(images[split])))},
            features=features)
        for split in ("train", "test")})


@pytest.fixture(scope="module")
def saved(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "saved"
    _dataset_dict(images).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def parquet(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "parquet"
    (folder / "data").mkdir(parents=True)
    for split, ds in _dataset_dict(images).items():
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def spec(path, tmp_path, **extra):
    return {"name": "hf", "kind": "huggingface", "path": str(path), "image_column": "img",
            "label_column": "fine", "cache_dir": str(tmp_path / "cache"), **extra}


def check_scan(dataset, images, splits=("train", "test")):
    scan = dataset.scan()
    manifest = scan.manifest
    assert scan.class_names == NAMES
    assert list(manifest["split"].unique()) == list(splits)
    if "train" in splits:
        train = manifest[manifest["split"] == "train"]
        assert train["index_in_split"].tolist() == [0, 1, 2, 3, 4, 5, 7]  # row 6 has no whole header
        assert train["label"].tolist() == [images["train_labels"][i] for i in train["index_in_split"]]
        assert train["class_name"].tolist() == [NAMES[x] for x in train["label"]]
        assert scan.skipped.values.tolist() == [["train", "6", "Truncated File Read"]]
        with pytest.raises(OSError, match="image file is truncated"):
            dataset.read_image("train", "5")  # the header passed the scan; decoding finds the damage
        for row in train[train["source"] != "5"].itertuples():
            pixels = dataset.read_image("train", row.source)
            assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
            assert np.array_equal(pixels, images["train_pixels"][int(row.source)])
    if "test" in splits:
        test = manifest[manifest["split"] == "test"]
        assert test["label"].tolist() == images["test_labels"]
        assert np.array_equal(dataset.read_image("test", "2"), images["test_pixels"][2])
    return scan


def test_kind_registered_and_config():
    assert KINDS["huggingface"] is HuggingFace
    config = {"datasets": [{"name": "in1k", "kind": "huggingface", "path": "ILSVRC/imagenet-1k",
                            "splits": ["validation"]}],
              "backbones": [{"name": "b", "kind": "timm", "model": "m"}]}
    entry = validate_config(config)["datasets"][0]
    assert entry["image_column"] == "image" and entry["label_column"] == "label"


def test_save_to_disk(saved, images, tmp_path):
    dataset = open_dataset(spec(saved, tmp_path))
    check_scan(dataset, images)
    only_test = open_dataset(spec(saved, tmp_path, splits=["test"]))
    check_scan(only_test, images, splits=("test",))


def test_save_to_disk_single_dataset(images, tmp_path):
    _dataset_dict(images)["test"].save_to_disk(str(tmp_path / "one"))
    scan = open_dataset(spec(tmp_path / "one", tmp_path)).scan()
    assert scan.manifest["split"].unique().tolist() == ["train"] and len(scan.manifest) == 3


def test_parquet_folder_file_and_data_files(parquet, images, tmp_path):
    check_scan(open_dataset(spec(parquet, tmp_path)), images)
    single = open_dataset(spec(parquet / "data" / "test-00000-of-00001.parquet", tmp_path))
    assert single.scan().manifest["label"].tolist() == images["test_labels"]
    explicit = open_dataset({"name": "hf", "kind": "huggingface", "image_column": "img", "label_column": "fine",
                             "cache_dir": str(tmp_path / "cache2"),
                             "data_files": {"train": str(parquet / "data" / "train-*.parquet"),
                                            "test": [str(parquet / "data" / "test-00000-of-00001.parquet")]}})
    check_scan(explicit, images)


def test_plain_parquet_string_labels_and_unlabelled(images, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    labels = ["zebra", "ant", "zebra", "mole", "ant", "mole", "ant", "ant"]
    table = pa.table({"picture": images["train"], "kind": labels})  # no Hugging Face metadata at all
    pq.write_table(table, tmp_path / "plain.parquet")
    dataset = open_dataset({"name": "p", "kind": "huggingface", "path": str(tmp_path / "plain.parquet"),
                            "image_column": "picture", "label_column": "kind", "cache_dir": str(tmp_path / "c")})
    scan = dataset.scan()
    assert scan.class_names == ["ant", "mole", "zebra"]
    assert scan.manifest["class_name"].tolist() == [labels[i] for i in scan.manifest["index_in_split"]]
    assert np.array_equal(dataset.read_image("train", "1"), images["train_pixels"][1])
    unlabelled = open_dataset({"name": "p", "kind": "huggingface", "path": str(tmp_path / "plain.parquet"),
                               "image_column": "picture", "label_column": None,
                               "cache_dir": str(tmp_path / "c")}).scan()
    assert unlabelled.class_names == [] and set(unlabelled.manifest["label"]) == {-1}


def test_errors_name_columns_and_splits(saved, tmp_path):
    with pytest.raises(ValueError, match=r"no column\(s\) \['image'\].*'img'"):
        open_dataset(spec(saved, tmp_path, image_column="image")).scan()
    with pytest.raises(ValueError, match="no split 'validation'; it has train, test"):
        open_dataset(spec(saved, tmp_path, splits=["validation"])).scan()


def test_offline_hub_id_fails_at_once_and_says_how_to_use_a_local_copy(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from embedlens import hub
    from embedlens.errors import FetchError

    attempts = []
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: attempts.append(timeout) or False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    dataset = open_dataset({"name": "in1k", "kind": "huggingface", "path": "someone/imagenet-1k-128px",
                            "cache_dir": str(tmp_path / "cache")})
    with pytest.raises(FetchError) as error:
        dataset.scan()
    message = str(error.value)
    assert "someone/imagenet-1k-128px" in message and "save_to_disk" in message and "data_files:" in message
    assert len(attempts) == 1 and datasets.config.HF_HUB_OFFLINE  # one quick look, then no retries


def _read(dataset, source):
    return dataset.read_image("train", source)


def test_picklable_and_readable_in_worker_processes(saved, images, tmp_path):
    dataset = open_dataset(spec(saved, tmp_path))
    clone = pickle.loads(pickle.dumps(dataset))
    assert np.array_equal(clone.read_image("train", "2"), images["train_pixels"][2])
    pixels = list(ordered_map(partial(_read, dataset), ["0", "3", "7"], workers=2))
    for source, got in zip(["0", "3", "7"], pixels):
        assert np.array_equal(got, images["train_pixels"][int(source)])
