"""Decoding image files to RGB, and checking many files in parallel: what every file-backed kind shares.

- :func:`to_rgb` / :func:`rgb_image`: any PIL image as RGB (an array / a PIL image), one set of rules;
- :func:`decode_file` / :func:`open_rgb`: a file fully decoded to RGB; raise on anything unreadable;
- :func:`batch_decodable_jpeg`: a file's bytes when a batch JPEG decoder on the GPU gives the same
  pixels (see :mod:`embedlens.jpeg`), else None;
- :func:`header_reason`: None when PIL identifies a file from its header (format and size, no pixels
  decoded), else a short one-line reason (no path in it). This is what a dataset scan checks: a file
  that passes can still fail to decode (a truncated JPEG, corrupt data after a valid header);
  extraction finds those when it decodes the file, the one time it is decoded;
- :func:`failure_reason` / :func:`short_reason`: how an exception becomes such a reason (the latter
  also for images that are not files, e.g. a Hugging Face row);
- :class:`FigureImages`: the images a figure shows, one that cannot be read drawn blank, named in the
  log and counted for the stage's summary;
- :func:`check_headers`: :func:`header_reason` for many files, in order, over forked worker
  processes (:func:`embedlens.parallel.ordered_map` over chunks); :func:`check_in_chunks` is the same
  for any chunked check.

**EXIF orientation.** By default the pixels are turned upright by the file's EXIF orientation tag, as
a photo viewer shows them (and as ``datasets`` decodes a Hugging Face ``Image``). ImageNet is read
with ``exif_orientation=False``: the standard ImageNet loaders (torchvision's ``ImageFolder``, timm)
ignore the tag, so a pretrained model saw those files unrotated. Orientation never makes a file
unreadable, so the header check is the same either way.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image

from embedlens.parallel import WorkerDied, available_cores, ordered_map

T = TypeVar("T")

MAX_REASON_CHARS = 200
EMPTY_FILE = "empty file (0 bytes)"
EXIF_ORIENTATION = 0x0112
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
# PIL names in-memory files by their repr ("<_io.BytesIO object at 0x7f...>"): different every run.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


# --- converting ------------------------------------------------------------------------------------

def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1, upright, when absent or unreadable)."""
    try:
        return image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block does not make the pixels unreadable
        return 1


def _upright(image: Image.Image) -> Image.Image:
    orientation = _orientation(image)
    if orientation in ORIENTATION_TRANSPOSE:
        return image.transpose(ORIENTATION_TRANSPOSE[orientation])
    return image


def _is_deep_grey(mode: str) -> bool:
    return mode.startswith("I") or mode == "F"


def _grey_levels(image: Image.Image) -> np.ndarray:
    """16/32-bit integer grey scaled from 0..65535, float grey read as 0..1, to uint8 (H, W)."""
    is_float = image.mode == "F"
    values = np.asarray(image, dtype=np.float64)
    top = 1.0 if is_float else 65535.0
    scale = 255.0 if is_float else 255.0 / 65535.0
    return np.rint(np.clip(values, 0.0, top) * scale).astype(np.uint8)


def _converted(image: Image.Image) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Palette images with Transparency ..." is noise here
        return image.convert("RGB")


def rgb_image(image: Image.Image, *, exif_orientation: bool = True) -> Image.Image:
    """Any PIL image as an RGB PIL image, by the rules of :func:`to_rgb` (for resizing with PIL).

    Returns ``image`` itself when it is already RGB and upright."""
    if exif_orientation:
        image = _upright(image)
    if _is_deep_grey(image.mode):
        return Image.fromarray(_grey_levels(image), "L").convert("RGB")
    return image if image.mode == "RGB" else _converted(image)


