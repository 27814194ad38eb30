"""ImageNet (ILSVRC-2012 CLS-LOC) as distributed, and the ``imagenet`` dataset kind.

Layout under ``root`` (the Kaggle "imagenet-object-localization-challenge" folder, or any folder that
holds ``train/`` and ``val/`` itself)::

    root/LOC_synset_mapping.txt          "n01440764 tench, Tinca tinca", 1000 lines, sorted by WNID
    root/LOC_val_solution.csv            ImageId,PredictionString ("n01751748 x y x y ..."); first token = WNID
    root/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG   (or root/train/<wnid>/*.JPEG)
    root/ILSVRC/Data/CLS-LOC/val/*.JPEG            (or root/val/*.JPEG; val/<wnid>/*.JPEG also works)

The two text files are looked up in ``root``, in the folder that holds ``train/`` and in the folders
between them. Without ``LOC_val_solution.csv``, val labels come from ``val/<wnid>/`` sub-folders.

**Image ids** (the ``index_in_split`` of the manifest, and ``train_id`` / ``val_id`` of the subset NPZ)
lead back to exactly one file, with no table needed:

- train: ``original_id * 100000 + k``, where ``original_id`` is the WNID's position (0-999) in the
  sorted list of the synset mapping's WNIDs (the standard ImageNet class index) and ``k`` is the file's
  position (0-based) among the image files of ``train/<wnid>/`` sorted by name (Python string order;
  image files: names ending .JPEG/.jpeg/.jpg/.png in any case, not starting with ".");
- val: the image's position (0-based) in the sorted list of every val ImageId (all 50,000, from
  ``LOC_val_solution.csv``); for ILSVRC-2012 that is ``N - 1`` for ``ILSVRC2012_val_{N:08d}.JPEG``.

:func:`id_to_source` decodes an id.

**WNID lists** (one WNID per line; blank lines and lines starting with ``#`` are ignored) restrict and
order the classes: label = line number (0-based). ``imagenet30``, ``imagenet100`` and
``imagenet100_cmc`` name the lists shipped in ``embedlens/imagenet_lists/``; any other value is a path.

**Pixels** come from :mod:`embedlens.images` with ``exif_orientation=False``: as the standard ImageNet
loaders (torchvision's ``ImageFolder``, timm) read them, ignoring an EXIF orientation tag.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedlens.datasets.base import DatasetScan, ImageDataset
from embedlens.images import batch_decodable_jpeg, check_headers, decode_file
from embedlens.manifest import SKIPPED_COLUMNS

SYNSET_MAPPING = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
KAGGLE_IMAGES = Path("ILSVRC") / "Data" / "CLS-LOC"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
TRAIN_ID_STRIDE = 100_000
SPLITS = ("train", "val")
SHIPPED_LISTS_DIR = Path(__file__).resolve().parent.parent / "imagenet_lists"
# Pixels are read as the standard ImageNet loaders read them, ignoring EXIF orientation (see the
# module docstring); the subset builder reads them the same way.
EXIF_ORIENTATION = False


class WnidListError(ValueError):
    """A WNID list names unknown WNIDs, repeats one, or names classes whose train folder is missing."""


# --- the layout -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImagenetLayout:
    """Where the parts of an ImageNet copy are. ``root`` is as configured; sources are relative to it."""

    root: Path
    images: Path                 # the folder that holds train/ and val/
    synset_mapping: Path
    val_solution: Path | None    # None: val labels come from val/<wnid>/ folders (if any)

    @property
    def train(self) -> Path:
        return self.images / "train"

    @property
    def val(self) -> Path:
        return self.images / "val"

    def source(self, path: str | os.PathLike) -> str:
        """``path`` relative to ``root``, with forward slashes."""
        return Path(os.path.relpath(path, self.root)).as_posix()


def locate(root: str | os.PathLike) -> ImagenetLayout:
    """Find train/, val/ and the two metadata files under ``root``; a clear error when they are not there."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet root {root} is not a folder")
    images = None
    for candidate in (root, root / KAGGLE_IMAGES):
        if (candidate / "train").is_dir() or (candidate / "val").is_dir():
            images = candidate
            break
    if images is None:
        raise FileNotFoundError(
            f"no ImageNet images under {root}: expected train/ and val/ in it or in {KAGGLE_IMAGES}/ "
            f"(the ILSVRC CLS-LOC layout: train/<wnid>/*.JPEG, val/*.JPEG)")
    folders = [root]
    for parent in reversed(images.relative_to(root).parents):
        if root / parent not in folders:
            folders.append(root / parent)
    if images not in folders:
        folders.append(images)

    def find(name: str) -> Path | None:
        return next((folder / name for folder in folders if (folder / name).is_file()), None)

    mapping = find(SYNSET_MAPPING)
    if mapping is None:
        raise FileNotFoundError(
            f"no {SYNSET_MAPPING} in {', '.join(map(str, folders))}; it comes with the ILSVRC CLS-LOC "
            f"distribution (lines like 'n01440764 tench, Tinca tinca')")
    return ImagenetLayout(root, images, mapping, find(VAL_SOLUTION))


