"""Feature extraction: run a frozen backbone over manifest rows and embed every image once.

Workers decode (and, in ``pil`` mode, preprocess) images; on CUDA they hand over baseline JPEGs
undecoded and each batch of those is decoded on the GPU (:mod:`embedlens.jpeg`); batches are
preprocessed on the model's device and embedded. An image that fails to decode at extraction (the
manifest step reads headers only) is skipped with its reason; the shard records it (see
:mod:`embedlens.shards`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from embedlens.datasets import ImageDataset
from embedlens.images import short_reason
from embedlens.jpeg import decode_jpegs
from embedlens.preprocess import pil_transform, preprocess_batch
from embedlens.recipe import decodes_jpegs_on_device


@dataclass
class EncodedImage:
    """A JPEG file's bytes (1-d uint8 tensor) for :func:`embedlens.jpeg.decode_jpegs`."""

    data: torch.Tensor


class ManifestImages(Dataset):
    """The images of some manifest rows, decoded by the dataset kind: item ``i`` is ``(i, image)``,
    or ``(i, reason)`` when the image cannot be decoded (the batch goes on without it).

    ``image`` is uint8 (H, W, 3) for batch preprocessing on the device, or, with ``transform`` (the
    notebooks' per-image PIL path, :func:`embedlens.preprocess.pil_transform`), its float output.
    With ``encoded``, files the kind offers undecoded (:meth:`ImageDataset.read_encoded`: baseline
    JPEGs of the folder and imagenet kinds) come as :class:`EncodedImage`, for decoding on the device."""

    def __init__(self, dataset: ImageDataset, rows: pd.DataFrame,
                 transform: Callable[[np.ndarray], torch.Tensor] | None = None, encoded: bool = False):
        self.dataset, self.transform, self.encoded = dataset, transform, encoded
        self.splits = rows["split"].tolist()
        self.sources = rows["source"].tolist()

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | EncodedImage | str]:
        if self.encoded:
            try:
                data = self.dataset.read_encoded(self.splits[i], self.sources[i])
            except Exception as error:  # the file cannot be read at all
                return i, self._reason(i, error)
            if data is not None:
                return i, EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return self.decoded(i)

    def decoded(self, i: int) -> tuple[int, torch.Tensor | str]:
        """Item ``i`` decoded here, by the dataset kind (also for a file the device decoder refused)."""
        try:
            pixels = self.dataset.read_image(self.splits[i], self.sources[i])
        except Exception as error:  # a file that passed the header check but does not decode
            return i, self._reason(i, error)
        if self.transform is not None:
            return i, self.transform(pixels)
        return i, torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C"))  # writable, contiguous

    def _reason(self, i: int, error: Exception) -> str:
        return short_reason(error, self.dataset.source_file(self.splits[i], self.sources[i]))


@dataclass
class ImageBatch:
    """A loader batch: ``positions`` of the decoded images and their ``images`` (one stacked tensor
    when all have one size, else a list), ``failed`` (position, reason) pairs, and ``encoded``
    (position, JPEG bytes) pairs still to decode."""

    positions: list[int]
    images: torch.Tensor | list[torch.Tensor]
    failed: list[tuple[int, str]]
    encoded: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    def pin_memory(self) -> ImageBatch:
        """The batch with its decoded images in pinned memory (the DataLoader calls this on CUDA), so
        copies to the GPU are asynchronous."""
        images = (self.images.pin_memory() if isinstance(self.images, torch.Tensor)
                  else [image.pin_memory() for image in self.images])
        return ImageBatch(self.positions, images, self.failed, self.encoded)


def collate_images(batch: list[tuple[int, torch.Tensor | EncodedImage | str]]) -> ImageBatch:
    """Stack equally sized images into one tensor; keep mixed sizes as a list; set failures and
    undecoded JPEGs apart."""
    decoded = [(i, image) for i, image in batch if isinstance(image, torch.Tensor)]
    failed = [(i, reason) for i, reason in batch if isinstance(reason, str)]
    encoded = [(i, item.data) for i, item in batch if isinstance(item, EncodedImage)]
    images = [image for _, image in decoded]
    if images and all(image.shape == images[0].shape for image in images):
        images = torch.stack(images)
    return ImageBatch([i for i, _ in decoded], images, failed, encoded)


