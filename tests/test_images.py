"""embedlens.images: colour modes, EXIF, reasons, and the parallel header check (parallel == serial)."""

from __future__ import annotations

import io
import os
import signal

import numpy as np
import pytest
from imagenet_tree import make_tree
from PIL import Image

import embedlens.images as images
from embedlens.datasets.base import ImageDataset
from embedlens.datasets.folder import FolderDataset
from embedlens.datasets.imagenet import ImageNet
from embedlens.images import (
    EMPTY_FILE, check_headers, check_in_chunks, decode_file, header_reason, open_rgb, rgb_image, short_reason,
    to_rgb,
)
from embedlens.parallel import WorkerDied, ordered_map

from conftest import pixels, save


def check_rgb(array: np.ndarray, shape: tuple[int, int]) -> None:
    assert array.dtype == np.uint8 and array.shape == (*shape, 3)
    assert array.flags.c_contiguous and array.flags.writeable


# --- modes -------------------------------------------------------------------------------------------

def converted_by_pil():
    """Images whose RGB is PIL's own convert("RGB")."""
    rgb = pixels()
    palette = Image.fromarray(rgb).quantize(8)
    palette.info["transparency"] = 0
    return {
        "L": Image.fromarray(pixels(channels=1), "L"),
        "LA": Image.fromarray(pixels(channels=2), "LA"),
        "1": Image.fromarray(pixels(channels=1) > 128),
        "P": palette,
        "PA": Image.fromarray(rgb).quantize(8).convert("PA"),
        "CMYK": Image.fromarray(pixels(channels=4), "CMYK"),
        "YCbCr": Image.fromarray(rgb).convert("YCbCr"),
        "HSV": Image.fromarray(rgb).convert("HSV"),
        "LAB": Image.fromarray(rgb).convert("LAB"),
    }


@pytest.mark.parametrize("mode", list(converted_by_pil()))
def test_modes_go_through_pils_convert(mode):
    image = converted_by_pil()[mode]
    assert image.mode == mode
    expected = np.asarray(image.convert("RGB"))
    array = to_rgb(image)
    check_rgb(array, (image.height, image.width))
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_array_equal(np.asarray(rgb_image(image)), expected)


def test_rgb_is_unchanged_and_alpha_is_dropped():
    rgb, rgba = pixels(), pixels(channels=4)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgb)), rgb)
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgba, "RGBA")), rgba[:, :, :3])
    image = Image.fromarray(rgb)
    assert rgb_image(image) is image  # nothing to do: no copy
    array = to_rgb(image)
    array[0, 0] = 0  # a copy, never a view into the image
    np.testing.assert_array_equal(np.asarray(image), rgb)


def test_deep_grey_is_scaled_not_clipped():
    levels = np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000
    i16 = Image.fromarray(levels)
    assert i16.mode == "I;16"
    expected = np.rint(levels / 257.0).astype(np.uint8)
    i32 = Image.fromarray(levels.astype(np.int32) - 1000)  # mode I; negatives clip to black
    float_grey = Image.fromarray(np.linspace(-0.5, 1.5, 30, dtype=np.float32).reshape(6, 5))
    cases = {
        "I;16": (i16, expected),
        "I": (i32, np.rint(np.clip(levels.astype(np.float64) - 1000, 0, 65535) * 255 / 65535).astype(np.uint8)),
        "F": (float_grey, np.rint(np.clip(np.asarray(float_grey, np.float64), 0, 1) * 255).astype(np.uint8)),
    }
    for mode, (image, grey) in cases.items():
        assert image.mode == mode
        array = to_rgb(image)
        check_rgb(array, (6, 5))
        np.testing.assert_array_equal(array, np.repeat(grey[:, :, None], 3, axis=2), err_msg=mode)
        np.testing.assert_array_equal(np.asarray(rgb_image(image)), array, err_msg=mode)


# --- EXIF orientation ---------------------------------------------------------------------------------

UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.rot90(a, k=-1)[::-1],
    8: lambda a: np.rot90(a, k=1),
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation(tmp_path, orientation):
    original = pixels(4, 6)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / "photo.png", Image.fromarray(original), exif=exif)
    expected = UPRIGHT[orientation](original)
    np.testing.assert_array_equal(decode_file(path), expected)
    np.testing.assert_array_equal(np.asarray(open_rgb(path)), expected)
    # ImageNet's way: the tag is ignored
    np.testing.assert_array_equal(decode_file(path, exif_orientation=False), original)
    np.testing.assert_array_equal(np.asarray(open_rgb(path, exif_orientation=False)), original)


def test_damaged_exif_is_ignored(monkeypatch):
    image = Image.fromarray(pixels())

    def broken():
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr(image, "getexif", broken)
    np.testing.assert_array_equal(to_rgb(image), np.asarray(image))


# --- files and reasons ---------------------------------------------------------------------------------

def garbled_jpeg(jpeg: bytes) -> bytes:
    """``jpeg`` with every header intact and its compressed pixel data replaced by stray SOF markers,
    which libjpeg rejects (plain random bytes there decode to noise without an error)."""
    scan = jpeg.index(b"\xff\xda")  # start of scan: its header, then the compressed data
    data = scan + 2 + int.from_bytes(jpeg[scan + 2:scan + 4], "big")
    return jpeg[:data] + b"\xff\xc0" * ((len(jpeg) - data) // 2) + b"\xff\xd9"


@pytest.fixture()
def files(tmp_path):
    """Readable and unreadable files; {name: path}."""
    made = {}
    made["ok.png"] = save(tmp_path / "ok.png", Image.fromarray(pixels()))
    made["ok.jpg"] = save(tmp_path / "ok.jpg", Image.fromarray(pixels(16, 16)), quality=90)
    made["cmyk.jpg"] = save(tmp_path / "cmyk.jpg", Image.fromarray(pixels(8, 8, 4), "CMYK"))
    jpeg = save(tmp_path / "trunc.jpg", Image.fromarray(pixels(64, 64)), quality=90).read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    made["trunc.jpg"] = tmp_path / "trunc.jpg"
    made["garbled.jpg"] = tmp_path / "garbled.jpg"
    made["garbled.jpg"].write_bytes(garbled_jpeg(jpeg))
    made["cut_header.jpg"] = tmp_path / "cut_header.jpg"
    made["cut_header.jpg"].write_bytes(jpeg[:60])  # ends inside the quantisation tables
    made["zero.png"] = tmp_path / "zero.png"
    made["zero.png"].write_bytes(b"")
    made["text.jpg"] = tmp_path / "text.jpg"
    made["text.jpg"].write_text("not an image at all")
    made["missing.png"] = tmp_path / "missing.png"
    return made


PASS_THE_HEADER_CHECK = ("ok.png", "ok.jpg", "cmyk.jpg", "trunc.jpg", "garbled.jpg")


def test_decode_file_and_open_rgb_agree_and_outlive_the_file(files):
    for name in ("ok.png", "ok.jpg", "cmyk.jpg"):
        array = decode_file(files[name])
        image = open_rgb(files[name])  # the file is closed: the pixels must not depend on it
        assert image.mode == "RGB"
        check_rgb(array, (image.height, image.width))
        np.testing.assert_array_equal(np.asarray(image), array)
        with Image.open(files[name]) as reference:
            np.testing.assert_array_equal(array, np.asarray(reference.convert("RGB")))


def test_unreadable_files_raise(files):
    for name in ("trunc.jpg", "garbled.jpg", "cut_header.jpg", "zero.png", "text.jpg", "missing.png"):
        with pytest.raises(Exception):
            decode_file(files[name])
        with pytest.raises(Exception):
            open_rgb(files[name])


def test_damaged_pixel_data_passes_the_header_check_but_does_not_decode(files):
    for name, error in (("trunc.jpg", "image file is truncated"), ("garbled.jpg", "broken data stream")):
        assert header_reason(files[name]) is None, name
        with Image.open(files[name]) as image:
            assert image.format == "JPEG" and image.size == (64, 64)
        with pytest.raises(OSError, match=error):
            decode_file(files[name])


def test_header_reasons_are_short_and_name_no_path(files):
    reasons = {name: header_reason(path) for name, path in files.items()}
    assert [name for name, reason in reasons.items() if reason is None] == list(PASS_THE_HEADER_CHECK)
    assert reasons["zero.png"] == EMPTY_FILE == "empty file (0 bytes)"
    assert reasons["text.jpg"] == "cannot identify image file"
    assert reasons["missing.png"] == "[Errno 2] No such file or directory"
    assert reasons["cut_header.jpg"] == "Truncated File Read"
    folder = str(files["ok.png"].parent)
    for reason in filter(None, reasons.values()):
        assert folder not in reason and "\n" not in reason and len(reason) <= 200


def test_short_reason():
    path = "/data/some folder/x.png"
    assert short_reason(OSError(f"cannot identify image file {path!r}"), path) == "cannot identify image file"
    assert short_reason(OSError(f'broken: "{path}"'), path) == "broken"
    assert short_reason(OSError(f"{path}: bad\n  header"), path) == "bad header"
    assert short_reason(OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c0d90>")) == \
        "cannot identify image file"
    assert short_reason(ValueError(path), path) == "ValueError"
    assert short_reason(ValueError("")) == "ValueError"
    assert len(short_reason(ValueError("x" * 1000))) == 200


def test_hugging_face_style_bytes_reason():
    """An image that is not a file gets the same wording (no object address that changes every run)."""
    with pytest.raises(Exception) as error:
        Image.open(io.BytesIO(b"not an image"))
    assert short_reason(error.value) == "cannot identify image file"


# --- many files in parallel ------------------------------------------------------------------------------

def test_parallel_check_equals_serial_check_in_order(files):
    names = list(files) * 7
    paths = [str(files[name]) for name in names]
    serial = check_headers(paths, workers=1)
    assert serial == [header_reason(path) for path in paths]
    assert [r is None for r in serial] == [name in PASS_THE_HEADER_CHECK for name in names]
    for workers, chunk_size in ((2, 1), (2, 3), (3, 5), (2, None), (None, 4)):
        assert check_headers(paths, workers=workers, chunk_size=chunk_size) == serial, (workers, chunk_size)
    assert check_headers([]) == []


def test_one_worker_or_one_chunk_runs_in_this_process(files, monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("ordered_map must not be used")

    monkeypatch.setattr(images, "ordered_map", no_pool)
    paths = [str(path) for path in files.values()]
    assert check_headers(paths, workers=1, chunk_size=1)[0] is None
    assert check_headers(paths, workers=4)[0] is None  # 9 files: one automatic chunk (16 at least)


def _reason_or_die(path: str) -> str | None:
    if path.endswith("die.png"):
        os.kill(os.getpid(), signal.SIGKILL)  # what a segfaulting decoder does to its worker
    return None


def test_a_decoder_that_kills_its_worker_is_an_error_naming_where(tmp_path, monkeypatch):
    paths = [str(tmp_path / f"{i}.png") for i in range(6)] + [str(tmp_path / "die.png")]
    paths += [str(tmp_path / f"{i}.png") for i in range(6, 12)]
    monkeypatch.setattr(images, "header_reason", _reason_or_die)  # inherited by the forked workers
    with pytest.raises(RuntimeError) as error:
        check_headers(paths, workers=2, chunk_size=2)
    message = str(error.value)
    assert "crashed its worker process" in message and "killed by signal 9" in message
    assert "move the offending file out of the tree" in message and "(chunks of 2)" in message
    named = message.split("from ", 1)[1].split(" on (", 1)[0]
    # the first file not yet checked: the chunk of die.png (index 6), unless the earlier chunks were slow
    assert named in paths[0:7:2]
    assert isinstance(error.value.__cause__, WorkerDied)


def test_crash_message_names_the_first_item_of_the_lost_chunk(monkeypatch):
    def dying(func, tasks, workers, max_pending=None):
        tasks = iter(tasks)
        yield func(next(tasks))
        yield func(next(tasks))
        raise WorkerDied(2, -11)

    monkeypatch.setattr(images, "ordered_map", dying)
    with pytest.raises(RuntimeError, match=r"killed by signal 11.*checking the rows from row 6 on \(chunks of 3\); "
                                           r"drop it"):
        check_in_chunks(lambda rows: [None] * len(rows), range(10), workers=2, chunk_size=3, what="rows",
                        describe=lambda row: f"row {row}", remedy="drop it")


def _exit_on_three(x: int) -> int:
    if x == 3:
        os._exit(7)
    return x


def test_ordered_map_raises_when_a_worker_dies():
    results = []
    with pytest.raises(WorkerDied) as error:
        for value in ordered_map(_exit_on_three, range(10), workers=2):
            results.append(value)
    assert error.value.exitcode == 7 and error.value.index <= 3
    assert results == list(range(error.value.index))


# --- one setting for every kind --------------------------------------------------------------------------

def test_scan_workers_is_one_attribute_of_the_base_class():
    assert ImageDataset.scan_workers is None and ImageDataset.scan_chunk_size is None
    kinds = [FolderDataset, ImageNet]
    try:
        from embedlens.datasets.huggingface import HuggingFace
        kinds.append(HuggingFace)
    except ImportError:  # pragma: no cover
        pass
    for kind in kinds:
        assert "scan_workers" not in vars(kind) and "scan_chunk_size" not in vars(kind), kind


@pytest.fixture()
def pool_calls(monkeypatch):
    """The worker counts that scans hand to ordered_map."""
    calls = []

    def recording(func, tasks, workers, max_pending=None):
        calls.append(workers)
        return ordered_map(func, tasks, workers, max_pending)

    monkeypatch.setattr(images, "ordered_map", recording)
    return calls


def test_folder_and_imagenet_scans_use_scan_workers(tmp_path, pool_calls):
    for i in range(6):
        save(tmp_path / "folder" / "cat" / f"{i}.png", Image.fromarray(pixels()))
    tree = make_tree(tmp_path / "imagenet")
    (tmp_path / "list.txt").write_text("n01440764\nn01443537\n")
    datasets = [FolderDataset({"name": "f", "kind": "folder", "root": str(tmp_path / "folder")}),
                ImageNet({"name": "i", "kind": "imagenet", "root": str(tree["root"]), "workers": 5,
                          "wnids": str(tmp_path / "list.txt")})]
    for dataset in datasets:
        assert not hasattr(dataset, "workers")  # the spec key is not read
        dataset.scan_workers = 1
        serial = dataset.scan()
        assert pool_calls == []
        dataset.scan_workers, dataset.scan_chunk_size = 2, 2
        parallel = dataset.scan()
        assert pool_calls and set(pool_calls) == {2}
        assert serial.manifest.equals(parallel.manifest) and serial.skipped.equals(parallel.skipped)
        pool_calls.clear()


def test_huggingface_scan_uses_scan_workers(tmp_path, pool_calls):
    datasets = pytest.importorskip("datasets")
    from embedlens.datasets.huggingface import HuggingFace

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    cells = [{"bytes": png(pixels()), "path": None} for _ in range(7)]
    cells[4] = {"bytes": b"not an image", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int32")})
    datasets.Dataset.from_dict({"image": cells, "label": [0] * 7}, features=features).save_to_disk(
        str(tmp_path / "hf"))
    dataset = HuggingFace({"name": "h", "kind": "huggingface", "path": str(tmp_path / "hf"), "workers": 5,
                           "cache_dir": str(tmp_path / "cache")})
    assert not hasattr(dataset, "workers")
    dataset.scan_workers = 1
    serial = dataset.scan()
    assert pool_calls == []
    assert serial.skipped.values.tolist() == [["train", "4", "cannot identify image file"]]
    dataset.scan_workers, dataset.scan_chunk_size = 2, 3
    parallel = dataset.scan()
    assert set(pool_calls) == {2}
    assert serial.manifest.equals(parallel.manifest) and serial.skipped.equals(parallel.skipped)