def to_rgb(image: Image.Image, *, exif_orientation: bool = True) -> np.ndarray:
    """Any PIL image as an RGB uint8 array (H, W, 3), C-contiguous and writeable.

    Upright by its EXIF orientation (unless ``exif_orientation=False``); alpha is dropped (as
    torchvision's loader does); 16-bit and 32-bit integer grey (I;16*, I) is scaled from 0..65535 to
    0..255 and float grey (F) is read as 0..1 (PIL's own ``convert`` would clip them); everything else
    goes through PIL's ``convert("RGB")`` (L, LA, P, PA, 1, CMYK, YCbCr, LAB, HSV, RGBA, ...).
    """
    mode = image.mode
    if exif_orientation:
        image = _upright(image)
    if _is_deep_grey(mode):
        return np.ascontiguousarray(np.repeat(_grey_levels(image)[:, :, None], 3, axis=2))
    array = np.array(image if mode == "RGB" else _converted(image), dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"mode {mode} did not convert to RGB (got shape {array.shape})")
    return array


# --- decoding files --------------------------------------------------------------------------------

def decode_file(path: str | os.PathLike, *, exif_orientation: bool = True) -> np.ndarray:
    """Fully decode the image file at ``path`` into RGB uint8 (H, W, 3) (see :func:`to_rgb`); raises on
    anything unreadable, truncated files included."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image, exif_orientation=exif_orientation)


def batch_decodable_jpeg(path: str | os.PathLike, *, exif_orientation: bool = True) -> bytes | None:
    """The bytes of the file at ``path`` when a batch JPEG decoder (nvJPEG on a GPU,
    :func:`embedlens.jpeg.decode_jpegs`) turns them into the pixels :func:`decode_file` gives; None
    when the file needs :func:`decode_file`. Reads the whole file and parses its header, no pixels.

    Taken: a baseline (sequential) JPEG in YCbCr or grey that ends with its end-of-image marker and,
    with ``exif_orientation``, has no EXIF orientation to apply. Left to :func:`decode_file`:
    progressive and CMYK/YCCK JPEGs (nvJPEG refuses them), other formats (a PNG under a .JPEG name),
    files whose header PIL cannot read, truncated files (no end marker: PIL raises on them, a lenient
    decoder would fill them in grey) and rotated photos. Raises only when the file cannot be read."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        with Image.open(io.BytesIO(data)) as image:
            taken = (image.format == "JPEG" and image.mode in ("RGB", "L") and not image.info.get("progressive")
                     and not (exif_orientation and _orientation(image) in ORIENTATION_TRANSPOSE))
    except Exception:  # not an image PIL can identify: decode_file gives the reason
        return None
    return data if taken and data.endswith(b"\xff\xd9") else None


def open_rgb(path: str | os.PathLike, *, exif_orientation: bool = True) -> Image.Image:
    """Fully decode the image file at ``path`` into an RGB PIL image (see :func:`rgb_image`); raises
    on anything unreadable. The image no longer depends on the (closed) file."""
    with Image.open(path) as image:
        image.load()
        rgb = rgb_image(image, exif_orientation=exif_orientation)
        return image.copy() if rgb is image else rgb


def short_reason(error: BaseException, path: str | os.PathLike | None = None) -> str:
    """The decoder's message on one line, without ``path`` (long and redundant) or object addresses;
    the exception's type name when nothing is left. At most 200 characters."""
    message = _OBJECT_REPR.sub("", str(error))
    if path is not None:
        path = str(path)
        for form in (repr(path), f'"{path}"', path):
            message = message.replace(form, "")
    message = " ".join(message.split()).strip(" :")
    if not message:
        message = type(error).__name__
    return message[:MAX_REASON_CHARS]


class FigureImages:
    """Reads the images one figure shows (``read(key)`` -> RGB uint8 array). An image that cannot be
    read is drawn blank (None): its name and the reason go to ``warn`` (the job's log) and to
    :attr:`unreadable`, which the stage's summary counts (:func:`embedlens.summary.blank_images_note`)."""

    def __init__(self, read: Callable[[Hashable], np.ndarray], figure: str,
                 warn: Callable[[str], None] = lambda message: None):
        self.read = read
        self.figure = figure
        self.warn = warn
        self.unreadable: dict[str, str] = {}

    def get(self, key: Hashable, name: str) -> np.ndarray | None:
        """The image ``key``, or None when it cannot be read; ``name`` says which image it is."""
        try:
            return self.read(key)
        except Exception as error:  # one unreadable image must not cost the figure; it is named and counted
            reason = short_reason(error)
            self.unreadable[name] = reason
            self.warn(f"{name} could not be read for {self.figure} and is drawn blank: {reason}")
            return None



