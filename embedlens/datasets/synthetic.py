"""Procedurally drawn images with known class structure, including designed look-alike class pairs.

A class is a *design*: a shape, a colour and a texture, named ``{colour}_{shape}_{texture}``
(e.g. ``red_circle_solid``). There are 7 shapes, 7 colours and 7 textures; the 49 base designs are
the Latin square ``colour = shape + j``, ``texture = 2*shape + j`` (mod 7) for j = 0..6, taken in
that order, so any two base designs differ in at least two of shape, colour and texture, and the
first seven (j = 0) differ in all three.

``overlapping_pairs`` = P makes the last P classes *look-alikes* of the first P: same shape, same
texture, and a colour 12 to 13 RGB units away (``red`` -> ``crimson``, ``blue`` -> ``cobalt``, ...),
less than the per-image colour jitter (uniform +-20 per channel), so the two classes overlap in pixel
space: a classifier can tell them apart only part of the time, every other pair easily.
With ``num_classes`` = C the classes are base designs 0..C-P-1 followed by the P look-alikes; labels
follow that order. At most 49 + P classes exist (the error says so).

Within a class every image varies in position (centre within +-12% of the side), scale (radius 29-39%
of the side), rotation (any angle), colour jitter, texture period and phase, background grey level
(55-95), tint and clutter (a shading and soft blobs of its own, so that two drawings of one design
are as different on their pixels as two photographs, not near copies), and uniform pixel noise
(amplitude 3-12). Each texture has its own second tone
(see :func:`_texture`), so textures differ in colour statistics as well as in pattern.

Images are assigned to classes *interleaved*: image ``i`` of a split has label ``i % C`` (so every
prefix of a split is class-balanced); a split of ``n`` images per class holds ``n * C`` images.
``source`` is ``str(i)`` and ``index_in_split`` is ``i``.

Each image is a pure function of (seed, split, index) and the dataset's settings: its random numbers
come from ``numpy.random.default_rng`` seeded with (seed, a SHA-256 of the split name, index), and it
is drawn with IEEE arithmetic on numpy arrays only (no rasteriser whose output could change between
library versions; numpy keeps the PCG64 stream and ``Generator.random`` stable across platforms),
so the same settings give byte-identical images on any machine. Nothing is stored.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from embedlens.datasets.base import DatasetScan, ImageDataset

SHAPES = ("circle", "square", "triangle", "star", "cross", "crescent", "arrow")
TEXTURES = ("solid", "striped", "dotted", "checkered", "ringed", "hollow", "gradient")
# name, RGB, look-alike name, look-alike RGB (12 to 13 units away)
COLOURS = (
    ("red", (215, 45, 45), "crimson", (207, 40, 54)),
    ("green", (50, 175, 60), "emerald", (45, 170, 70)),
    ("blue", (45, 85, 215), "cobalt", (40, 92, 207)),
    ("yellow", (225, 210, 40), "gold", (229, 200, 36)),
    ("purple", (145, 55, 200), "violet", (154, 58, 208)),
    ("orange", (240, 140, 30), "amber", (240, 151, 36)),
    ("cyan", (40, 195, 205), "turquoise", (46, 203, 196)),
)
BASE_DESIGNS = 49
COLOUR_JITTER = 20.0
# Each image's own background (see _clutter): a shading of up to +-1.5 * CLUTTER_SHADING / 2 grey levels
# across the image and CLUTTER_BLOBS bumps of up to +-CLUTTER_BLOB_HEIGHT, each reaching CLUTTER_REACH[0]
# plus up to CLUTTER_REACH[1] of the side. Measured on 540 pairs of independent drawings of the demo's 12
# classes: pixel similarity at most 0.86 (the audit's near copies start at 0.9), while the same drawings
# re-encoded, cropped, shifted, mirrored or recoloured keep 0.925 or more.
CLUTTER_SHADING = 80.0
CLUTTER_BLOBS = 12
CLUTTER_BLOB_HEIGHT = 60.0
CLUTTER_REACH = (0.06, 0.12)


@dataclass(frozen=True)
class Design:
    """One class: what is drawn. ``twin_of`` names the class this one is a designed look-alike of."""

    name: str
    shape: str
    colour: tuple[int, int, int]
    texture: str
    twin_of: str | None = None


def base_design(k: int) -> Design:
    """Base design ``k`` (0..48) of the Latin square."""
    j, s = divmod(k, 7)
    c, t = (s + j) % 7, (2 * s + j) % 7
    colour_name, rgb = COLOURS[c][0], COLOURS[c][1]
    return Design(f"{colour_name}_{SHAPES[s]}_{TEXTURES[t]}", SHAPES[s], rgb, TEXTURES[t])


def look_alike(design: Design) -> Design:
    """The designed look-alike of a base design: same shape and texture, nearly the same colour."""
    entry = next(e for e in COLOURS if e[1] == design.colour)
    return Design(f"{entry[2]}_{design.shape}_{design.texture}", design.shape, entry[3], design.texture,
                  twin_of=design.name)


def class_designs(num_classes: int, overlapping_pairs: int) -> list[Design]:
    """The designs of labels 0..num_classes-1 (base designs first, then the look-alikes)."""
    bases = [base_design(k) for k in range(num_classes - overlapping_pairs)]
    return bases + [look_alike(bases[k]) for k in range(overlapping_pairs)]


def max_classes(overlapping_pairs: int) -> int:
    """The most classes that can be drawn with ``overlapping_pairs`` look-alike pairs."""
    return BASE_DESIGNS + overlapping_pairs


# -- drawing ---------------------------------------------------------------------------------------
# Shapes live in a unit frame (radius about 1); polygons are tested by crossing number.

def _rounded(x: float) -> float:
    # Trigonometry may differ in the last bit between C libraries; rounding makes the inputs of the
    # (exact) array arithmetic identical everywhere.
    return round(x, 12)


def _regular(n: int, radius: float, start: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(_rounded(radius * math.cos(start + 2 * math.pi * i / n)),
             _rounded(radius * math.sin(start + 2 * math.pi * i / n))) for i in range(n)]


def _star() -> list[tuple[float, float]]:
    outer, inner = _regular(5, 1.05), _regular(5, 0.45, -math.pi / 2 + math.pi / 5)
    return [p for pair in zip(outer, inner) for p in pair]


POLYGONS = {
    "triangle": _regular(3, 1.1, -math.pi / 2),
    "star": _star(),
    "arrow": [(-0.95, -0.38), (0.05, -0.38), (0.05, -0.85), (0.95, 0.0), (0.05, 0.85), (0.05, 0.38),
              (-0.95, 0.38)],
}


def _in_polygon(u: np.ndarray, v: np.ndarray, vertices: list[tuple[float, float]]) -> np.ndarray:
    inside = np.zeros(u.shape, dtype=bool)
    n = len(vertices)
    for i in range(n):
        (x1, y1), (x2, y2) = vertices[i], vertices[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        crosses &= u < (x2 - x1) / (y2 - y1) * (v - y1) + x1
        inside ^= crosses
    return inside


def _in_shape(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "circle":
        return u * u + v * v <= 0.9
    if shape == "square":
        return (np.abs(u) <= 0.78) & (np.abs(v) <= 0.78)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.34) & (av <= 0.95)) | ((av <= 0.34) & (au <= 0.95))
    if shape == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.45) * (u - 0.45) + v * v > 0.7)
    return _in_polygon(u, v, POLYGONS[shape])


def _texture(texture: str, u: np.ndarray, v: np.ndarray, shape_mask: np.ndarray, shape: str,
             colour: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the drawn pixels, their RGB) for ``texture`` in colour ``colour``.

    Each texture has its own second tone, so textures differ in colour statistics as well as in
    pattern: striped dark, ringed half-dark, checkered pastel, dotted near-white, gradient darkening
    towards the edge; hollow draws only the outline band, solid one flat colour.
    """
    period = 0.28 + 0.12 * rng.random()
    phase_u, phase_v = rng.random(), rng.random()
    a, b = u / period + phase_u, v / period + phase_v
    mask = shape_mask
    second = None  # (where, tone) of the second tone
    if texture == "striped":
        second = (np.floor(a) % 2 == 1, colour * 0.35)
    elif texture == "ringed":
        r = np.sqrt(u * u + v * v) / period + phase_u
        second = (np.floor(r) % 2 == 1, colour * 0.6)
    elif texture == "checkered":
        second = ((np.floor(a) + np.floor(b)) % 2 == 1, colour + 0.5 * (255.0 - colour))
    elif texture == "dotted":
        du, dv = a - np.floor(a) - 0.5, b - np.floor(b) - 0.5
        second = (du * du + dv * dv <= 0.09, colour + 0.85 * (255.0 - colour))
    elif texture == "hollow":
        inner = 0.45 + 0.1 * rng.random()
        mask = shape_mask & ~_in_shape(shape, u / inner, v / inner)
    rgb = np.empty(u.shape + (3,))
    if texture == "gradient":
        shade = 1.0 - 0.55 * np.minimum(u * u + v * v, 1.0)
        rgb[:] = shade[:, :, None] * colour
    else:
        rgb[:] = colour
        if second is not None:
            rgb[second[0]] = second[1]
    return mask, rgb


