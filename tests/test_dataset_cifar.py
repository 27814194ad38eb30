"""The cifar100 dataset kind: the genuine archive from ../shared, filters, and what happens offline."""

from __future__ import annotations

import pickle
import urllib.error

import numpy as np
import pytest
import torchvision.datasets

from embedlens.datasets import open_dataset
from embedlens.errors import FetchError
from embedlens.manifest import MANIFEST_COLUMNS


def test_genuine_cifar100_manifest_pixels_and_filters(cifar100_root):
    spec = {"name": "cifar", "kind": "cifar100", "root": str(cifar100_root), "download": False,
            "classes": ["maple_tree", "oak_tree"], "max_per_class": 5}
    dataset = open_dataset(spec)
    scan = dataset.scan()
    manifest = scan.manifest
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(scan.class_names) == 100 and scan.class_names[47] == "maple_tree"
    assert manifest.groupby(["split", "class_name"]).size().to_dict() == {
        ("test", "maple_tree"): 5, ("test", "oak_tree"): 5, ("train", "maple_tree"): 5, ("train", "oak_tree"): 5}
    assert manifest["split"].tolist()[:10] == ["train"] * 10  # manifest order: train, then test
    reference = torchvision.datasets.CIFAR100(str(cifar100_root), train=False, download=False)
    for row in manifest[manifest["split"] == "test"].itertuples():
        assert reference.targets[row.index_in_split] == row.label
        assert np.array_equal(dataset.read_image("test", row.source), reference.data[row.index_in_split])
    # workers receive the dataset without its arrays and load them again
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._arrays == {}
    assert np.array_equal(clone.read_image("test", "0"), reference.data[0])


def test_a_root_pointing_at_the_archive_folder_itself_works(cifar100_root):
    dataset = open_dataset({"name": "c", "kind": "cifar100", "root": str(cifar100_root / "cifar-100-python"),
                            "download": False, "splits": ["test"], "max_per_class": 1})
    assert len(dataset.scan().manifest) == 100


def test_missing_copy_without_download_says_where_to_point(tmp_path):
    dataset = open_dataset({"name": "c", "kind": "cifar100", "root": str(tmp_path), "download": False})
    with pytest.raises(FileNotFoundError, match="set root to the folder that holds cifar-100-python/"):
        dataset.scan()


def test_a_failed_download_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    dataset = open_dataset({"name": "c", "kind": "cifar100", "root": str(tmp_path / "cifar"), "download": True})
    with pytest.raises(FetchError) as raised:
        dataset.scan()
    message = str(raised.value)
    assert "could not download CIFAR-100" in message and "name resolution" in message
    assert "point root of dataset 'c' at a local copy" in message and "download: false" in message


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="splits train and test, not \\['val'\\]"):
        open_dataset({"name": "c", "kind": "cifar100", "splits": ["val"]})
