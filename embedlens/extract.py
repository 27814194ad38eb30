"""Feature extraction: run a frozen backbone over manifest rows and embed every image once.

Workers decode (and, in ``pil`` mode, preprocess) images; batches are preprocessed on the model's
device and embedded. An image that fails to decode at extraction (the manifest step reads headers
only) is skipped with its reason; the shard records it (see :mod:`embedlens.shards`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from embedlens.datasets import ImageDataset
from embedlens.images import short_reason
from embedlens.preprocess import pil_transform, preprocess_batch


class ManifestImages(Dataset):
    """The images of some manifest rows, decoded by the dataset kind: item ``i`` is ``(i, image)``,
    or ``(i, reason)`` when the image cannot be decoded (the batch goes on without it).

    ``image`` is uint8 (H, W, 3) for batch preprocessing on the device, or, with ``transform`` (the
    notebooks' per-image PIL path, :func:`embedlens.preprocess.pil_transform`), its float output."""

    def __init__(self, dataset: ImageDataset, rows: pd.DataFrame,
                 transform: Callable[[np.ndarray], torch.Tensor] | None = None):
        self.dataset, self.transform = dataset, transform
        self.splits = rows["split"].tolist()
        self.sources = rows["source"].tolist()

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str]:
        try:
            pixels = self.dataset.read_image(self.splits[i], self.sources[i])
        except Exception as error:  # a file that passed the header check but does not decode
            return i, short_reason(error, self.dataset.source_file(self.splits[i], self.sources[i]))
        if self.transform is not None:
            return i, self.transform(pixels)
        return i, torch.from_numpy(np.array(pixels, dtype=np.uint8, order="C"))  # writable, contiguous


@dataclass
class ImageBatch:
    """A loader batch: ``positions`` of the decoded images and their ``images`` (one stacked tensor
    when all have one size, else a list), plus ``failed`` (position, reason) pairs."""

    positions: list[int]
    images: torch.Tensor | list[torch.Tensor]
    failed: list[tuple[int, str]]


def collate_images(batch: list[tuple[int, torch.Tensor | str]]) -> ImageBatch:
    """Stack equally sized images into one tensor; keep mixed sizes as a list; set failures apart."""
    decoded = [(i, image) for i, image in batch if isinstance(image, torch.Tensor)]
    failed = [(i, reason) for i, reason in batch if isinstance(reason, str)]
    images = [image for _, image in decoded]
    if images and all(image.shape == images[0].shape for image in images):
        images = torch.stack(images)
    return ImageBatch([i for i, _ in decoded], images, failed)


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


def extract_features(backbone, dataset: ImageDataset, rows: pd.DataFrame, *, device: torch.device,
                     batch_size: int = 64, num_workers: int = 2, amp: bool = True, preprocess: str = "device",
                     compile: bool = False,
                     out: np.ndarray | h5py.Dataset | None = None, progress: Progress | None = None
                     ) -> tuple[np.ndarray | h5py.Dataset, dict[int, str]]:
    """Embed the images of ``rows`` (manifest rows) with ``backbone``.

    Returns ``(features, failed)``: features float32 (len(rows), dim), row ``i`` for ``rows.iloc[i]``
    (written into ``out`` when given, e.g. a shard's HDF5 dataset, so memory stays one batch), with
    zeros for the images that failed to decode; ``failed`` maps their positions to the reason.

    ``preprocess="device"``: workers only decode; resizing and normalisation run on ``device`` for
    whole batches. ``preprocess="pil"``: the replaced notebooks' path, torchvision's PIL transforms per
    image in the workers (bit for bit what they computed). On CUDA with ``amp`` the model runs under
    bfloat16 autocast; without it in true float32 (TF32 off). On CUDA the model runs channels-last;
    ``compile`` runs it ``torch.compile``'d (:meth:`~embedlens.backbones.Backbone.for_speed`). The
    loaders pin memory on CUDA.
    ``progress`` is told the images done and the seconds spent preprocessing in this process (on
    the model's device), after every batch.
    """
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(f"extract.preprocess {preprocess!r}; allowed values: {', '.join(PREPROCESS_MODES)}")
    transform = pil_transform(backbone.preprocessing) if preprocess == "pil" else None
    loader = DataLoader(ManifestImages(dataset, rows, transform), batch_size=batch_size,
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
            failed.update(batch.failed)
            if batch.positions:
                with timer.timing():
                    pixels = (batch.images.to(device, non_blocking=True) if transform is not None
                              else preprocess_batch(batch.images, backbone.preprocessing, device))
                embeddings = backbone.embed(pixels).float().cpu().numpy()
                _write_rows(out, batch.positions, embeddings)
            if progress is not None:
                progress.update(len(batch.positions) + len(batch.failed), timer.seconds)
    return out, failed


def _write_rows(out, positions: list[int], values: np.ndarray) -> None:
    """``out[positions] = values``, as one slice when the positions are consecutive (HDF5 writes
    slices much faster than lists)."""
    first, last = positions[0], positions[-1]
    if last - first + 1 == len(positions):
        out[first:last + 1] = values
    else:
        for position, value in zip(positions, values):
            out[position] = value
