"""JPEG files decoded in batches on the model's device: nvJPEG on a GPU, libjpeg-turbo on the CPU.

On a GPU the DataLoader workers would otherwise spend most of their time decoding JPEGs (ImageNet
at 8 workers is decode-bound). Workers instead hand over the bytes of the files
:func:`embedlens.images.batch_decodable_jpeg` accepts, and :func:`decode_jpegs` decodes a whole batch
of them at once with ``torchvision.io.decode_jpeg`` on the device. The same function runs on the CPU
(``device="cpu"``), which is how its batching and fallback are tested without a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from embedlens.images import short_reason


def _decode(data: torch.Tensor | list[torch.Tensor], device: torch.device | str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to TorchCodec
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_jpegs(data: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor | str]:
    """Decode JPEG files' bytes (1-d uint8 CPU tensors) to RGB uint8 images (H, W, 3) on ``device``.

    All files go to the decoder in one call (nvJPEG's batched decoder on CUDA). torchvision decodes
    all or nothing, so when that call fails each file is decoded alone; an entry is then the reason
    (one line) for a file the decoder refused, for the caller to decode another way."""
    if not data:
        return []
    try:
        return [image.permute(1, 2, 0) for image in _decode(list(data), device)]
    except RuntimeError:
        pass
    out: list[torch.Tensor | str] = []
    for item in data:
        try:
            out.append(_decode(item, device).permute(1, 2, 0))
        except RuntimeError as error:
            out.append(short_reason(error))
    return out
