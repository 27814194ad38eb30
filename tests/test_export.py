"""The exported subset: lossless PNG tree, names, metadata columns, label map vs torchvision ImageFolder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedlens.atomic import atomic_directory
from embedlens.datasets.base import DatasetScan, ImageDataset
from embedlens.export import (
    METADATA_COLUMNS,
    class_folders,
    dataset_prefix,
    export_subset,
    image_file_name,
    label_map,
    safe_name,
)
from embedlens.manifest import MANIFEST_COLUMNS


class ArrayDataset(ImageDataset):
    """Array-backed like CIFAR-100: ``source`` indexes a uint8 array of each split."""

    kind = "synthetic"
    default_splits = ("train", "test")

    def __init__(self, spec, arrays: dict[str, np.ndarray], labels: dict[str, list[int]], names: list[str]):
        super().__init__(spec)
        self.arrays, self.labels, self.names = arrays, labels, names

    def _scan(self):
        frames = [pd.DataFrame({"index_in_split": range(len(self.labels[s])), "split": s,
                                "label": self.labels[s], "class_name": [self.names[i] for i in self.labels[s]],
                                "source": [str(i) for i in range(len(self.labels[s]))]}) for s in self.splits]
        return DatasetScan(pd.concat(frames, ignore_index=True), self.names)

    def read_image(self, split, source):
        return self.arrays[split][int(source)]


class FileDataset(ImageDataset):
    """File-backed like the folder kind: ``source`` is a path; decoding goes through PIL to RGB."""

    kind = "folder"
    default_splits = ("train",)

    def __init__(self, spec, rows: pd.DataFrame, names: list[str]):
        super().__init__(spec)
        self.rows, self.names = rows, names

    def _scan(self):
        return DatasetScan(self.rows[MANIFEST_COLUMNS], self.names)

    def read_image(self, split, source):
        with Image.open(source) as image:
            return np.asarray(image.convert("RGB"))

    def source_file(self, split, source):
        return Path(source)


NAMES = ["apple pie", "a/b", "c"]


def array_dataset(seed=0):
    rng = np.random.default_rng(seed)
    labels = {"train": [0, 1, 2, 0, 1, 2, 0], "test": [1, 0, 2]}
    arrays = {s: rng.integers(0, 256, size=(len(v), 8, 6, 3), dtype=np.uint8) for s, v in labels.items()}
    return ArrayDataset({"name": "toy"}, arrays, labels, NAMES)


def test_names_are_safe_and_match_the_notebook():
    assert dataset_prefix("cifar100", "cifar_small") == "CIFAR100"
    assert dataset_prefix("imagenet", "imagenet100") == "imagenet100"
    assert safe_name("apple pie") == "apple_pie" and safe_name("a/b") == "a_b"
    assert safe_name("  ../x \\ y, z ") == "x_y_z" and safe_name("///") == "_"
    assert safe_name("maple_tree") == "maple_tree"
    assert image_file_name("CIFAR100", "train", 123, 47) == "CIFAR100_train_orig-idx-123_label-47.png"
    assert class_folders([(0, "a b"), (1, "a/b"), (2, "c")], "P") == {0: "P_a_b_0", 1: "P_a_b_1", 2: "P_c"}
    assert label_map(["P_b", "P_a", "P_B"]) == {"P_B": 0, "P_a": 1, "P_b": 2}


def test_export_is_pixel_identical_with_exact_layout_and_metadata(tmp_path):
    dataset = array_dataset()
    manifest = dataset.scan().manifest
    rows = manifest[manifest["label"].isin([0, 1])].reset_index(drop=True)
    root = tmp_path / "subset"
    summary = export_subset(dataset, rows, root, classes=[(0, NAMES[0]), (1, NAMES[1])], prefix="CIFAR100",
                            splits=["train", "test"])
    assert sorted(p.name for p in root.iterdir()) == ["label_map.json", "metadata_test.csv",
                                                       "metadata_train.csv", "skipped.csv", "test", "train"]
    assert sorted(p.name for p in (root / "train").iterdir()) == ["CIFAR100_a_b", "CIFAR100_apple_pie"]
    for split in ("train", "test"):
        meta = pd.read_csv(root / f"metadata_{split}.csv")
        assert list(meta.columns) == METADATA_COLUMNS
        expected = rows[rows["split"] == split]
        assert meta["original_index_in_split"].tolist() == expected["index_in_split"].tolist()
        assert (meta["split"] == split).all() and (meta["original_dataset"] == "CIFAR100").all()
        for record in meta.itertuples():
            path = root / record.saved_path
            assert record.saved_path == (f"{split}/{record.new_class_name}/CIFAR100_{split}_orig-idx-"
                                         f"{record.original_index_in_split}_label-{record.original_label_idx}.png")
            assert record.original_class_name == NAMES[record.original_label_idx]
            with Image.open(path) as image:
                assert image.format == "PNG" and image.mode == "RGB"
                np.testing.assert_array_equal(np.asarray(image), dataset.arrays[split][record.original_index_in_split])
    assert summary["images"] == {"train": 5, "test": 2}
    assert summary["images_per_class"]["train"] == {"CIFAR100_a_b": 2, "CIFAR100_apple_pie": 3}
    assert json.loads((root / "label_map.json").read_text()) == {"CIFAR100_a_b": 0, "CIFAR100_apple_pie": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_label_map_agrees_with_imagefolder(tmp_path):
    datasets = pytest.importorskip("torchvision.datasets")
    dataset = array_dataset()
    manifest = dataset.scan().manifest
    root = tmp_path / "subset"
    export_subset(dataset, manifest, root, classes=list(enumerate(NAMES)), prefix="toy", workers=3)
    mapping = json.loads((root / "label_map.json").read_text())
    for split in ("train", "test"):
        folder = datasets.ImageFolder(str(root / split))
        assert folder.class_to_idx == mapping
        meta = pd.read_csv(root / f"metadata_{split}.csv")
        by_path = {str(root / p): mapping[c] for p, c in zip(meta["saved_path"], meta["new_class_name"])}
        assert {p: label for p, label in folder.samples} == by_path
        image, label = folder[0]
        assert np.asarray(image).shape == (8, 6, 3)


def test_refined_rows_carry_the_similarity_and_empty_class_folders_stay(tmp_path):
    dataset = array_dataset()
    manifest = dataset.scan().manifest
    rows = manifest[(manifest["label"] == 0) & (manifest["split"] == "train")].reset_index(drop=True)
    rows = rows.assign(partner_similarity=np.linspace(0.5, 0.9, len(rows)))
    root = tmp_path / "subset"
    export_subset(dataset, rows, root, classes=[(0, "apple pie"), (2, "c")], prefix="toy",
                  splits=["train", "test"], similarity_column="partner_similarity")
    meta = pd.read_csv(root / "metadata_train.csv")
    assert list(meta.columns) == METADATA_COLUMNS + ["partner_similarity"]
    np.testing.assert_allclose(meta["partner_similarity"], rows["partner_similarity"])
    test_meta = pd.read_csv(root / "metadata_test.csv")
    assert len(test_meta) == 0 and list(test_meta.columns) == METADATA_COLUMNS + ["partner_similarity"]
    # Both class folders exist in both splits, so ImageFolder's labels are the same everywhere.
    for split in ("train", "test"):
        assert sorted(p.name for p in (root / split).iterdir()) == ["toy_apple_pie", "toy_c"]


def test_empty_overlap_set_gives_a_well_formed_empty_tree(tmp_path):
    dataset = array_dataset()
    manifest = dataset.scan().manifest
    root = tmp_path / "subset"
    summary = export_subset(dataset, manifest.iloc[:0], root, classes=[], prefix="toy", splits=["train", "test"])
    assert (root / "train").is_dir() and (root / "test").is_dir()
    assert list((root / "train").iterdir()) == []
    for split in ("train", "test"):
        assert (root / f"metadata_{split}.csv").read_text().strip() == ",".join(METADATA_COLUMNS)
    assert json.loads((root / "label_map.json").read_text()) == {}
    assert summary["images"] == {"train": 0, "test": 0} and summary["num_classes"] == 0


def test_file_backed_export_copies_png_bytes_and_reencodes_jpeg_losslessly(tmp_path):
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    src.mkdir()
    files = []
    rgba = rng.integers(0, 256, size=(10, 12, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(src / "one.png")
    Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(src / "two.jpg", quality=80)
    Image.fromarray(rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)).save(src / "three.webp", lossless=False)
    (src / "four.png").write_bytes(b"not an image at all")
    for i, name in enumerate(["one.png", "two.jpg", "three.webp", "four.png"]):
        files.append({"index_in_split": i, "split": "train", "label": i % 2, "class_name": ["x y", "z"][i % 2],
                      "source": str(src / name)})
    rows = pd.DataFrame(files)
    dataset = FileDataset({"name": "my_photos"}, rows, ["x y", "z"])
    root = tmp_path / "subset"
    summary = export_subset(dataset, rows, root, classes=[(0, "x y"), (1, "z")],
                            prefix=dataset_prefix("folder", "my_photos"))
    meta = pd.read_csv(root / "metadata_train.csv")
    assert meta["saved_path"].tolist() == [
        "train/my_photos_x_y/my_photos_train_orig-idx-0_label-0.png",
        "train/my_photos_z/my_photos_train_orig-idx-1_label-1.png",
        "train/my_photos_x_y/my_photos_train_orig-idx-2_label-0.png"]
    assert (root / meta["saved_path"][0]).read_bytes() == (src / "one.png").read_bytes()
    # every row leads back to its source file
    assert list(meta.columns) == METADATA_COLUMNS + ["original_source_path"]
    assert meta["original_source_path"].tolist() == [str(src / name) for name in ("one.png", "two.jpg", "three.webp")]
    for i in (1, 2):
        with Image.open(root / meta["saved_path"][i]) as image:
            assert image.format == "PNG"
            np.testing.assert_array_equal(np.asarray(image), dataset.read_image("train", rows["source"][i]))
    skipped = pd.read_csv(root / "skipped.csv")
    assert summary["skipped"] == 1 and skipped["source"].tolist() == [str(src / "four.png")]
    assert list(skipped.columns) == ["split", "source", "reason"]


def test_atomic_directory_replaces_or_keeps(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not (target / "b").exists()
    with atomic_directory(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unknown_labels_are_refused(tmp_path):
    dataset = array_dataset()
    manifest = dataset.scan().manifest
    with pytest.raises(ValueError, match=r"labels \[2\]"):
        export_subset(dataset, manifest, tmp_path / "s", classes=[(0, "a"), (1, "b")], prefix="toy")


@pytest.mark.realdata
def test_genuine_cifar100_export_is_pixel_identical(cifar100_root, tmp_path):
    from torchvision.datasets import CIFAR100, ImageFolder

    from embedlens.datasets.cifar import Cifar100

    classes = ["maple_tree", "oak_tree", "aquarium_fish"]
    dataset = Cifar100({"name": "cifar100", "kind": "cifar100", "root": str(cifar100_root), "download": False,
                        "classes": classes, "max_per_class": 6})
    scan = dataset.scan()
    wanted = [(scan.class_names.index(c), c) for c in classes]
    root = tmp_path / "subset"
    summary = export_subset(dataset, scan.manifest, root, classes=wanted,
                            prefix=dataset_prefix(dataset.kind, dataset.name), workers=2)
    assert summary["images"] == {"train": 18, "test": 18}
    reference = {s: CIFAR100(str(cifar100_root), train=s == "train", download=False) for s in ("train", "test")}
    mapping = json.loads((root / "label_map.json").read_text())
    assert mapping == {"CIFAR100_aquarium_fish": 0, "CIFAR100_maple_tree": 1, "CIFAR100_oak_tree": 2}
    for split in ("train", "test"):
        meta = pd.read_csv(root / f"metadata_{split}.csv")
        assert list(meta.columns) == METADATA_COLUMNS
        for record in meta.itertuples():
            assert reference[split].targets[record.original_index_in_split] == record.original_label_idx
            assert reference[split].classes[record.original_label_idx] == record.original_class_name
            assert Path(record.saved_path).name == (f"CIFAR100_{split}_orig-idx-{record.original_index_in_split}"
                                                    f"_label-{record.original_label_idx}.png")
            with Image.open(root / record.saved_path) as image:
                np.testing.assert_array_equal(np.asarray(image),
                                              reference[split].data[record.original_index_in_split])
        folder = ImageFolder(str(root / split))
        assert folder.class_to_idx == mapping
        assert sorted(label for _, label in folder.samples) == sorted(
            mapping[c] for c in meta["new_class_name"])