def decode_on_device(batch: ImageBatch, images: ManifestImages, device: torch.device
                     ) -> tuple[list[int], list[torch.Tensor], list[tuple[int, str]]]:
    """The batch's images, its JPEGs decoded together on ``device`` (:func:`embedlens.jpeg.decode_jpegs`)
    and any the device decoder refused decoded here by the dataset kind instead.

    Returns ``(positions, pixels, failed)``: uint8 (H, W, 3) images in the order of their positions,
    and the (position, reason) pairs of files no decoder could read, the batch's own failures included."""
    decoded = list(zip(batch.positions, batch.images))
    failed = list(batch.failed)
    for (position, _), image in zip(batch.encoded, decode_jpegs([data for _, data in batch.encoded], device)):
        if isinstance(image, str):
            position, image = images.decoded(position)
        if isinstance(image, str):
            failed.append((position, image))
        else:
            decoded.append((position, image))
    decoded.sort(key=lambda item: item[0])  # consecutive positions are written as one slice
    return [position for position, _ in decoded], [image for _, image in decoded], failed


class Progress:
    """Logs images done, images/s, the time left and the seconds spent preprocessing on the model's
    device (with their share of the time so far), at most every ``every`` seconds and at the end."""

    def __init__(self, total: int, logger: logging.Logger, label: str = "", every: float = 10.0):
        self.total, self.logger, self.label, self.every = total, logger, label, every
        self.done = 0
        self.preprocess_seconds = 0.0
        self.start = self.last = time.monotonic()

    def update(self, count: int, preprocess_seconds: float | None = None) -> None:
        """``count`` more images done; ``preprocess_seconds``: the preprocessing time so far, in all."""
        self.done += count
        if preprocess_seconds is not None:
            self.preprocess_seconds = preprocess_seconds
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.logger.info(self.message(now))

    def message(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        left_text = time.strftime("%H:%M:%S", time.gmtime(left)) if np.isfinite(left) else "?"
        percent = 100.0 * self.done / max(self.total, 1)
        return (f"{self.label}{self.done}/{self.total} images ({percent:.0f}%), "
                f"{rate:.1f} images/s, {left_text} left; preprocessing {self.preprocess_seconds:.1f} s "
                f"({100.0 * self.preprocess_seconds / elapsed:.1f}% of the time)")


class DeviceTimer:
    """Seconds spent in :meth:`timing` blocks of work on ``device``: the wall clock on the CPU; on CUDA,
    where work runs asynchronously, CUDA events, read back only in :attr:`seconds` (after a batch's
    features came back, so the events are done and timing adds no synchronisation)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.total = 0.0
        self.pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def timing(self):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.pending.append((start, end))
        else:
            start = time.perf_counter()
            yield
            self.total += time.perf_counter() - start

    @property
    def seconds(self) -> float:
        for start, end in self.pending:
            end.synchronize()
            self.total += start.elapsed_time(end) / 1000.0
        self.pending.clear()
        return self.total


PREPROCESS_MODES = ("device", "pil")


def per_image_transform(backbone, preprocess: str) -> Callable[[np.ndarray], torch.Tensor] | None:
    """The per-image transform of extraction mode ``preprocess``: torchvision's PIL path for "pil",
    none for "device" (whole batches are resized on the device); any other mode is refused."""
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(f"extract.preprocess {preprocess!r}; allowed values: {', '.join(PREPROCESS_MODES)}")
    return pil_transform(backbone.preprocessing) if preprocess == "pil" else None


def extract_features(backbone, dataset: ImageDataset, rows: pd.DataFrame, *, device: torch.device,
                     batch_size: int, num_workers: int, amp: bool, preprocess: str, compile: bool,
                     decode_jpegs_on_device: bool | None = None,
                     out: np.ndarray | h5py.Dataset | None = None, progress: Progress | None = None
                     ) -> tuple[np.ndarray | h5py.Dataset, dict[int, str]]:
    """Embed the images of ``rows`` (manifest rows) with ``backbone``; ``batch_size``, ``num_workers``,
    ``amp``, ``preprocess`` and ``compile`` are the ``extract`` section's settings (defaults in the schema).

    Returns ``(features, failed)``: features float32 (len(rows), dim), row ``i`` for ``rows.iloc[i]``
    (written into ``out`` when given, e.g. a shard's HDF5 dataset, so memory stays one batch), with
    zeros for the images that failed to decode; ``failed`` maps their positions to the reason.

    ``preprocess="device"``: workers only decode; resizing and normalisation run on ``device`` for
    whole batches. ``preprocess="pil"``: the replaced notebooks' path, torchvision's PIL transforms per
    image in the workers (bit for bit what they computed). On CUDA with ``amp`` the model runs under
    bfloat16 autocast; without it in true float32 (TF32 off). On CUDA the model runs channels-last;
    ``compile`` runs it ``torch.compile``'d (:meth:`~embedlens.backbones.Backbone.for_speed`). The
    loaders pin memory on CUDA.
    ``decode_jpegs_on_device`` (default: on CUDA with ``preprocess="device"``): workers hand over the
    bytes of baseline JPEGs (folder and imagenet kinds) and each batch of them is decoded on
    ``device`` (:func:`decode_on_device`; nvJPEG on CUDA), the other files in the workers as before.
    ``progress`` is told the images done and the seconds spent preprocessing in this process (on
    the model's device), after every batch.
    """
    transform = per_image_transform(backbone, preprocess)
    if decode_jpegs_on_device is None:
        decode_jpegs_on_device = decodes_jpegs_on_device(device.type, preprocess)
    images = ManifestImages(dataset, rows, transform, encoded=decode_jpegs_on_device)
    loader = DataLoader(images, batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_images,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    backbone = backbone.to(device).for_speed(channels_last=device.type == "cuda", compile=compile)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and amp
                else contextlib.nullcontext())
    if device.type == "cuda" and not amp:  # float32 in the recipe means float32, not cuDNN's TF32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if out is None:
        out = np.zeros((len(rows), backbone.dim), dtype=np.float32)
    failed: dict[int, str] = {}
    timer = DeviceTimer(device)
    with torch.inference_mode(), autocast:
        for batch in loader:
            with timer.timing():
                positions, pixels, batch_failed = (decode_on_device(batch, images, device) if batch.encoded
                                                   else (batch.positions, batch.images, batch.failed))
                if positions:
                    pixels = (pixels.to(device, non_blocking=True) if transform is not None
                              else preprocess_batch(pixels, backbone.preprocessing, device))
            failed.update(batch_failed)
            if positions:
                embeddings = backbone.embed(pixels).float().cpu().numpy()
                _write_rows(out, positions, embeddings)
            if progress is not None:
                progress.update(len(positions) + len(batch_failed), timer.seconds)
    return out, failed


def embed_images(backbone, images: Sequence[np.ndarray], preprocess: str, batch_size: int = 64) -> np.ndarray:
    """Features (float32, (len(images), dim)) of in-memory uint8 RGB images (H, W, 3; any sizes), on
    the CPU, preprocessed as :func:`extract_features` does in mode ``preprocess`` ("device" or "pil"):
    for embedding images a store does not hold (edited copies, images of another source) exactly as
    its features were made."""
    transform = per_image_transform(backbone, preprocess)
    out = np.zeros((len(images), backbone.dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pixels = (torch.stack([transform(image) for image in chunk]) if transform is not None else
                      preprocess_batch([torch.from_numpy(np.array(image, np.uint8, order="C")) for image in chunk],
                                       backbone.preprocessing, "cpu"))
            out[start:start + len(chunk)] = backbone.embed(pixels).float().numpy()
    return out


def _write_rows(out, positions: list[int], values: np.ndarray) -> None:
    """``out[positions] = values``, as one slice when the positions are consecutive (HDF5 writes
    slices much faster than lists)."""
    first, last = positions[0], positions[-1]
    if last - first + 1 == len(positions):
        out[first:last + 1] = values
    else:
        for position, value in zip(positions, values):
            out[position] = value
