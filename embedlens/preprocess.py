"""Preprocessing: resize, centre crop, scale and normalise, on the model's device or with PIL.

The replaced notebooks ran PIL transforms image by image in DataLoader workers, which starves a GPU.
By default workers only decode to uint8; whole batches move to the device as uint8 (a quarter of the
bytes of float32) and are resized there with PIL's own resampling coefficients (antialiased, its
bicubic kernel, 8-bit rounding after each pass), so the batch path gives the notebooks' pixels to
within one grey level; torch's own bicubic differs enough to move class-centroid similarities by
~0.005 and with them the overlap pairs near a threshold. :func:`pil_transform` is the notebooks' exact
per-image path (``extract.preprocess: pil``).
"""

from __future__ import annotations

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
def pil_resample_weights(in_size: int, out_size: int, interpolation: str) -> np.ndarray:
    """The (out_size, in_size) matrix of PIL's resampling coefficients along one axis, exactly as
    ``Image.resize`` computes them for 8-bit images (antialiased: the support widens when
    shrinking), including its rounding to fixed point."""
    kernel, support = PIL_FILTERS[interpolation]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        taps = kernel((np.arange(first, last) - center + 0.5) / filter_scale)
        total = taps.sum()
        weights[out, first:last] = taps / total if total != 0 else taps
    unit = float(1 << PIL_PRECISION_BITS)
    return np.trunc(weights * unit + np.where(weights < 0, -0.5, 0.5)) / unit


def _pil_pass(image: torch.Tensor, weights: np.ndarray, axis: int) -> torch.Tensor:
    """One resampling pass of NCHW ``image`` along ``axis`` (-1: width, -2: height), rounded and
    clipped to 0..255 as PIL stores each pass in 8 bits."""
    matrix = torch.from_numpy(weights).to(image.device, image.dtype)
    out = torch.einsum("nchw,vw->nchv", image, matrix) if axis == -1 else \
        torch.einsum("nchw,vh->ncvw", image, matrix)
    return torch.floor(out + 0.5).clamp_(0.0, 255.0)


def _resize_shorter(image: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """Resize NCHW float ``image`` (0..255) so its shorter side is ``size``, keeping the aspect ratio
    the way torchvision's Resize(int) does (the longer side is truncated, not rounded), with PIL's
    own coefficients: a horizontal pass, then a vertical one, each rounded to 8 bits, as
    ``Image.resize`` does. Nearest takes the pixel under each output pixel's centre, as PIL does."""
    height, width = image.shape[-2:]
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    if (new_h, new_w) == (height, width):
        return image
    if interpolation == "nearest":
        return F.interpolate(image, size=(new_h, new_w), mode="nearest-exact")
    if new_w != width:
        image = _pil_pass(image, pil_resample_weights(width, new_w, interpolation), axis=-1)
    if new_h != height:
        image = _pil_pass(image, pil_resample_weights(height, new_h, interpolation), axis=-2)
    return image


def _center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image[..., top:top + size, left:left + size]


def preprocess_batch(images: torch.Tensor | Sequence[torch.Tensor], prep: Preprocessing,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Turn uint8 RGB images into the model's normalised float input on ``device``.

    ``images`` is either one uint8 tensor (N, H, W, 3) of equally sized images or a sequence of uint8
    tensors (H, W, 3) of any sizes. Returns float32 (N, 3, crop, crop).
    """
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1) * 255.0
    groups = [images] if isinstance(images, torch.Tensor) else [img.unsqueeze(0) for img in images]
    out = []
    for group in groups:
        batch = group.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        batch = _center_crop(_resize_shorter(batch, prep.resize, prep.interpolation), prep.crop)
        out.append(batch)
    batch = torch.cat(out) if len(out) > 1 else out[0]
    # Resampling overshoots near edges; PIL clips to [0, 255] when it writes uint8, so do the same.
    return (batch.clamp_(0.0, 255.0) - mean) / std


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