# --- metadata files -------------------------------------------------------------------------------

def read_synset_mapping(path: str | os.PathLike) -> dict[str, str]:
    """``LOC_synset_mapping.txt`` as {wnid: "tench, Tinca tinca"}, sorted by WNID."""
    mapping = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            wnid, _, names = line.partition(" ")
            if not names.strip():
                raise ValueError(f"{path}:{number}: expected 'WNID name, name, ...', got {line!r}")
            mapping[wnid] = names.strip()
    return dict(sorted(mapping.items()))


def unique_class_names(mapping: dict[str, str]) -> dict[str, str]:
    """{wnid: first human name}, with ``_<wnid>`` appended to names two synsets share (crane, maillot).

    Computed over the whole mapping, so a class has the same name whatever list selects it.
    """
    first = {wnid: names.split(",")[0].strip() for wnid, names in mapping.items()}
    counts = Counter(first.values())
    return {wnid: f"{name}_{wnid}" if counts[name] > 1 else name for wnid, name in first.items()}


def original_ids(mapping: dict[str, str]) -> dict[str, int]:
    """{wnid: standard class index}: the position in the sorted WNIDs (0-999 for ILSVRC)."""
    return {wnid: i for i, wnid in enumerate(sorted(mapping))}


def read_val_labels(path: str | os.PathLike) -> dict[str, str]:
    """``LOC_val_solution.csv`` as {ImageId: wnid}, sorted by ImageId (first token of PredictionString)."""
    labels = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns ImageId,PredictionString; got {reader.fieldnames}")
        for row in reader:
            tokens = (row["PredictionString"] or "").split()
            if not tokens:
                raise ValueError(f"{path}: image {row['ImageId']!r} has an empty PredictionString")
            labels[row["ImageId"]] = tokens[0]
    return dict(sorted(labels.items()))


def resolve_wnid_list(value: str | os.PathLike) -> Path:
    """The file a config's list value names: a shipped list (``imagenet100``) or a path."""
    text = str(value)
    shipped = SHIPPED_LISTS_DIR / f"{text}.txt"
    if os.sep not in text and "/" not in text and not text.endswith(".txt") and shipped.is_file():
        return shipped
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"WNID list {text!r}: no such file, and not a shipped list "
                                f"(shipped: {', '.join(shipped_lists())})")
    return path


def shipped_lists() -> list[str]:
    """Names of the WNID lists that ship with embedlens."""
    return sorted(p.stem for p in SHIPPED_LISTS_DIR.glob("*.txt"))