def draw(design: Design, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of ``design`` as RGB uint8 (size, size, 3); every random choice comes from ``rng``."""
    # Background: a random grey level with a slight random tint, and pixel noise.
    grey = 55.0 + 40.0 * rng.random()
    tint = (rng.random(3) - 0.5) * 16.0
    noise_amount = 3.0 + 9.0 * rng.random()
    # Pose: centre, radius, rotation.
    cx = size * (0.5 + 0.24 * (rng.random() - 0.5))
    cy = size * (0.5 + 0.24 * (rng.random() - 0.5))
    radius = size * (0.29 + 0.1 * rng.random())
    angle = 2 * math.pi * rng.random()
    cos, sin = _rounded(math.cos(angle)), _rounded(math.sin(angle))
    colour = np.asarray(design.colour, dtype=np.float64) + (rng.random(3) - 0.5) * (2 * COLOUR_JITTER)

    image = np.empty((size, size, 3))
    image[:] = grey + tint
    # Only the shape's bounding box needs the shape arithmetic.
    lo_x, hi_x = max(0, int(cx - 1.1 * radius)), min(size, int(cx + 1.1 * radius) + 2)
    lo_y, hi_y = max(0, int(cy - 1.1 * radius)), min(size, int(cy + 1.1 * radius) + 2)
    x = np.arange(lo_x, hi_x, dtype=np.float64)[None, :] + 0.5 - cx
    y = np.arange(lo_y, hi_y, dtype=np.float64)[:, None] + 0.5 - cy
    u = (x * cos + y * sin) / radius
    v = (y * cos - x * sin) / radius
    shape_mask = _in_shape(design.shape, u, v)
    mask, rgb = _texture(design.texture, u, v, shape_mask, design.shape, colour, rng)
    image[lo_y:hi_y, lo_x:hi_x][mask] = rgb[mask]
    placed = np.zeros((size, size), dtype=bool)
    placed[lo_y:hi_y, lo_x:hi_x] = mask

    noise = (rng.random((size, size, 3)) - 0.5) * (2 * noise_amount)
    background = _clutter(size, rng)[:, :, None]
    return np.clip(np.rint(image + np.where(placed[:, :, None], 0.0, background) + noise), 0, 255).astype(np.uint8)


def _clutter(size: int, rng: np.random.Generator) -> np.ndarray:
    """A background of its own for every image, (size, size) grey-level offsets: a linear shading in a
    random direction and :data:`CLUTTER_BLOBS` soft blobs, lighter or darker. Like the backgrounds of two
    photographs, it tells two drawings of one design apart on their pixels; without it two solid circles
    of one colour on flat grey are pixel for pixel what the audit calls a near copy."""
    centre = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5
    x, y = centre[None, :], centre[:, None]
    angle = 2 * math.pi * rng.random()
    offsets = (CLUTTER_SHADING * (rng.random() + 0.5)) * (x * _rounded(math.cos(angle)) + y * _rounded(math.sin(angle)))
    for _ in range(CLUTTER_BLOBS):
        bx, by = rng.random() - 0.5, rng.random() - 0.5
        reach = CLUTTER_REACH[0] + CLUTTER_REACH[1] * rng.random()
        height = CLUTTER_BLOB_HEIGHT * (2 * rng.random() - 1)
        falloff = np.maximum(0.0, 1.0 - ((x - bx) ** 2 + (y - by) ** 2) / (reach * reach))
        offsets = offsets + height * falloff * falloff  # a smooth bump without exp(), exact on any machine
    return offsets


def _split_key(split: str) -> int:
    return int.from_bytes(hashlib.sha256(split.encode("utf-8")).digest()[:8], "little")


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split``; a pure function of its arguments."""
    return np.random.default_rng([abs(int(seed)), int(seed < 0), _split_key(split), int(index)])


# -- the dataset kind ------------------------------------------------------------------------------

class SyntheticDataset(ImageDataset):
    """Drawn shapes in ``num_classes`` classes, ``overlapping_pairs`` of them designed look-alike pairs.

    Keys (defaults as in the schema): ``num_classes`` (10), ``images_per_class`` (split -> count,
    {train: 40, test: 10}), ``image_size`` (64), ``overlapping_pairs`` (2), ``seed`` (0); ``splits``
    restricts the splits to some keys of images_per_class. See the module docstring for the design.
    The scan's ``extras["designed_overlapping_pairs"]`` lists the look-alike pairs as
    ``[[base class, look-alike class], ...]``.
    """

    kind = "synthetic"

    def __init__(self, spec: dict):
        super().__init__(spec)
        prefix = f"dataset {self.name!r}"
        self.num_classes = self._integer("num_classes", 2)
        self.image_size = self._integer("image_size", 16)
        self.overlapping_pairs = self._integer("overlapping_pairs", 0)
        self.seed = self._integer("seed", None)
        per_class = self.spec["images_per_class"]
        if not isinstance(per_class, dict) or not per_class:
            raise ValueError(f"{prefix}: images_per_class must be a mapping split -> images per class, "
                             f"e.g. {{train: 40, test: 10}}; got {per_class!r}")
        for split, count in per_class.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValueError(f"{prefix}: images_per_class.{split} must be an integer >= 1; got {count!r}")
        self.images_per_class: dict[str, int] = dict(per_class)
        if spec.get("splits"):
            unknown = [s for s in self.splits if s not in self.images_per_class]
            if unknown:
                raise ValueError(f"{prefix}: splits {unknown} have no count in images_per_class, which "
                                 f"has {list(self.images_per_class)}; add them there or drop them from "
                                 f"splits")
            repeated = sorted({s for s in self.splits if self.splits.count(s) > 1})
            if repeated:
                raise ValueError(f"{prefix}: splits: {repeated} listed more than once")
        else:
            self.splits = list(self.images_per_class)
        if 2 * self.overlapping_pairs > self.num_classes:
            raise ValueError(f"{prefix}: overlapping_pairs: {self.overlapping_pairs} pairs need "
                             f"{2 * self.overlapping_pairs} classes but num_classes is {self.num_classes} "
                             f"(overlapping_pairs * 2 must be <= num_classes)")
        most = max_classes(self.overlapping_pairs)
        if self.num_classes > most:
            raise ValueError(f"{prefix}: num_classes: {self.num_classes} is more than the distinct designs "
                             f"available; with overlapping_pairs: {self.overlapping_pairs} at most {most} "
                             f"classes ({BASE_DESIGNS} shape/colour/texture designs plus one look-alike "
                             f"per pair)")
        self.designs = class_designs(self.num_classes, self.overlapping_pairs)

    def _integer(self, key: str, minimum: int | None) -> int:
        value = self.spec[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"dataset {self.name!r}: {key} must be an integer; got {value!r}")
        if minimum is not None and value < minimum:
            raise ValueError(f"dataset {self.name!r}: {key} must be >= {minimum}; got {value}")
        return value

    @property
    def class_names(self) -> list[str]:
        return [d.name for d in self.designs]

    def designed_overlapping_pairs(self) -> list[list[str]]:
        """``[[base class, look-alike class], ...]`` in label order of the base classes."""
        return [[d.twin_of, d.name] for d in self.designs if d.twin_of is not None]

    def scan(self) -> DatasetScan:
        """The base scan, with ``designed_overlapping_pairs`` cut to the pairs whose classes both
        survive the ``classes`` filter."""
        scan = super().scan()
        kept = set(scan.manifest["class_name"])
        pairs = [pair for pair in self.designed_overlapping_pairs() if set(pair) <= kept]
        return replace(scan, extras={**scan.extras, "designed_overlapping_pairs": pairs})

    def split_size(self, split: str) -> int:
        return self.images_per_class[split] * self.num_classes

    def _scan(self) -> DatasetScan:
        names = self.class_names
        frames = []
        for split in self.splits:
            index = np.arange(self.split_size(split), dtype=np.int64)
            labels = index % self.num_classes
            frames.append(pd.DataFrame({
                "index_in_split": index,
                "split": split,
                "label": labels,
                "class_name": [names[k] for k in labels],
                "source": [str(i) for i in index],
            }))
        return DatasetScan(pd.concat(frames, ignore_index=True), names,
                           extras={"designed_overlapping_pairs": self.designed_overlapping_pairs()})

    def read_image(self, split: str, source: str) -> np.ndarray:
        if split not in self.images_per_class:
            raise KeyError(f"dataset {self.name!r}: no split {split!r}; "
                           f"splits: {list(self.images_per_class)}")
        index = int(source)
        if not 0 <= index < self.split_size(split):
            raise IndexError(f"dataset {self.name!r}: split {split!r} has images "
                             f"0..{self.split_size(split) - 1}, not {index}")
        design = self.designs[index % self.num_classes]
        return draw(design, self.image_size, image_rng(self.seed, split, index))
