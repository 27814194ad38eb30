"""JPEGs decoded in batches on the model's device, run on the CPU: which files the batch decoder takes,
its batching and per-file fallback, and extraction's route for refused and broken files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import embedlens.extract
from conftest import extract_options, garbled_jpeg, pixels, save
from embedlens.backbones import load_backbone
from embedlens.datasets.folder import FolderDataset
from embedlens.extract import extract_features
from embedlens.images import batch_decodable_jpeg, decode_file
from embedlens.jpeg import decode_jpegs

TINY = {"name": "tiny", "kind": "timm", "model": "resnet10t", "pretrained": False,
        "preprocessing": {"resize": 32, "crop": 32}}


def smooth(h: int, w: int) -> Image.Image:
    """A photo-like RGB image (JPEG keeps it close)."""
    return Image.fromarray(pixels(h // 4 + 1, w // 4 + 1)).resize((w, h), Image.BILINEAR)


def rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


@pytest.fixture
def tree(tmp_path) -> Path:
    """A folder dataset with one file of each kind the JPEG route must tell apart."""
    root = tmp_path / "images"
    save(root / "a" / "baseline.jpg", smooth(48, 64), quality=90)
    save(root / "a" / "baseline_other_size.jpg", smooth(40, 30), quality=90)
    save(root / "a" / "grey.jpg", smooth(36, 36).convert("L"), quality=90)
    save(root / "a" / "progressive.jpg", smooth(48, 64), quality=90, progressive=True)
    save(root / "b" / "cmyk.jpg", smooth(48, 64).convert("CMYK"), quality=90)
    save(root / "b" / "png_named.JPEG", smooth(32, 48), format="PNG")
    save(root / "b" / "rotated.jpg", smooth(30, 50), quality=90, exif=rotated_exif())
    good = (root / "a" / "baseline.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(good[:len(good) // 2])
    (root / "b" / "garbled.jpg").write_bytes(garbled_jpeg(good))
    return root


def test_the_batch_decoder_takes_baseline_jpegs_only(tree):
    taken = {path.name for path in sorted(tree.rglob("*.*")) if batch_decodable_jpeg(path) is not None}
    # garbled.jpg has intact headers and an end marker: only decoding finds it broken
    assert taken == {"baseline.jpg", "baseline_other_size.jpg", "grey.jpg", "garbled.jpg"}
    rotated = tree / "b" / "rotated.jpg"
    assert batch_decodable_jpeg(rotated, exif_orientation=False) == rotated.read_bytes()  # imagenet's rule


def test_batched_decoding_gives_pils_pixels_and_sets_refused_files_apart(tree):
    good = [tree / "a" / "baseline.jpg", tree / "a" / "baseline_other_size.jpg", tree / "a" / "grey.jpg"]
    data = [torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8) for path in good]
    decoded = decode_jpegs(data, "cpu")
    for path, image in zip(good, decoded):
        assert image.dtype == torch.uint8 and image.shape[-1] == 3
        np.testing.assert_array_equal(image.numpy(), decode_file(path))
    refused = torch.frombuffer(bytearray((tree / "b" / "png_named.JPEG").read_bytes()), dtype=torch.uint8)
    mixed = decode_jpegs([data[0], refused, data[1]], "cpu")  # one refusal fails the batched call
    assert isinstance(mixed[1], str) and "JPEG" in mixed[1]
    assert torch.equal(mixed[0], decoded[0]) and torch.equal(mixed[2], decoded[1])
    assert decode_jpegs([], "cpu") == []


class MissedByTheCheck(FolderDataset):
    """A folder dataset that also sends a PNG and a truncated JPEG to the device decoder, as if the
    header check had missed them: exercises the fallback for files the decoder refuses."""

    def read_encoded(self, split, source):
        path = self.source_file(split, source)
        if path.name in ("png_named.JPEG", "truncated.jpg"):
            return path.read_bytes()
        return super().read_encoded(split, source)


@pytest.fixture(scope="module")
def tiny_backbone():
    return load_backbone(TINY)


@pytest.mark.parametrize("kind", [FolderDataset, MissedByTheCheck])
def test_extraction_decodes_jpegs_on_the_device_falls_back_and_lists_broken_files(tree, tiny_backbone, kind,
                                                                                 monkeypatch):
    dataset = kind({"name": "jpegs", "kind": "folder", "root": str(tree)})
    dataset.scan_workers = 1
    rows = dataset.scan().manifest
    sent = []

    def spy(data, device):
        sent.append(len(data))
        return decode_jpegs(data, device)

    monkeypatch.setattr(embedlens.extract, "decode_jpegs", spy)
    on_device, failed = extract_features(tiny_backbone, dataset, rows, device=torch.device("cpu"),
                                         **extract_options(batch_size=4, num_workers=1), decode_jpegs_on_device=True)
    in_workers, failed_in_workers = extract_features(tiny_backbone, dataset, rows, device=torch.device("cpu"),
                                                     **extract_options(batch_size=4, num_workers=0),
                                                     decode_jpegs_on_device=False)
    names = rows["source"].map(lambda s: Path(s).name).tolist()
    assert sum(sent) == (4 if kind is FolderDataset else 6)
    broken = {names.index("truncated.jpg"), names.index("garbled.jpg")}
    assert set(failed) == set(failed_in_workers) == broken  # skipped, with the reason, as in the workers
    assert all(failed[i] for i in broken)
    fine = [i for i in range(len(rows)) if i not in broken]
    np.testing.assert_allclose(on_device[fine], in_workers[fine], rtol=1e-5, atol=1e-5)
    assert np.all(on_device[list(broken)] == 0)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_nvjpeg_gives_pils_pixels_to_a_few_grey_levels_and_refuses_what_it_cannot_read(tree):
    good = [tree / "a" / "baseline.jpg", tree / "a" / "baseline_other_size.jpg", tree / "a" / "grey.jpg"]
    data = [torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8) for path in good]
    refused = torch.frombuffer(bytearray((tree / "b" / "png_named.JPEG").read_bytes()), dtype=torch.uint8)
    decoded = decode_jpegs([data[0], refused, *data[1:]], "cuda")
    assert isinstance(decoded[1], str)
    for path, image in zip(good, [decoded[0], *decoded[2:]]):
        assert image.is_cuda and image.dtype == torch.uint8
        difference = np.abs(image.cpu().numpy().astype(np.int16) - decode_file(path))
        assert difference.mean() < 1.0 and difference.max() <= 16


@pytest.mark.gpu
@needs_cuda
def test_cuda_extraction_decodes_jpegs_with_nvjpeg_and_lists_broken_files(tree, tiny_backbone):
    dataset = FolderDataset({"name": "jpegs", "kind": "folder", "root": str(tree)})
    dataset.scan_workers = 1
    rows = dataset.scan().manifest
    # decodes JPEGs on the device by default on CUDA
    on_gpu, failed = extract_features(tiny_backbone, dataset, rows, device=torch.device("cuda"),
                                      **extract_options(batch_size=4, num_workers=2))
    in_workers, _ = extract_features(tiny_backbone, dataset, rows, device=torch.device("cuda"),
                                     **extract_options(batch_size=4, num_workers=2), decode_jpegs_on_device=False)
    names = rows["source"].map(lambda s: Path(s).name).tolist()
    assert set(failed) == {names.index("truncated.jpg"), names.index("garbled.jpg")}
    fine = [i for i in range(len(rows)) if i not in failed]
    a, b = on_gpu[fine].astype(np.float64), in_workers[fine].astype(np.float64)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.999
