"""The ``folder`` dataset kind: a directory tree of images, built here with PIL in tmp_path."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedlens.datasets import KINDS, open_dataset
from embedlens.datasets.folder import FolderDataset
from embedlens.images import check_headers
from embedlens.manifest import MANIFEST_COLUMNS, SKIPPED_COLUMNS

from conftest import pixels, save


def spec(root, **extra) -> dict:
    return {"name": "tree", "kind": "folder", "root": str(root), **extra}


@pytest.fixture()
def tree(tmp_path):
    """A messy tree: several formats and modes, nesting, a loose image, corrupt files, non-images."""
    root = tmp_path / "images"
    src = {}
    src["cat/a.png"] = pixels()
    save(root / "cat/a.png", Image.fromarray(src["cat/a.png"]))
    save(root / "cat/b.jpg", Image.fromarray(pixels(16, 16)), quality=90)
    src["cat/gray.png"] = pixels(channels=1)
    save(root / "cat/gray.png", Image.fromarray(src["cat/gray.png"], "L"))
    src["cat/sub/deep/c.PNG"] = pixels(3, 7)
    save(root / "cat/sub/deep/c.PNG", Image.fromarray(src["cat/sub/deep/c.PNG"]))
    src["dog/rgba.png"] = pixels(channels=4)
    save(root / "dog/rgba.png", Image.fromarray(src["dog/rgba.png"], "RGBA"))
    save(root / "dog/pal.png", Image.fromarray(pixels()).quantize(8))
    save(root / "dog/cmyk.jpg", Image.fromarray(pixels(8, 8, 4), "CMYK"), quality=95)
    src["dog/w.webp"] = pixels()
    save(root / "dog/w.webp", Image.fromarray(src["dog/w.webp"]), lossless=True)
    src["dog/i16.png"] = (np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000)
    save(root / "dog/i16.png", Image.fromarray(src["dog/i16.png"]))
    assert Image.open(root / "dog/i16.png").mode == "I;16"
    jpeg = save(root / "dog/trunc.jpg", Image.fromarray(pixels(32, 32)), quality=90).read_bytes()
    (root / "dog/trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "dog/zero.png").write_bytes(b"")
    (root / "dog/fake.png").write_text("not an image at all")
    (root / "dog/notes.txt").write_text("ignored: not an image extension")
    src["loose.png"] = pixels()
    save(root / "loose.png", Image.fromarray(src["loose.png"]))
    (root / "empty_folder/nested").mkdir(parents=True)              # no images: not a class
    save(root / ".hidden/x.png", Image.fromarray(pixels()))         # hidden: ignored
    save(root / "cat/.thumb.png", Image.fromarray(pixels()))        # hidden file: ignored
    return root, src


EXPECTED_ROWS = [
    (0, "train", 0, "cat", "cat/a.png"),
    (1, "train", 0, "cat", "cat/b.jpg"),
    (2, "train", 0, "cat", "cat/gray.png"),
    (3, "train", 0, "cat", "cat/sub/deep/c.PNG"),
    (4, "train", 1, "dog", "dog/cmyk.jpg"),
    # 5 dog/fake.png: skipped
    (6, "train", 1, "dog", "dog/i16.png"),
    (7, "train", 1, "dog", "dog/pal.png"),
    (8, "train", 1, "dog", "dog/rgba.png"),
    (9, "train", 1, "dog", "dog/trunc.jpg"),   # its header is whole: extraction, not the scan, finds it
    (10, "train", 1, "dog", "dog/w.webp"),
    # 11 dog/zero.png: skipped
    (12, "train", -1, "", "loose.png"),
]


def test_registered_and_opened_from_a_config_entry(tree):
    root, _ = tree
    assert KINDS["folder"] is FolderDataset
    dataset = open_dataset(spec(root))
    assert isinstance(dataset, FolderDataset) and dataset.splits == ["train"]


def test_manifest_labels_and_skipped_rows_are_exact(tree):
    root, _ = tree
    scan = FolderDataset(spec(root)).scan()
    assert scan.class_names == ["cat", "dog"]
    assert list(scan.manifest.columns) == MANIFEST_COLUMNS
    assert [tuple(row) for row in scan.manifest.itertuples(index=False)] == EXPECTED_ROWS
    assert scan.manifest["index_in_split"].dtype == np.int64 and scan.manifest["label"].dtype == np.int64

    assert list(scan.skipped.columns) == SKIPPED_COLUMNS
    skipped = {row.source: row.reason for row in scan.skipped.itertuples(index=False)}
    assert list(skipped) == ["dog/fake.png", "dog/zero.png"]
    assert set(scan.skipped["split"]) == {"train"}
    assert skipped["dog/fake.png"] == "cannot identify image file"
    assert skipped["dog/zero.png"] == "empty file (0 bytes)"
    assert all(str(root) not in reason and len(reason) <= 200 for reason in skipped.values())


def test_read_image_gives_rgb_uint8_equal_to_the_source(tree):
    root, src = tree
    dataset = FolderDataset(spec(root))
    manifest = dataset.scan().manifest
    with pytest.raises(OSError, match="image file is truncated"):
        dataset.read_image("train", "dog/trunc.jpg")
    images = {row.source: dataset.read_image(row.split, row.source) for row in manifest.itertuples()
              if row.source != "dog/trunc.jpg"}
    for source, image in images.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, source
        assert image.flags.c_contiguous and image.flags.writeable
    for lossless in ("cat/a.png", "cat/sub/deep/c.PNG", "dog/w.webp", "loose.png"):
        np.testing.assert_array_equal(images[lossless], src[lossless])
    np.testing.assert_array_equal(images["cat/gray.png"], np.repeat(src["cat/gray.png"][:, :, None], 3, 2))
    np.testing.assert_array_equal(images["dog/rgba.png"], src["dog/rgba.png"][:, :, :3])  # alpha dropped
    for converted in ("dog/pal.png", "dog/cmyk.jpg", "cat/b.jpg"):
        expected = np.asarray(Image.open(root / converted).convert("RGB"))
        np.testing.assert_array_equal(images[converted], expected)
    # 16-bit grey is scaled to 8 bits (PIL's own convert would clip everything above 255 to white).
    expected16 = np.rint(src["dog/i16.png"] / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(images["dog/i16.png"], np.repeat(expected16[:, :, None], 3, 2))


def test_source_file_is_the_absolute_path_and_sources_are_posix_relative(tree):
    root, _ = tree
    dataset = FolderDataset(spec(root))
    for source in dataset.scan().manifest["source"]:
        assert not source.startswith("/") and "\\" not in source
        path = dataset.source_file("train", source)
        assert path.is_absolute() and path == root / source and path.is_file()


def test_exif_orientation_is_applied(tmp_path):
    original = pixels(4, 6)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was rotated: display rotated 90 degrees clockwise
    save(tmp_path / "r/x/photo.png", Image.fromarray(original), exif=exif)
    dataset = FolderDataset(spec(tmp_path / "r"))
    image = dataset.read_image("train", dataset.scan().manifest["source"][0])
    np.testing.assert_array_equal(image, np.rot90(original, k=-1))


def test_tree_without_class_folders_is_one_unlabelled_set(tmp_path):
    for name in ("b.png", "a.png", "c.jpg"):
        save(tmp_path / name, Image.fromarray(pixels()))
    scan = FolderDataset(spec(tmp_path)).scan()
    assert scan.class_names == []
    assert scan.manifest["source"].tolist() == ["a.png", "b.png", "c.jpg"]
    assert scan.manifest["label"].tolist() == [-1, -1, -1]
    assert scan.manifest["class_name"].tolist() == ["", "", ""]
    assert scan.skipped.empty


def test_splits_are_sub_folders_and_share_labels(tmp_path):
    for path in ("train/cat/1.png", "train/cat/2.png", "train/dog/1.png",
                 "test/bird/1.png", "test/cat/9.png", "test/top.png", "unused/cat/x.png"):
        save(tmp_path / path, Image.fromarray(pixels()))
    dataset = FolderDataset(spec(tmp_path, splits=["train", "test"]))
    scan = dataset.scan()
    assert scan.class_names == ["bird", "cat", "dog"]  # the union over the splits
    assert [tuple(row) for row in scan.manifest.itertuples(index=False)] == [
        (0, "train", 1, "cat", "train/cat/1.png"),
        (1, "train", 1, "cat", "train/cat/2.png"),
        (2, "train", 2, "dog", "train/dog/1.png"),
        (0, "test", 0, "bird", "test/bird/1.png"),
        (1, "test", 1, "cat", "test/cat/9.png"),
        (2, "test", -1, "", "test/top.png"),
    ]
    assert dataset.source_file("test", "test/cat/9.png") == tmp_path / "test/cat/9.png"
    # Order of the splits follows the config.
    only_test = FolderDataset(spec(tmp_path, splits=["test"])).scan().manifest
    assert only_test["split"].unique().tolist() == ["test"]


def test_classes_and_max_per_class_filters(tree):
    root, _ = tree
    scan = FolderDataset(spec(root, classes=["dog"], max_per_class=2)).scan()
    assert scan.class_names == ["cat", "dog"]  # labels keep their meaning
    assert scan.manifest["source"].tolist() == ["dog/cmyk.jpg", "dog/i16.png"]
    assert scan.manifest["label"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="horse"):
        FolderDataset(spec(root, classes=["horse"])).scan()


def test_extensions_are_case_insensitive_and_configurable(tree):
    root, _ = tree
    scan = FolderDataset(spec(root, extensions=[".PNG"])).scan()
    sources = scan.manifest["source"].tolist() + scan.skipped["source"].tolist()
    assert all(s.lower().endswith(".png") for s in sources)
    assert "cat/sub/deep/c.PNG" in sources and "cat/a.png" in sources
    with pytest.raises(ValueError, match="extensions"):
        FolderDataset(spec(root, extensions=["png"]))


def test_parallel_check_equals_serial_check(tree):
    root, _ = tree
    serial = FolderDataset(spec(root))
    serial.scan_workers = 1
    parallel = FolderDataset(spec(root))
    parallel.scan_workers, parallel.scan_chunk_size = 2, 2
    a, b = serial.scan(), parallel.scan()
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    pd.testing.assert_frame_equal(a.skipped, b.skipped)
    paths = [str(root / "dog/fake.png"), str(root / "cat/a.png"), str(root / "dog/zero.png")] * 3
    assert check_headers(paths, workers=2, chunk_size=2) == ["cannot identify image file", None,
                                                             "empty file (0 bytes)"] * 3


def test_picklable_for_loader_workers(tree):
    root, src = tree
    dataset = FolderDataset(spec(root))
    dataset.scan()
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone.read_image("train", "cat/a.png"), src["cat/a.png"])


def test_relative_root_is_resolved_against_the_working_directory(tree, monkeypatch):
    root, _ = tree
    monkeypatch.chdir(root.parent)
    dataset = FolderDataset(spec("images"))
    monkeypatch.chdir("/")
    assert dataset.root == root
    assert len(dataset.scan().manifest) == len(EXPECTED_ROWS)


def test_symlinked_class_folder_is_followed_and_a_loop_is_not(tmp_path):
    save(tmp_path / "elsewhere/lion.png", Image.fromarray(pixels()))
    save(tmp_path / "root/cat/1.png", Image.fromarray(pixels()))
    os.symlink(tmp_path / "elsewhere", tmp_path / "root/lion")
    os.symlink(tmp_path / "root/cat", tmp_path / "root/cat/again")  # a loop
    scan = FolderDataset(spec(tmp_path / "root")).scan()
    assert scan.manifest["source"].tolist() == ["cat/1.png", "lion/lion.png"]


def test_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"root {missing} does not exist.*one sub-folder per class"):
        FolderDataset(spec(missing)).scan()
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="file.png is a file"):
        FolderDataset(spec(tmp_path / "file.png")).scan()
    save(tmp_path / "r/train/cat/1.png", Image.fromarray(pixels()))
    with pytest.raises(FileNotFoundError, match=r"split 'val' has no folder .*r/val.*\['train'\]"):
        FolderDataset(spec(tmp_path / "r", splits=["train", "val"])).scan()
    (tmp_path / "txt/a").mkdir(parents=True)
    (tmp_path / "txt/a/readme.md").write_text("x")
    with pytest.raises(ValueError, match=r"no image files under .*txt.*\.md \(1\)"):
        FolderDataset(spec(tmp_path / "txt")).scan()
    with pytest.raises(ValueError, match="root"):
        FolderDataset({"name": "tree", "kind": "folder"})
    with pytest.raises(ValueError, match="splits.*more than once"):
        FolderDataset(spec(tmp_path / "r", splits=["train", "train"]))
