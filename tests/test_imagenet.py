"""The ImageNet layout readers, WNID lists and the ``imagenet`` dataset kind, on a tiny ILSVRC-like tree."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from imagenet_tree import NO_TRAIN_FOLDER, SYNSETS, make_tree
from PIL import Image

from embedlens.config import validate_config
from embedlens.datasets import KINDS, open_dataset
from embedlens.datasets.imagenet import (
    SHIPPED_LISTS_DIR, TRAIN_ID_STRIDE, ImageNet, WnidListError, id_to_source, list_image_files, locate,
    original_ids, read_synset_mapping, read_val_labels, read_wnid_list, resolve_wnid_list, shipped_lists,
    unique_class_names,
)

SHARED_LISTS = Path(__file__).resolve().parents[2] / "shared" / "imagenet_subsets"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("imagenet") / "imagenet")


def write_list(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- metadata files ---------------------------------------------------------------------------------

def test_synset_mapping_names_and_ids(tree):
    layout = locate(tree["root"])
    mapping = read_synset_mapping(layout.synset_mapping)
    assert list(mapping) == sorted(SYNSETS)
    assert mapping["n01440764"] == "tench, Tinca tinca"
    names = unique_class_names(mapping)
    assert names["n01440764"] == "tench"
    assert names["n02012849"] == "crane_n02012849" and names["n03126707"] == "crane_n03126707"
    assert names["n03710637"] == "maillot_n03710637" and names["n03710721"] == "maillot_n03710721"
    assert len(set(names.values())) == len(names)
    assert original_ids(mapping) == {w: i for i, w in enumerate(sorted(SYNSETS))}


def test_val_labels_sorted_first_token(tree):
    layout = locate(tree["root"])
    labels = read_val_labels(layout.val_solution)
    assert labels == tree["val_labels"]
    assert list(labels) == sorted(labels)


def test_locate_both_layouts(tree, tmp_path):
    layout = locate(tree["root"])
    assert layout.images == tree["images"]
    assert layout.synset_mapping == tree["root"] / "LOC_synset_mapping.txt"
    flat = tmp_path / "flat"
    shutil.copytree(tree["images"], flat)
    shutil.copy(tree["root"] / "LOC_synset_mapping.txt", flat)
    layout = locate(flat)
    assert layout.images == flat and layout.val_solution is None
    with pytest.raises(FileNotFoundError, match="train/ and val/"):
        locate(tmp_path / "flat" / "train" / "n01440764")
    (flat / "LOC_synset_mapping.txt").unlink()
    with pytest.raises(FileNotFoundError, match="LOC_synset_mapping.txt"):
        locate(flat)


# --- WNID lists ---------------------------------------------------------------------------------------

def test_wnid_list_order_comments_blanks(tree, tmp_path):
    mapping = read_synset_mapping(locate(tree["root"]).synset_mapping)
    path = write_list(tmp_path, "# my classes", "n03126707", "", "  n01440764  ", "n02012849")
    assert read_wnid_list(path, mapping, tree["images"] / "train") == ["n03126707", "n01440764", "n02012849"]


def test_wnid_list_reports_every_problem_at_once(tree, tmp_path):
    mapping = read_synset_mapping(locate(tree["root"]).synset_mapping)
    path = write_list(tmp_path, "n01440764", "n09999999", "n01443537", "n01440764", NO_TRAIN_FOLDER,
                      "tench")
    with pytest.raises(WnidListError) as error:
        read_wnid_list(path, mapping, tree["images"] / "train")
    message = str(error.value)
    assert "duplicated: n01440764 (lines 1, 4)" in message
    assert "not in the synset mapping: n09999999, tench" in message
    assert f"no train folder in {tree['images'] / 'train'}: {NO_TRAIN_FOLDER}" in message
    # without train_dir (a val-only build) the missing folder is no problem
    path = write_list(tmp_path, "n01440764", NO_TRAIN_FOLDER)
    assert read_wnid_list(path, mapping) == ["n01440764", NO_TRAIN_FOLDER]
    with pytest.raises(WnidListError, match="empty"):
        read_wnid_list(write_list(tmp_path, "# nothing"), mapping)


def test_shipped_lists():
    assert shipped_lists() == ["imagenet100", "imagenet100_cmc", "imagenet30"]
    counts = {"imagenet30": 30, "imagenet100": 100, "imagenet100_cmc": 100}
    for name, count in counts.items():
        path = resolve_wnid_list(name)
        assert path == SHIPPED_LISTS_DIR / f"{name}.txt"
        lines = path.read_text().splitlines()
        assert len(lines) == count == len(set(lines))
        assert all(re.fullmatch(r"n\d{8}", line) for line in lines)
        if SHARED_LISTS.is_dir():
            assert path.read_text() == (SHARED_LISTS / f"{name}.txt").read_text()
    # imagenet100 (solo-learn) and the CMC list are different lists
    assert resolve_wnid_list("imagenet100").read_text() != resolve_wnid_list("imagenet100_cmc").read_text()


def test_resolve_wnid_list_paths(tmp_path):
    path = write_list(tmp_path, "n01440764")
    assert resolve_wnid_list(str(path)) == path
    with pytest.raises(FileNotFoundError, match="shipped: imagenet100, imagenet100_cmc, imagenet30"):
        resolve_wnid_list("imagenet1000")


# --- the dataset kind ----------------------------------------------------------------------------------

def spec(tree, **extra):
    return {"name": "inet", "kind": "imagenet", "root": str(tree["root"]), **extra}


def test_kind_registered_and_config():
    assert KINDS["imagenet"] is ImageNet
    config = {"datasets": [{"name": "inet", "kind": "imagenet", "root": "/x", "wnids": "imagenet100"}],
              "backbones": [{"name": "b", "kind": "timm", "model": "m"}]}
    assert validate_config(config)["datasets"][0]["wnids"] == "imagenet100"


def test_scan_with_list(tree, tmp_path):
    wnids = ["n03126707", "n01440764", "n02012849", "n01443537", "n03710637"]
    dataset = open_dataset(spec(tree, wnids=str(write_list(tmp_path, *wnids))))
    scan = dataset.scan()
    manifest, skipped = scan.manifest, scan.skipped
    assert scan.class_names == ["crane_n03126707", "tench", "crane_n02012849", "goldfish", "maillot_n03710637"]
    assert list(manifest["split"].unique()) == ["train", "val"]
    # labels follow the list; class names match labels; sources are relative paths under root
    for row in manifest.itertuples():
        path = Path(row.source)
        wnid = path.parent.name if row.split == "train" else tree["val_labels"][path.stem]
        assert row.label == wnids.index(wnid) and row.class_name == scan.class_names[row.label]
        assert not Path(row.source).is_absolute()
        assert dataset.source_file(row.split, row.source).is_absolute()
        assert dataset.source_file(row.split, row.source).is_file()
    # train: 4 regular per class, plus the gray, cmyk, png and truncated files (the empty one is skipped)
    train = manifest[manifest["split"] == "train"]
    assert len(train) == 5 * 4 + 4
    # the scan reads headers: the missing and the empty file are skipped, the truncated ones (whole
    # headers, cut pixel data) are in the manifest for extraction to find
    truncated = {source for source, kind in tree["bad"].items() if kind == "truncated"}
    assert len(truncated) == 2 and truncated <= set(manifest["source"])
    assert set(skipped.columns) == {"split", "source", "reason"}
    reasons = dict(zip(skipped["source"], skipped["reason"]))
    assert sorted((tree["bad"][source], reason) for source, reason in reasons.items()) == [
        ("empty", "empty file (0 bytes)"), ("missing", "[Errno 2] No such file or directory")]
    assert not set(skipped["source"]) & set(manifest["source"])
    # stray files (readme.txt, .hidden.JPEG, unlabelled val image) are not images of the dataset
    assert not manifest["source"].str.contains("readme|hidden|99999999").any()
    # index_in_split is the documented id and decodes back to the same file
    ids = original_ids(read_synset_mapping(locate(tree["root"]).synset_mapping))
    for row in train.itertuples():
        wnid = Path(row.source).parent.name
        assert row.index_in_split // TRAIN_ID_STRIDE == ids[wnid]
        files = list_image_files(tree["images"] / "train" / wnid)
        assert files[row.index_in_split % TRAIN_ID_STRIDE] == Path(row.source).name
    for row in manifest.itertuples():
        assert id_to_source(tree["root"], row.split, row.index_in_split) == tree["root"] / row.source
    val = manifest[manifest["split"] == "val"]
    assert list(val["index_in_split"]) == sorted(val["index_in_split"])
    assert all(int(Path(s).stem[-8:]) == i + 1 for s, i in zip(val["source"], val["index_in_split"]))


def test_read_image_awkward_files(tree):
    dataset = ImageNet(spec(tree))
    for kind, source in tree["special"].items():
        pixels = dataset.read_image("train", source)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, kind
        with Image.open(tree["root"] / source) as image:
            assert pixels.shape[:2] == (image.height, image.width)
            assert np.array_equal(pixels, np.asarray(image.convert("RGB")))
    gray = dataset.read_image("train", tree["special"]["gray"])
    assert np.array_equal(gray[..., 0], gray[..., 2])
    tiny = next(p for p in (tree["images"] / "train" / "n01440764").iterdir()
                if p.suffix == ".JPEG" and p.stat().st_size and Image.open(p).size == (10, 7))
    assert dataset.read_image("train", tiny.relative_to(tree["root"]).as_posix()).shape == (7, 10, 3)
    clone = pickle.loads(pickle.dumps(dataset))
    assert np.array_equal(clone.read_image("train", tree["special"]["cmyk"]),
                          dataset.read_image("train", tree["special"]["cmyk"]))


def test_scan_without_list_uses_standard_ids(tree):
    # every synset of the mapping is a class; one has no train folder, so train needs a list
    with pytest.raises(FileNotFoundError, match=NO_TRAIN_FOLDER):
        ImageNet(spec(tree)).scan()
    scan = ImageNet(spec(tree, splits=["val"])).scan()
    mapping = read_synset_mapping(locate(tree["root"]).synset_mapping)
    assert scan.class_names == [unique_class_names(mapping)[w] for w in sorted(SYNSETS)]
    labels = {Path(s).stem: label for s, label in zip(scan.manifest["source"], scan.manifest["label"])}
    assert labels == {i: original_ids(mapping)[w] for i, w in tree["val_labels"].items() if i in labels}
    assert len(labels) == len(tree["val_labels"]) - 1  # the missing file (the truncated one is in)


def test_list_errors_before_any_work(tree, tmp_path):
    dataset = ImageNet(spec(tree, wnids=str(write_list(tmp_path, "n01440764", "n01440764", "n00000000"))))
    with pytest.raises(WnidListError, match="duplicated.*not in the synset mapping: n00000000"):
        dataset.scan()
    with pytest.raises(ValueError, match="train and val"):
        ImageNet(spec(tree, splits=["test"]))


def test_foldered_val_without_csv(tree, tmp_path):
    root = tmp_path / "foldered"
    shutil.copytree(tree["images"] / "train", root / "train")
    shutil.copy(tree["root"] / "LOC_synset_mapping.txt", root)
    for image_id, wnid in tree["val_labels"].items():
        source = tree["images"] / "val" / f"{image_id}.JPEG"
        if source.exists():
            (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / "val" / wnid)
    dataset = ImageNet({"name": "f", "kind": "imagenet", "root": str(root), "splits": ["val"],
                        "wnids": str(write_list(tmp_path, "n01443537", "n01440764"))})
    scan = dataset.scan()
    expected = {i: w for i, w in tree["val_labels"].items() if w in ("n01443537", "n01440764")}
    expected.pop("ILSVRC2012_val_00000003")  # missing from the original tree
    got = {Path(s).stem: ["n01443537", "n01440764"][label]
           for s, label in zip(scan.manifest["source"], scan.manifest["label"])}
    assert got == expected
