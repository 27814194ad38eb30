"""Preprocessing: resize, centre crop, scale and normalise, on the model's device or with PIL.

The replaced notebooks ran PIL transforms image by image in DataLoader workers, which starves a GPU.
By default workers only decode to uint8; whole batches move to the device as uint8 (a quarter of the
bytes of float32) and are resized there with PIL's own resampling coefficients (antialiased, its
bicubic kernel, 8-bit rounding after each pass), so the batch path gives the notebooks' pixels to
within one grey level; torch's own bicubic differs enough to move class-centroid similarities by
~0.005 and with them the overlap pairs near a threshold. Each pass is a few matrix products with
PIL's coefficients as a dense matrix (:func:`pil_resample_matrix`), over only the pixels the centre
crop keeps. :func:`pil_transform` is the notebooks' exact per-image path (``extract.preprocess: pil``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input: shorter side to ``resize``, centre crop ``crop``,
    pixel values scaled to [0, 1], then ``(x - mean) / std`` per channel."""

    resize: int
    crop: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}; allowed: {', '.join(INTERPOLATIONS)}")
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")

    def overridden(self, overrides: dict | None) -> Preprocessing:
        """A copy with the keys of ``overrides`` (the config's ``preprocessing``) replaced."""
        if not overrides:
            return self
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return replace(self, **values)

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# PIL's resampling filters (libImaging/Resample.c): the kernel and its support at scale 1.
def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # PIL's; torch's bicubic uses -0.75, which sharpens enough to move centroid similarities
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


PIL_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_triangle, 1.0)}
PIL_PRECISION_BITS = 22  # PIL's fixed-point coefficients for 8-bit images


