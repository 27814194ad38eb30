"""Preprocessing: resize, centre crop, scale and normalise, on the model's device or with PIL.

The replaced notebooks ran PIL transforms image by image in DataLoader workers, which starves a GPU.
By default workers only decode to uint8; whole batches move to the device as uint8 (a quarter of the
bytes of float32) and are resized there with antialiasing, matching PIL's resampling closely (the
benchmark checks the features agree, cosine >= 0.99). :func:`pil_transform` is the notebooks' exact
per-image path, for users who must reproduce their numbers (``extract.preprocess: pil``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

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


def _resize_shorter(image: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """Resize NCHW float ``image`` so its shorter side is ``size``, keeping the aspect ratio the way
    torchvision's Resize(int) does (the longer side is truncated, not rounded)."""
    height, width = image.shape[-2:]
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    if (new_h, new_w) == (height, width):
        return image
    antialias = interpolation != "nearest"
    kwargs = {"align_corners": False} if interpolation != "nearest" else {}
    return F.interpolate(image, size=(new_h, new_w), mode=interpolation, antialias=antialias, **kwargs)


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
