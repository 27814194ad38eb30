"""Pictures made small enough to embed in a self-contained page: figures downscaled and re-encoded,
image thumbnails packed into a few WebP sheets. One picture per thousand thumbnails costs a fraction
of a thousand small ones (a small JPEG's headers alone are ~600 bytes), and WebP takes ~30% less than
JPEG at the same quality: 20,000 CIFAR thumbnails of 64 px need ~10 MB."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FIGURE_MAX_SIDE = 2000  # px; a 100-class heatmap keeps ~12 px labels at this size
SHEET_COLUMNS = 32      # thumbnails per sheet row (and column): 1024 per sheet
SHEET_QUALITY = 75      # WebP quality of the thumbnail sheets
BACKGROUND = (236, 236, 236)  # the frame around thumbnails that are not square


def data_uri(payload: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


@dataclass(frozen=True)
class EmbeddedImage:
    """A picture ready for an ``<img src=...>``: its data URI and its size in pixels after downscaling."""

    src: str
    width: int
    height: int


def embed_figure(path: str | Path, max_side: int = FIGURE_MAX_SIDE) -> EmbeddedImage:
    """``path`` (any image Pillow reads) as a PNG data URI, downscaled so that its longer side is at most
    ``max_side`` and reduced to a 256-colour palette (plots have few colours; dithering hides the rest).
    The error names the file when it is missing or not an image."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot embed this figure in the report ({error})") from None
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    return EmbeddedImage(data_uri(buffer.getvalue(), "image/png"), image.width, image.height)


def thumbnail(pixels: np.ndarray, size: int) -> np.ndarray:
    """An RGB image fitted into a ``size`` x ``size`` square (aspect kept, centred on a light grey
    frame); small images are enlarged so every thumbnail shows at the same scale."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
    scale = size / max(image.size)
    fitted = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                          Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
    square = Image.new("RGB", (size, size), BACKGROUND)
    square.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return np.asarray(square)


def thumbnail_sheets(thumbnails: Iterable[np.ndarray], size: int, columns: int = SHEET_COLUMNS,
                     quality: int = SHEET_QUALITY) -> list[EmbeddedImage]:
    """Pack ``size`` x ``size`` thumbnails into WebP sheets of ``columns`` x ``columns`` cells, row by
    row. Thumbnail ``i`` is on sheet ``i // columns**2``, in cell ``i % columns**2`` (row-major);
    the last sheet has only the rows it needs."""
    per_sheet = columns * columns
    sheets: list[EmbeddedImage] = []
    batch: list[np.ndarray] = []

    def flush():
        rows = -(-len(batch) // columns)
        canvas = np.full((rows * size, columns * size, 3), BACKGROUND, dtype=np.uint8)
        for i, cell in enumerate(batch):
            r, c = divmod(i, columns)
            canvas[r * size:(r + 1) * size, c * size:(c + 1) * size] = cell
        buffer = io.BytesIO()
        Image.fromarray(canvas).save(buffer, format="WEBP", quality=quality, method=4)
        sheets.append(EmbeddedImage(data_uri(buffer.getvalue(), "image/webp"), canvas.shape[1], canvas.shape[0]))
        batch.clear()

    for cell in thumbnails:
        if cell.shape != (size, size, 3):
            raise ValueError(f"thumbnail of shape {cell.shape}; expected ({size}, {size}, 3)")
        batch.append(cell)
        if len(batch) == per_sheet:
            flush()
    if batch:
        flush()
    return sheets
