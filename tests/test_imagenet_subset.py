"""The streaming ImageNet subset builder: NPZ contract, ids, pixels against independent references."""

from __future__ import annotations

import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from imagenet_tree import NO_TRAIN_FOLDER, make_tree
from PIL import Image

from embedlens.config import section_defaults
from embedlens.datasets.imagenet import WnidListError, id_to_source, locate, original_ids, read_synset_mapping
from embedlens.imagenet_subset import (
    NpyMemberWriter, build_imagenet_subset, crc32_combine, output_paths, subset_list_file, subset_names,
)
from embedlens.parallel import ordered_map

from conftest import run_snakemake

WNIDS = ["n03126707", "n01440764", "n02012849", "n01443537"]  # not sorted: labels follow this order
KEYS = ["X_train", "y_train", "train_id", "X_val", "y_val", "val_id"]


def subset_options(**changes) -> dict:
    """The schema's ``imagenet_subsets`` settings that build_imagenet_subset takes, with ``changes``."""
    defaults = section_defaults("imagenet_subsets")
    return {key: defaults[key] for key in ("size", "resize", "splits", "chunk_size")} | changes


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("imagenet") / "imagenet")


@pytest.fixture(scope="module")
def wnid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lists") / "four.txt"
    path.write_text("\n".join(WNIDS) + "\n")
    return path