def failure_reason(error: BaseException, path: str | os.PathLike) -> str:
    """Why opening or decoding the file at ``path`` raised ``error``: :data:`EMPTY_FILE` for a
    zero-byte file, else :func:`short_reason`."""
    try:
        if os.path.getsize(path) == 0:
            return EMPTY_FILE
    except OSError:
        pass
    return short_reason(error, path)


def header_reason(path: str | os.PathLike) -> str | None:
    """None when PIL identifies the file at ``path`` as an image from its header alone (format, mode
    and size; no pixels decoded, so a few KB read, not the whole file), else a short one-line reason
    without the path ("empty file (0 bytes)", "cannot identify image file", "Truncated File Read",
    "[Errno 2] No such file or directory", ...).

    PIL refuses a zero width or height when it opens a file, so an identified image has pixels.
    """
    try:
        with Image.open(path):
            pass
    except Exception as error:  # anything PIL raises while identifying means: not an image we can read
        return failure_reason(error, path)
    return None


# --- checking many -----------------------------------------------------------------------------------

def default_chunk_size(count: int, workers: int) -> int:
    """Items per task: about 8 chunks per worker, 16..512 items each."""
    return min(512, max(16, math.ceil(count / (workers * 8))))


def check_in_chunks(check_chunk: Callable[[Sequence[T]], list[str | None]], items: Sequence[T],
                    workers: int | None = None, chunk_size: int | None = None, *, what: str = "items",
                    describe: Callable[[T], str] = str, remedy: str = "") -> list[str | None]:
    """``check_chunk`` over consecutive chunks (slices) of ``items``, flattened: one reason (or None)
    per item, in order.

    ``workers`` forked processes (default: all available cores, :func:`available_cores`) run the
    chunks through :func:`embedlens.parallel.ordered_map`, a bounded number in flight; ``chunk_size``
    items per chunk (default :func:`default_chunk_size`). One worker, or one chunk, runs in this
    process. ``check_chunk`` must be picklable and return one entry per item of its chunk. A decoder
    that kills its worker process (a crash in C code, a signal) raises RuntimeError naming the first
    of the ``what`` not yet checked (``describe(item)``), then ``remedy``.
    """
    if not len(items):
        return []
    workers = max(1, workers or available_cores())
    chunk_size = max(1, chunk_size or default_chunk_size(len(items), workers))
    starts = range(0, len(items), chunk_size)
    if workers == 1 or len(starts) == 1:
        return list(check_chunk(items))
    chunks = (items[start:start + chunk_size] for start in starts)
    results: list[str | None] = []
    try:
        for reasons in ordered_map(check_chunk, chunks, min(workers, len(starts))):
            results.extend(reasons)
    except WorkerDied as error:
        first = starts[error.index]
        raise RuntimeError(
            f"an image decoder crashed its worker process ({error}) while checking the {what} from "
            f"{describe(items[first])} on (chunks of {chunk_size}){'; ' + remedy if remedy else ''}"
        ) from error
    return results


def _header_reasons(paths: Sequence[str]) -> list[str | None]:
    return [header_reason(path) for path in paths]


def check_headers(paths: Sequence[str], workers: int | None = None, chunk_size: int | None = None
                  ) -> list[str | None]:
    """:func:`header_reason` for every path, in order (see :func:`check_in_chunks` for ``workers``,
    ``chunk_size`` and what happens when a decoder crashes its worker)."""
    return check_in_chunks(_header_reasons, paths, workers, chunk_size, what="files",
                           remedy="move the offending file out of the tree and scan again")


__all__ = [
    "EMPTY_FILE", "MAX_REASON_CHARS", "batch_decodable_jpeg", "check_headers", "check_in_chunks", "decode_file",
    "default_chunk_size", "failure_reason", "header_reason", "open_rgb", "rgb_image", "short_reason", "to_rgb",
]