@functools.lru_cache(maxsize=256)
def pil_resample_matrix(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """PIL's resampling coefficients along one axis as a dense (out_size, in_size) matrix, exactly as
    ``Image.resize`` computes them for 8-bit images (antialiased: the support widens when shrinking),
    rounded to its fixed point: output pixel ``o`` is ``matrix[o] @ input``.

    Dense, so that a pass is one matrix product: for a 32-pixel CIFAR side resized to 256 that is
    256 x 32; each row holds a handful of non-zero taps."""
    kernel, support = PIL_FILTERS[interpolation]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    matrix = np.zeros((out_size, in_size))
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        values = kernel((np.arange(first, last) - center + 0.5) / filter_scale)
        total = values.sum()
        matrix[out, first:last] = values / total if total != 0 else values
    unit = float(1 << PIL_PRECISION_BITS)
    return np.trunc(matrix * unit + np.where(matrix < 0, -0.5, 0.5)) / unit


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after resizing the shorter side to ``size``, the longer one truncated (not
    rounded) as torchvision's Resize(int) computes it."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _crop_start(length: int, size: int) -> int:
    """Where torchvision's CenterCrop starts a crop of ``size`` along a side of ``length``."""
    return int(round((length - size) / 2.0))


BAND_ROWS = 64  # output pixels per matrix product of a pass


@functools.lru_cache(maxsize=256)
def _bands(in_size: int, out_size: int, interpolation: str, start: int, count: int
           ) -> tuple[slice, tuple[tuple[torch.Tensor, slice], ...]]:
    """The output pixels ``start:start+count`` of a pass (those the crop keeps) as bands of
    :data:`BAND_ROWS` rows of :func:`pil_resample_matrix`, each cut to the input pixels it reads.

    Returns ``(inputs, bands)``: ``inputs``, the input pixels any kept output reads; each band is
    ``(weights, read)``, float32 weights (band rows, pixels read) and the slice of ``inputs`` they
    read. Bands keep a product near the few taps per output: a 500-pixel side shrunk to 341 reads
    ~54 input pixels per band of 64 outputs instead of the ~335 the whole crop spans. When the crop
    spans at most 2 x BAND_ROWS input pixels (CIFAR's 32), one band covers it."""
    rows = pil_resample_matrix(in_size, out_size, interpolation)[start:start + count]
    used = np.flatnonzero(rows.any(axis=0))
    first = int(used[0])
    rows = rows[:, first:int(used[-1]) + 1]
    size = BAND_ROWS if rows.shape[1] > 2 * BAND_ROWS else count  # a narrow span: one product is cheaper
    bands = []
    for band in range(0, count, size):
        weights = rows[band:band + size]
        read = np.flatnonzero(weights.any(axis=0))
        read = slice(int(read[0]), int(read[-1]) + 1)
        bands.append((torch.from_numpy(weights[:, read]).float(), read))
    return slice(first, first + rows.shape[1]), tuple(bands)


def _resample(image: torch.Tensor, bands: tuple[tuple[torch.Tensor, slice], ...], axis: int) -> torch.Tensor:
    """One pass over NCHW ``image`` (already cut to the pass's inputs) along ``axis`` (-1: width,
    -2: height), one matrix product per band, rounded to 8 bits."""
    out = []
    for weights, read in bands:
        weights = weights.to(image.device)
        out.append(image[..., read] @ weights.T if axis == -1 else weights @ image[..., read, :])
    return _to_8_bits(torch.cat(out, dim=axis) if len(out) > 1 else out[0])


def _to_8_bits(image: torch.Tensor) -> torch.Tensor:
    """Round and clip to 0..255, as PIL stores each resampling pass in 8 bits."""
    return torch.floor_(image.add_(0.5)).clamp_(0.0, 255.0)


def _resize_crop(image: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Resize NCHW float ``image`` (0..255) so its shorter side is ``prep.resize`` (see
    :func:`resized_size`), then centre-crop ``prep.crop``, computing only the pixels the crop keeps.

    Bicubic and bilinear use PIL's own coefficients (:func:`pil_resample_matrix`): a horizontal pass,
    then a vertical one, each a few matrix products (:func:`_bands`) rounded to 8 bits, as
    ``Image.resize`` does (it too resamples only the rows the second pass reads). Nearest takes the
    pixel under each output pixel's centre, as PIL does."""
    height, width = image.shape[-2:]
    new_h, new_w = resized_size(height, width, prep.resize)
    top, left = _crop_start(new_h, prep.crop), _crop_start(new_w, prep.crop)
    if prep.interpolation == "nearest" and (new_h, new_w) != (height, width):
        image = F.interpolate(image, size=(new_h, new_w), mode="nearest-exact")
        height, width = new_h, new_w
    vertical = None
    if new_h != height:
        rows, vertical = _bands(height, new_h, prep.interpolation, top, prep.crop)
        image = image[..., rows, :]
    else:
        image = image[..., top:top + prep.crop, :]
    if new_w != width:
        columns, horizontal = _bands(width, new_w, prep.interpolation, left, prep.crop)
        image = _resample(image[..., columns], horizontal, axis=-1)
    else:
        image = image[..., left:left + prep.crop]
    if vertical is not None:
        image = _resample(image, vertical, axis=-2)
    return image


@contextlib.contextmanager
def exact_float32(device_type: str):
    """Matrix products in true float32 (no TF32, no autocast) within the block: the resampling sums
    must land on PIL's 8-bit levels, which bfloat16 (8 significant bits) or TF32 (11) would miss."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(previous)


def preprocess_batch(images: torch.Tensor | Sequence[torch.Tensor], prep: Preprocessing,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Turn uint8 RGB images into the model's normalised float input on ``device``.

    ``images`` is either one uint8 tensor (N, H, W, 3) of equally sized images or a sequence of uint8
    tensors (H, W, 3) of any sizes, on any device; images of one size are resized together. Returns
    float32 (N, 3, crop, crop), in the order given.
    """
    device = torch.device(device)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    scale, shift = 1.0 / (std * 255.0), -mean / std  # (x / 255 - mean) / std
    if isinstance(images, torch.Tensor):
        groups = {images.shape[1:]: list(range(len(images)))}
    else:
        groups = {}
        for i, image in enumerate(images):
            groups.setdefault(image.shape, []).append(i)
    out = []
    with exact_float32(device.type):
        for positions in groups.values():
            group = images if isinstance(images, torch.Tensor) else torch.stack([images[i] for i in positions])
            batch = group.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
            out.append(_resize_crop(batch, prep).mul_(scale).add_(shift))
    if len(out) == 1:
        return out[0]
    order = torch.tensor([i for positions in groups.values() for i in positions], device=device)
    merged = torch.cat(out)
    return torch.empty_like(merged).index_copy_(0, order, merged)


def pil_transform(prep: Preprocessing) -> transforms.Compose:
    """The replaced notebooks' per-image path as a callable on an RGB uint8 array (H, W, 3):
    ``Image.fromarray`` -> Resize(resize, interpolation) -> CenterCrop(crop) -> ToTensor ->
    Normalize(mean, std), torchvision's PIL transforms; returns float32 (3, crop, crop)."""
    return transforms.Compose([
        Image.fromarray,
        transforms.Resize(prep.resize, interpolation=transforms.InterpolationMode[prep.interpolation.upper()]),
        transforms.CenterCrop(prep.crop),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])