@pytest.fixture(scope="module")
def built(tree, wnid_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "four.npz"
    result = build_imagenet_subset(tree["root"], wnid_file, out, workers=2, **subset_options(chunk_size=3))
    return out, result


def pil_reference(path: Path, size: int = 224, resize: int = 256) -> np.ndarray:
    """PIL only: RGB, shorter side -> resize (bilinear; PIL antialiases when it reduces), centre crop."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        new = (resize, int(resize * height / width)) if width <= height else (int(resize * width / height), resize)
        image = image.resize(new, Image.BILINEAR)
        left = int(round((new[0] - size) / 2.0))
        top = int(round((new[1] - size) / 2.0))
        return np.asarray(image.crop((left, top, left + size, top + size)))


def torchvision_reference(path: Path, size: int = 224, resize: int = 256) -> np.ndarray:
    """The transforms the replaced script's users know: Resize(256, bilinear, antialias) + CenterCrop(224)."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    with Image.open(path) as image:
        image = image.convert("RGB")
        image = Resize(resize, InterpolationMode.BILINEAR, antialias=True)(image)
        return np.asarray(CenterCrop(size)(image))


def test_npz_contract(built):
    out, result = built
    with np.load(out) as data:
        assert data.files == KEYS
        arrays = {k: data[k] for k in KEYS}
    for split in ("train", "val"):
        X, y, ids = arrays[f"X_{split}"], arrays[f"y_{split}"], arrays[f"{split}_id"]
        assert X.dtype == np.uint8 and X.ndim == 4 and X.shape[1:] == (224, 224, 3)
        assert y.dtype == np.int32 and ids.dtype == np.int32
        assert len(X) == len(y) == len(ids) == result.splits[split].written > 0
        assert len(set(ids.tolist())) == len(ids)
    # train: class by class in list order, 4 images per class plus the awkward ones, minus the unreadable
    assert arrays["y_train"].tolist() == sorted(arrays["y_train"].tolist())
    assert set(arrays["y_train"].tolist()) == {0, 1, 2, 3}
    assert result.splits["train"].written == 4 * 4 + 3 and result.splits["train"].skipped == 1
    # val: in id order; two files of the listed classes are missing / truncated
    assert arrays["val_id"].tolist() == sorted(arrays["val_id"].tolist())
    assert result.splits["val"].skipped == 2
    with zipfile.ZipFile(out) as archive:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
        assert archive.testzip() is None  # every member's CRC-32 checks out (headers rewritten in place)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_ids_decode_to_the_right_files_and_pixels(built, tree):
    out, _ = built
    mapping = read_synset_mapping(locate(tree["root"]).synset_mapping)
    files = pd.read_csv(output_paths(out)["files"])
    with np.load(out) as data:
        for split in ("train", "val"):
            X, y, ids = data[f"X_{split}"], data[f"y_{split}"], data[f"{split}_id"]
            rows = files[files["split"] == split]
            assert rows["id"].tolist() == ids.tolist() and rows["label"].tolist() == y.tolist()
            for i, (image_id, label) in enumerate(zip(ids.tolist(), y.tolist())):
                path = id_to_source(tree["root"], split, image_id)
                assert path == tree["root"] / rows["source"].iloc[i]
                wnid = path.parent.name if split == "train" else tree["val_labels"][path.stem]
                assert WNIDS[label] == wnid
                if split == "train":
                    assert image_id // 100000 == original_ids(mapping)[wnid]
                assert np.array_equal(X[i], pil_reference(path)), (split, path)
                assert np.array_equal(X[i], torchvision_reference(path)), (split, path)
    sources = set(files["source"])
    for kind in ("gray", "cmyk", "png"):  # the awkward files made it, as RGB
        assert tree["special"][kind] in sources


def test_metadata_and_skipped(built, tree):
    out, _ = built
    paths = output_paths(out)
    mapping = read_synset_mapping(locate(tree["root"]).synset_mapping)
    metadata = pd.read_csv(paths["metadata"])
    assert list(metadata.columns) == ["subset_label", "original_id", "WNID", "human_label"]
    assert metadata["subset_label"].tolist() == [0, 1, 2, 3]
    assert metadata["WNID"].tolist() == WNIDS
    assert metadata["original_id"].tolist() == [sorted(mapping).index(w) for w in WNIDS]
    assert metadata["human_label"].tolist() == ["crane_n03126707", "tench", "crane_n02012849", "goldfish"]
    skipped = pd.read_csv(paths["skipped"])
    assert list(skipped.columns) == ["split", "id", "source", "reason"]
    listed = {s for s in tree["bad"] if any(w in s for w in WNIDS) or "val" in s}
    assert set(skipped["source"]) == listed - {s for s in tree["bad"] if "n03710637" in s}
    assert skipped["reason"].str.len().min() > 0
    with np.load(out) as data:
        for row in skipped.itertuples():
            assert row.id not in data[f"{row.split}_id"]
            assert id_to_source(tree["root"], row.split, row.id) == tree["root"] / row.source


def test_sizes_one_worker_and_val_only(tree, wnid_file, tmp_path):
    out = tmp_path / "small.npz"
    result = build_imagenet_subset(tree["root"], wnid_file, out, workers=1,
                                   **subset_options(size=32, resize=40, splits=["val"]))
    assert result.splits["val"].written > 0 and "train" not in result.splits
    with np.load(out) as data:
        assert data.files == KEYS
        assert data["X_train"].shape == (0, 32, 32, 3) and data["y_train"].shape == (0,)
        X, ids = data["X_val"], data["val_id"]
        assert X.shape[1:] == (32, 32, 3)
        for row, image_id in enumerate(ids.tolist()):
            path = id_to_source(tree["root"], "val", image_id)
            assert np.array_equal(X[row], pil_reference(path, 32, 40))
    # val only: a class without a train folder is fine
    listing = tmp_path / "l.txt"
    listing.write_text(f"{NO_TRAIN_FOLDER}\n")
    result = build_imagenet_subset(tree["root"], listing, tmp_path / "v.npz", workers=1,
                                   **subset_options(splits=["val"]))
    assert result.splits["val"].written == 2


def test_list_errors_stop_before_any_output(tree, tmp_path):
    listing = tmp_path / "bad.txt"
    listing.write_text(f"n01440764\nn01440764\nn07777777\n{NO_TRAIN_FOLDER}\n")
    out = tmp_path / "out" / "bad.npz"
    with pytest.raises(WnidListError) as error:
        build_imagenet_subset(tree["root"], listing, out, **subset_options())
    assert "n01440764" in str(error.value) and "n07777777" in str(error.value)
    assert NO_TRAIN_FOLDER in str(error.value)
    assert not out.parent.exists() or not list(out.parent.iterdir())
    with pytest.raises(FileNotFoundError, match="not a shipped list"):
        build_imagenet_subset(tree["root"], "imagenet_nope", out, **subset_options())
    with pytest.raises(ValueError, match="larger than resize"):
        build_imagenet_subset(tree["root"], listing, out, **subset_options(size=300))


def test_npy_member_writer_fewer_rows_than_announced(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (1003, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        writer = NpyMemberWriter(archive, "X", (4, 4, 3), np.uint8, max_rows=100_000)  # 6 digits -> 4
        for start in range(0, 1003, 100):
            writer.write(rows[start:start + 100])
        writer.close()
        _ = NpyMemberWriter(archive, "empty", (4,), np.int32, max_rows=0)
        _.close()
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
    with np.load(path) as data:
        assert np.array_equal(data["X"], rows) and data["empty"].shape == (0, 4)
    for a, b in [(b"", b"x"), (b"abc", b""), (bytes(range(256)) * 3, bytes(1000) + b"z")]:
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_failed_build_leaves_nothing(tree, wnid_file, tmp_path, monkeypatch):
    import embedlens.imagenet_subset as module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "write_table", broken)
    out = tmp_path / "out" / "four.npz"
    with pytest.raises(OSError, match="disk full"):
        build_imagenet_subset(tree["root"], wnid_file, out, workers=1, **subset_options())
    assert list(out.parent.iterdir()) == []  # no NPZ, no CSV, no temporary file


def test_config_section_helpers(wnid_file):
    assert subset_names(None) == [] and subset_names({}) == []
    section = {"root": "/x", "size": 224, "resize": 256,
               "subsets": [{"name": "imagenet100"}, {"name": "mine", "list": str(wnid_file)}]}
    assert subset_names(section) == ["imagenet100", "mine"]
    assert subset_list_file(section, "imagenet100").name == "imagenet100.txt"  # list defaults to the name
    assert subset_list_file(section, "mine") == wnid_file
    with pytest.raises(ValueError, match="repeated: mine"):
        subset_names({**section, "subsets": section["subsets"] + [{"name": "mine"}]})
    with pytest.raises(ValueError, match="larger than resize"):
        subset_names({**section, "size": 300})
    with pytest.raises(FileNotFoundError, match="subset 'x'"):
        subset_list_file({"subsets": [{"name": "x", "list": "no/such/list.txt"}]}, "x")


def test_ordered_map_keeps_order_and_bounds_pending():
    pulled = []
    lock = threading.Lock()

    def tasks():
        for i in range(40):
            with lock:
                pulled.append(i)
            yield i

    results = []
    for i, value in enumerate(ordered_map(abs, tasks(), workers=2, max_pending=3)):
        time.sleep(0.005)
        with lock:
            ahead = len(pulled) - i
        assert ahead <= 3 + 1  # at most max_pending tasks beyond the one being consumed
        results.append(value)
    assert results == list(range(40))


@pytest.mark.workflow
def test_rule_builds_targets(tree, wnid_file, tmp_path):
    """The imagenet_subset rule of the workflow, on a small ILSVRC-like tree."""
    results = tmp_path / "results"
    config = {
        "results": str(results),
        "datasets": [{"name": "inet", "kind": "imagenet", "root": str(tree["root"]), "wnids": str(wnid_file)}],
        "backbones": [{"name": "b", "kind": "timm", "model": "m"}],
        "imagenet_subsets": {"root": str(tree["root"]), "workers": 2,
                             "subsets": [{"name": "four", "list": str(wnid_file)}, {"name": "imagenet30"}]},
    }
    run = run_snakemake(tmp_path, f"{results}/imagenet_subset/four.npz", config=config)
    assert run.returncode == 0, run.stderr[-3000:]
    for suffix in (".npz", "_cls_metadata.csv", "_skipped.csv", "_files.csv"):
        assert (results / "imagenet_subset" / f"four{suffix}").is_file()
    log = (results / "logs" / "imagenet_subset" / "four.log").read_text()
    assert "skipped" in log and "train" in log
    # imagenet30 names classes this tree does not have: reported by name before any work
    run = run_snakemake(tmp_path, f"{results}/imagenet_subset/imagenet30.npz", config=config)
    assert run.returncode != 0
    assert "not in the synset mapping: n12267677" in run.stderr
    assert not (results / "imagenet_subset" / "imagenet30.npz").exists()