def read_wnid_list(path: str | os.PathLike, known: Sequence[str] | dict | None = None,
                   train_dir: str | os.PathLike | None = None) -> list[str]:
    """The WNIDs of a list file, in line order, after checking them all.

    Every problem is collected and reported together in one :class:`WnidListError`: duplicates (with
    their line numbers), WNIDs not in ``known`` (the synset mapping), and, when ``train_dir`` is
    given, WNIDs without a ``train_dir/<wnid>/`` folder.
    """
    wnids, lines = [], {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            token = line.strip()
            if not token or token.startswith("#"):
                continue
            wnids.append(token)
            lines.setdefault(token, []).append(number)
    problems = []
    if not wnids:
        problems.append("the list is empty")
    duplicated = [w for w in lines if len(lines[w]) > 1]
    if duplicated:
        problems.append("duplicated: " + ", ".join(
            f"{w} (lines {', '.join(map(str, lines[w]))})" for w in duplicated))
    if known is not None:
        unknown = [w for w in lines if w not in known]
        if unknown:
            problems.append(f"not in the synset mapping: {', '.join(unknown)}")
    if train_dir is not None:
        missing = [w for w in lines if (known is None or w in known) and not (Path(train_dir) / w).is_dir()]
        if missing:
            problems.append(f"no train folder in {train_dir}: {', '.join(missing)}")
    if problems:
        raise WnidListError(f"WNID list {path}: " + "; ".join(problems))
    return wnids


# --- enumerating images -----------------------------------------------------------------------------

def list_image_files(folder: str | os.PathLike) -> list[str]:
    """Names of the image files in ``folder``, sorted (the order that train ids count in)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries
                      if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_SUFFIXES)
                      and e.is_file())


@dataclass(frozen=True, slots=True)
class Candidate:
    """One image to read: its id (see the module docstring), its WNID and its file (a str, to stay
    small when there are a million of them)."""

    id: int
    wnid: str
    path: str


def iter_train_candidates(layout: ImagenetLayout, wnids: Sequence[str],
                          ids: dict[str, int]) -> Iterator[Candidate]:
    """The train images of ``wnids``, class by class in the given order, files sorted by name; one
    class folder is listed at a time, so a million images never sit in memory together."""
    for wnid in wnids:
        folder = layout.train / wnid
        names = list_image_files(folder)
        if len(names) > TRAIN_ID_STRIDE:
            raise ValueError(f"{folder} has {len(names)} images; train ids allow {TRAIN_ID_STRIDE}")
        base = ids[wnid] * TRAIN_ID_STRIDE
        if base + len(names) > np.iinfo(np.int32).max:
            raise ValueError(f"class index {ids[wnid]} of {wnid} is too large for int32 train ids")
        prefix = str(folder)
        for k, name in enumerate(names):
            yield Candidate(base + k, wnid, os.path.join(prefix, name))


def count_train_images(layout: ImagenetLayout, wnids: Sequence[str]) -> int:
    """How many train images :func:`iter_train_candidates` will yield."""
    return sum(len(list_image_files(layout.train / wnid)) for wnid in wnids)


def train_candidates(layout: ImagenetLayout, wnids: Sequence[str], ids: dict[str, int]) -> list[Candidate]:
    """Every train image of ``wnids`` (see :func:`iter_train_candidates`), as a list."""
    return list(iter_train_candidates(layout, wnids, ids))


def val_index(layout: ImagenetLayout) -> dict[str, tuple[str, Path]]:
    """{ImageId: (wnid, file)} for every labelled val image, sorted by ImageId.

    Labels from ``LOC_val_solution.csv``; the file is ``val/<ImageId>.<ext>`` or, in the foldered
    layout, ``val/<wnid>/<ImageId>.<ext>``. Without the CSV, every ``val/<wnid>/`` file counts.
    """
    index: dict[str, tuple[str, Path]] = {}
    if not layout.val.is_dir():
        raise FileNotFoundError(f"no val/ folder in {layout.images}")
    flat = {os.path.splitext(n)[0]: layout.val / n for n in list_image_files(layout.val)}
    if layout.val_solution is not None:
        for image_id, wnid in read_val_labels(layout.val_solution).items():
            path = flat.get(image_id)
            if path is None:
                nested = layout.val / wnid
                names = [n for n in (f"{image_id}.JPEG", f"{image_id}.jpeg", f"{image_id}.jpg")
                         if (nested / n).is_file()]
                path = nested / names[0] if names else layout.val / f"{image_id}.JPEG"
            index[image_id] = (wnid, path)
    else:
        with os.scandir(layout.val) as entries:
            folders = sorted(e.name for e in entries if e.is_dir())
        if not folders:
            raise FileNotFoundError(
                f"no {VAL_SOLUTION} for the val labels (looked beside {SYNSET_MAPPING}) and no "
                f"val/<wnid>/ folders in {layout.images}")
        for wnid in folders:
            for name in list_image_files(layout.val / wnid):
                index[os.path.splitext(name)[0]] = (wnid, layout.val / wnid / name)
    return dict(sorted(index.items()))


def val_candidates(layout: ImagenetLayout, wnids: Sequence[str]) -> list[Candidate]:
    """The val images whose WNID is in ``wnids``, in id order (sorted ImageId)."""
    wanted = set(wnids)
    return [Candidate(i, wnid, str(path)) for i, (wnid, path) in enumerate(val_index(layout).values())
            if wnid in wanted]


def id_to_source(root: str | os.PathLike, split: str, image_id: int) -> Path:
    """The file that train or val id ``image_id`` of the ImageNet copy at ``root`` names."""
    layout = locate(root)
    if split == "train":
        wnid = sorted(read_synset_mapping(layout.synset_mapping))[image_id // TRAIN_ID_STRIDE]
        folder = layout.train / wnid
        return folder / list_image_files(folder)[image_id % TRAIN_ID_STRIDE]
    if split == "val":
        return list(val_index(layout).values())[image_id][1]
    raise ValueError(f"ImageNet splits are {', '.join(SPLITS)}, not {split!r}")


# --- the dataset kind -------------------------------------------------------------------------------

class ImageNet(ImageDataset):
    """ILSVRC-2012 CLS-LOC, splits train and val. ``source`` is the file's path relative to ``root``.

    Config keys: ``root`` (see the module docstring), ``wnids`` (optional WNID list: a shipped list name
    or a file; restricts and orders the classes, label = line number). Without ``wnids`` every WNID of
    the synset mapping is a class and label = its standard index (position in the sorted WNIDs).
    ``class_name`` is the synset's first human name, with ``_<wnid>`` appended where two synsets share
    it. ``index_in_split`` is the image id described in the module docstring. Scanning reads every
    file's header, not its pixels (in ``scan_workers`` processes, default: all cores; see
    :class:`~embedlens.datasets.base.ImageDataset`): files that are missing, empty or not images are
    skipped up front; a file whose pixel data is damaged (a truncated JPEG) is found by extraction,
    which decodes every file anyway.
    """

    kind = "imagenet"
    default_splits = SPLITS

    def __init__(self, spec: dict):
        super().__init__(spec)
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"dataset {self.name!r}: ImageNet has splits train and val, not {unknown}")
        if "root" not in spec:
            raise ValueError(f"dataset {self.name!r}: kind imagenet needs root")
        self.root = Path(spec["root"])
        self.wnids_file = resolve_wnid_list(spec["wnids"]) if spec.get("wnids") else None

    def classes(self) -> tuple[ImagenetLayout, list[str], list[str]]:
        """The layout, the WNIDs in label order and their class names; checks the WNID list first."""
        layout = locate(self.root)
        mapping = read_synset_mapping(layout.synset_mapping)
        if self.wnids_file is not None:
            train_dir = layout.train if "train" in self.splits else None
            wnids = read_wnid_list(self.wnids_file, mapping, train_dir)
        else:
            wnids = list(mapping)
        names = unique_class_names(mapping)
        return layout, wnids, [names[w] for w in wnids]

    def _scan(self) -> DatasetScan:
        layout, wnids, class_names = self.classes()
        label_of = {wnid: label for label, wnid in enumerate(wnids)}
        ids = original_ids(read_synset_mapping(layout.synset_mapping))
        if "train" in self.splits:
            missing = [w for w in wnids if not (layout.train / w).is_dir()]
            if missing:
                raise FileNotFoundError(f"dataset {self.name!r}: no train folder for {', '.join(missing)}")
        frames, skipped = [], []
        for split in self.splits:
            found = (train_candidates(layout, wnids, ids) if split == "train"
                     else val_candidates(layout, wnids))
            paths = [str(c.path) for c in found]
            reasons = check_headers(paths, self.scan_workers, self.scan_chunk_size)
            keep = [c for c, r in zip(found, reasons) if r is None]
            skipped += [(split, layout.source(c.path), r) for c, r in zip(found, reasons) if r is not None]
            frames.append(pd.DataFrame({
                "index_in_split": np.array([c.id for c in keep], dtype=np.int64),
                "split": split,
                "label": np.array([label_of[c.wnid] for c in keep], dtype=np.int64),
                "class_name": [class_names[label_of[c.wnid]] for c in keep],
                "source": [layout.source(c.path) for c in keep],
            }))
        return DatasetScan(pd.concat(frames, ignore_index=True), class_names,
                           pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))

    def source_file(self, split: str, source: str) -> Path:
        return Path(os.path.abspath(self.root / source))

    def read_image(self, split: str, source: str) -> np.ndarray:
        return decode_file(self.root / source, exif_orientation=EXIF_ORIENTATION)

    def read_encoded(self, split: str, source: str) -> bytes | None:
        return batch_decodable_jpeg(self.root / source, exif_orientation=EXIF_ORIENTATION)


__all__ = [
    "Candidate", "EXIF_ORIENTATION", "ImageNet", "ImagenetLayout", "TRAIN_ID_STRIDE", "WnidListError",
    "count_train_images", "id_to_source", "iter_train_candidates", "list_image_files", "locate",
    "original_ids", "read_synset_mapping", "read_val_labels", "read_wnid_list", "resolve_wnid_list",
    "shipped_lists", "train_candidates", "unique_class_names", "val_candidates", "val_index",
]
