"""The pixel check of a candidate pair: is the second image a copy of the first, re-encoded or slightly
edited, or only a look-alike that the embedding puts close?

Each image is turned into two 32 x 32 maps with PIL and numpy: its grey levels, and its edges (the
gradient magnitude of those grey levels). The centre of one image (24 x 24 of 32 x 32) is slid over
the other, shrunk by each of :data:`ZOOMS` (a crop of up to a quarter of the side, enlarged back, is a
zoom), over every shift the margin allows (up to 4 of 32 pixels), both ways round and with one image
mirrored. At each placement the Pearson correlation of the grey levels and that of the edges are
averaged; the **pixel similarity** is the best average over all placements (1: the same pixels up to
brightness and contrast).

Verdicts (:data:`VERDICTS`):

- ``exact``: the decoded pixels are identical (same size, every value equal);
- ``near``: pixel similarity >= ``near_threshold`` (0.9 by default): a re-encoded copy (JPEG), a
  small crop, a shift, a mirror, a brightness, saturation or colour change of the same photograph;
- ``similar``: below that: a different photograph that the embedding finds close (a look-alike), or
  the same photograph edited more than the check can undo.

Why these numbers (measured on genuine CIFAR-100): edited copies of 300 training images kept a pixel
similarity of at least 0.83 after JPEG at quality 50 (1% below 0.88), 0.83 after 2-4-pixel crops (1%
below 0.91), 0.97 after 2-4-pixel shifts, 1.0 after greyscale or halved saturation; the milder edits
the tests plant (JPEG 95, a 1-pixel crop, a 2-pixel shift, saturation 0.7 with brightness 1.1) kept
0.93 or more. 300 random pairs of different images of one class reached at most 0.71, but different
photographs of a simple, centred object (a rocket against the sky, a television on white) reached
0.76-0.86, which is why ``near`` starts at 0.9. Among the closest test-train pairs of the real store,
most pairs between 0.75 and 0.9 were the same photograph cropped or rescaled more than the check
undoes; they are left ``similar``, listed with their pixel similarity in duplicates.csv. Grey-level
correlation alone let different smooth images reach 0.92; edge correlation alone dropped JPEG copies
to 0.74; their average keeps the groups further apart. A strong hue rotation (30 of 256 steps) of a
saturated image changes its grey levels themselves and can fall to ``similar``; so can an image
without any texture (no correlation is defined on a flat image, and it counts as 0).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from embedlens.audit.settings import VERDICTS

SIDE = 32                  # both images are compared at 32 x 32 (CIFAR's own size)
MARGIN = 4                 # the centre template leaves this many pixels on each side: shifts up to 4 of 32
ZOOMS = (1.0, 0.9375, 0.875, 0.8125, 0.75)   # the searched image shrunk by these: crops up to 25% of the side
UNVERIFIED = "unverified"  # the verdict when an image of the pair cannot be read any more


@dataclass(frozen=True)
class PixelView:
    """What the check needs of one image: a digest of its decoded pixels (for ``exact``) and its grey
    levels and edges at :data:`SIDE` (``maps``: float64 (2, SIDE, SIDE))."""

    digest: str
    maps: np.ndarray


def pixel_view(image: np.ndarray) -> PixelView:
    """:class:`PixelView` of an RGB uint8 image (H, W, 3), any size."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()
    grey = np.asarray(Image.fromarray(image).convert("L").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float64)
    rows, columns = np.gradient(grey)
    return PixelView(digest, np.stack([grey, np.hypot(rows, columns)]))


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Each row centred and scaled to length 1 (a flat row stays 0), so dot products are correlations."""
    centred = vectors - vectors.mean(axis=-1, keepdims=True)
    norms = np.linalg.norm(centred, axis=-1, keepdims=True)
    return np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 1e-9)


def _resized(maps: np.ndarray, side: int) -> np.ndarray:
    if side == maps.shape[-1]:
        return maps
    return np.stack([np.asarray(Image.fromarray(plane.astype(np.float32), "F").resize((side, side), Image.BILINEAR),
                                dtype=np.float64) for plane in maps])


def _best_placement(template_maps: np.ndarray, searched_maps: np.ndarray) -> float:
    """The best mean correlation (grey, edges) of the centre of ``template_maps`` at any placement in
    ``searched_maps`` shrunk by any of :data:`ZOOMS`."""
    inner = SIDE - 2 * MARGIN
    template = _unit(template_maps[:, MARGIN:SIDE - MARGIN, MARGIN:SIDE - MARGIN].reshape(2, -1))
    best = -1.0
    for zoom in ZOOMS:
        searched = _resized(searched_maps, int(round(SIDE * zoom)))
        windows = _unit(sliding_window_view(searched, (inner, inner), axis=(1, 2)).reshape(2, -1, inner * inner))
        correlations = np.einsum("cwd,cd->wc", windows, template)  # (placements, 2): grey, edges
        best = max(best, float(correlations.mean(axis=1).max()))
    return best


def pixel_similarity(a: PixelView, b: PixelView) -> float:
    """How much ``b`` looks like a copy of ``a`` on its pixels, in [-1, 1] (see the module docstring):
    symmetric, 1.0 for identical pixels."""
    mirrored = a.maps[:, :, ::-1]
    return max(_best_placement(a.maps, b.maps), _best_placement(b.maps, a.maps),
               _best_placement(mirrored, b.maps), _best_placement(b.maps, mirrored))


def verdict(a: PixelView, b: PixelView, near_threshold: float) -> tuple[str, float]:
    """``(verdict, pixel similarity)`` of the pair (:data:`VERDICTS`)."""
    if a.digest == b.digest:
        return "exact", 1.0
    similarity = pixel_similarity(a, b)
    return ("near" if similarity >= near_threshold else "similar"), similarity


class PixelChecker:
    """Verdicts for many pairs, each image read (``read(key)`` -> RGB uint8 array) and prepared once;
    a key is anything hashable, e.g. ``(split, index_in_split)``. An image that cannot be read gives
    the pair the verdict :data:`UNVERIFIED` and a NaN similarity."""

    def __init__(self, read: Callable[[Hashable], np.ndarray], near_threshold: float):
        self.read = read
        self.near_threshold = near_threshold
        self._views: dict[Hashable, PixelView | None] = {}
        self.unreadable: dict[Hashable, str] = {}

    def view(self, key: Hashable) -> PixelView | None:
        if key not in self._views:
            try:
                self._views[key] = pixel_view(self.read(key))
            except Exception as error:  # the pair is listed unverified; the reason goes to the log
                self._views[key] = None
                self.unreadable[key] = f"{type(error).__name__}: {error}"
        return self._views[key]

    def check(self, a: Hashable, b: Hashable) -> tuple[str, float]:
        """``(verdict, pixel similarity)`` of the images ``a`` and ``b``."""
        view_a, view_b = self.view(a), self.view(b)
        if view_a is None or view_b is None:
            return UNVERIFIED, float("nan")
        return verdict(view_a, view_b, self.near_threshold)


__all__ = ["MARGIN", "SIDE", "UNVERIFIED", "VERDICTS", "ZOOMS", "PixelChecker", "PixelView", "pixel_similarity",
           "pixel_view", "verdict"]
