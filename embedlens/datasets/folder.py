"""Any directory tree of image files: the class is the first folder level under the root.

Layout (like torchvision's ``ImageFolder``)::

    root/cat/001.jpg              split "train" (no ``splits`` key): the whole root is one split
    root/cat/more/002.png         nested folders inside a class belong to that class
    root/dog/003.webp
    root/loose.png                an image directly at the root: label -1, class_name ""

With ``splits: [train, test]`` each split is a sub-folder of root with the same layout inside
(``root/train/cat/001.jpg``, ``root/test/cat/004.jpg``); the class names are the union over the splits,
so a label means the same class in every split.

Rules, all deterministic:
- an image is a file whose name ends (case-insensitively) in one of ``extensions``; hidden files and
  folders (name starting with ".") are ignored, symlinked folders are followed (once each);
- a class is a first-level folder that holds at least one image file (empty folders are ignored);
  labels are the sorted class names, 0..C-1;
- ``index_in_split`` is the position in the split's image files sorted by path components, counted
  before the files are checked, so a file keeps its index even when a neighbour is skipped;
- ``source`` is the path relative to root in POSIX form (``train/cat/001.jpg`` with splits), so
  manifests are portable; :meth:`FolderDataset.source_file` turns it back into an absolute path;
- the scan reads every file's header, not its pixels (in parallel,
  :func:`embedlens.images.check_headers`): a file PIL cannot identify as an image (empty, not an
  image, missing) is left out of the manifest and listed in ``skipped`` with the reason. A file with
  a valid header but damaged pixel data (a truncated JPEG) is in the manifest: the scan does not
  decode it, extraction does, and finds it then;
- pixels are read by :func:`embedlens.images.decode_file` (upright by EXIF orientation; see
  :func:`embedlens.images.to_rgb` for the colour modes).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from embedlens.datasets.base import DatasetScan, ImageDataset
from embedlens.images import batch_decodable_jpeg, check_headers, decode_file
from embedlens.manifest import MANIFEST_COLUMNS, SKIPPED_COLUMNS


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class FolderDataset(ImageDataset):
    """A directory tree of images; see the module docstring for the layout and the rules.

    Keys: ``root`` (required), ``extensions`` (file endings, case-insensitive), ``splits`` (sub-folders
    of root, one per split; without it the whole root is the split ``train``), plus the common
    ``classes`` and ``max_per_class``.

    The scan's header check runs in ``scan_workers`` processes, ``scan_chunk_size`` files per task
    (attributes of :class:`~embedlens.datasets.base.ImageDataset`).
    """

    kind = "folder"
    default_splits = ("train",)

    def __init__(self, spec: dict):
        super().__init__(spec)
        if "root" not in spec or spec["root"] in (None, ""):
            raise ValueError(f"dataset {self.name!r}: root: a folder kind needs root, the folder that "
                             f"holds the images (one sub-folder per class)")
        self.root = Path(os.path.expanduser(str(spec["root"]))).absolute()
        extensions = self.spec["extensions"]
        bad = [e for e in extensions if not isinstance(e, str) or not e.startswith(".") or len(e) < 2]
        if bad:
            raise ValueError(f"dataset {self.name!r}: extensions: {bad} are not file endings; "
                             f"write them like \".png\"")
        self.extensions = tuple(sorted({e.lower() for e in extensions}))
        repeated = sorted({s for s in self.splits if self.splits.count(s) > 1})
        if repeated:
            raise ValueError(f"dataset {self.name!r}: splits: {repeated} listed more than once")
        self.split_dirs: dict[str, Path] = (
            {split: self.root / split for split in self.splits} if spec.get("splits")
            else {"train": self.root})

    # -- scanning ---------------------------------------------------------------------------------

    def _is_image(self, name: str) -> bool:
        return name.lower().endswith(self.extensions) and not _is_hidden(name)

    def _check_root(self) -> None:
        layout = ("one sub-folder per split named " + ", ".join(self.splits) +
                  ", each holding one sub-folder per class" if self.spec.get("splits")
                  else "image files, one sub-folder per class (images at the top level are unlabelled)")
        if not self.root.exists():
            raise FileNotFoundError(f"dataset {self.name!r}: root {self.root} does not exist; "
                                    f"expected a folder with {layout}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"dataset {self.name!r}: root {self.root} is a file, not a folder; "
                                     f"expected a folder with {layout}")
        for split, folder in self.split_dirs.items():
            if not folder.is_dir():
                present = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not _is_hidden(p.name))
                raise FileNotFoundError(
                    f"dataset {self.name!r}: split {split!r} has no folder {folder} (splits name "
                    f"sub-folders of root); the sub-folders of root are: {present or 'none'}")

    def _list_split(self, folder: Path) -> list[tuple[str, ...]]:
        """Image files under ``folder`` as path components relative to it, sorted."""
        found: list[tuple[str, ...]] = []
        seen: set[str] = set()
        for current, dirs, files in os.walk(folder, followlinks=True):
            real = os.path.realpath(current)
            if real in seen:  # a symlink loop, or the same folder linked twice
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
            relative = Path(current).relative_to(folder).parts
            found.extend(relative + (name,) for name in files if self._is_image(name))
        found.sort()
        return found

    def _no_images_error(self, split: str, folder: Path) -> ValueError:
        endings = Counter(Path(name).suffix.lower() or "(none)"
                          for _, _, files in os.walk(folder) for name in files if not _is_hidden(name))
        seen = ", ".join(f"{ending} ({count})" for ending, count in endings.most_common(8))
        return ValueError(f"dataset {self.name!r}: split {split!r}: no image files under {folder} with "
                          f"extensions {list(self.extensions)}; file endings found there: "
                          f"{seen or 'none (the folder is empty)'}. Set extensions to include them")

    def _scan(self) -> DatasetScan:
        self._check_root()
        listings = {}
        for split, folder in self.split_dirs.items():
            listings[split] = self._list_split(folder)
            if not listings[split]:
                raise self._no_images_error(split, folder)
        class_names = sorted({parts[0] for files in listings.values() for parts in files if len(parts) > 1})
        labels = {name: label for label, name in enumerate(class_names)}

        rows, paths = [], []
        for split, files in listings.items():
            prefix = () if not self.spec.get("splits") else (split,)
            for index, parts in enumerate(files):
                class_name = parts[0] if len(parts) > 1 else ""
                rows.append((index, split, labels.get(class_name, -1), class_name,
                             PurePosixPath(*prefix, *parts).as_posix()))
                paths.append(str(self.split_dirs[split].joinpath(*parts)))
        reasons = check_headers(paths, self.scan_workers, self.scan_chunk_size)

        good = [row for row, reason in zip(rows, reasons) if reason is None]
        bad = [(row[1], row[4], reason) for row, reason in zip(rows, reasons) if reason is not None]
        manifest = pd.DataFrame(good, columns=MANIFEST_COLUMNS).astype(
            {"index_in_split": "int64", "label": "int64", "split": "object", "class_name": "object",
             "source": "object"})
        skipped = pd.DataFrame(bad, columns=SKIPPED_COLUMNS).astype("object")
        return DatasetScan(manifest, class_names, skipped)

    # -- reading ----------------------------------------------------------------------------------

    def source_file(self, split: str, source: str) -> Path:
        """The absolute path of the file that ``source`` (relative to root, POSIX) names."""
        return self.root.joinpath(*PurePosixPath(source).parts)

    def read_image(self, split: str, source: str) -> np.ndarray:
        return decode_file(self.source_file(split, source))

    def read_encoded(self, split: str, source: str) -> bytes | None:
        return batch_decodable_jpeg(self.source_file(split, source))
