"""CIFAR-100 through torchvision's loader, from a local copy or downloaded into ``root``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedlens.datasets.base import DatasetScan, ImageDataset
from embedlens.errors import FetchError

ARCHIVE_FOLDER = "cifar-100-python"
ARCHIVE_FILES = ("meta", "train", "test")


def archive_folder(root: str | Path) -> Path:
    """The ``cifar-100-python/`` folder that a config's ``root`` names: root itself when it is that
    folder, else the folder of that name inside root."""
    root = Path(root)
    return root if root.name == ARCHIVE_FOLDER else root / ARCHIVE_FOLDER


def download_cifar100(root: str | Path, keys: str) -> None:
    """Fetch CIFAR-100 into ``root`` (the folder that receives ``cifar-100-python/``) with torchvision.

    A failure is a :class:`FetchError` of one paragraph: what could not be fetched, and how ``keys``
    (the config entries that use this root, e.g. ``datasets[0]``) can point at a local copy instead.
    """
    from torchvision.datasets import CIFAR100

    try:
        CIFAR100(str(root), train=True, download=True)
    except Exception as error:  # torchvision raises URLError, HTTPError, RuntimeError, ...
        raise FetchError(
            f"could not download CIFAR-100 into {root} ({error}). Without a network, point root of "
            f"{keys} at a local copy: the folder that holds {ARCHIVE_FOLDER}/ with meta, train and test, "
            f"and set download: false, e.g.\n    root: ../shared/datasets\n    download: false") from error


class Cifar100(ImageDataset):
    """CIFAR-100 (fine labels). ``source`` is the image's index in the split's array.

    ``root`` is the folder that holds ``cifar-100-python/`` (or that folder itself). With
    ``download: true`` a missing copy is fetched there by torchvision; without a network the error
    says how to point ``root`` at a local copy instead.
    """

    kind = "cifar100"
    default_splits = ("train", "test")

    def __init__(self, spec: dict):
        super().__init__(spec)
        unknown = sorted(set(self.splits) - {"train", "test"})
        if unknown:
            raise ValueError(f"dataset {self.name!r}: CIFAR-100 has splits train and test, not {unknown}")
        self.root = archive_folder(self.spec["root"]).parent
        self.download = bool(self.spec["download"])
        self._arrays: dict[str, np.ndarray] = {}

    def _load(self, split: str):
        from torchvision.datasets import CIFAR100

        present = (self.root / ARCHIVE_FOLDER / split).is_file()
        if not present and not self.download:
            raise FileNotFoundError(
                f"dataset {self.name!r}: no CIFAR-100 at {self.root / ARCHIVE_FOLDER}; set root to the "
                f"folder that holds {ARCHIVE_FOLDER}/ (with meta, train, test) or set download: true")
        if not present:  # the workflow's download rule fetched it before; this is for use as a library
            download_cifar100(self.root, f"dataset {self.name!r}")
        return CIFAR100(str(self.root), train=split == "train", download=False)

    def _scan(self) -> DatasetScan:
        frames, class_names = [], []
        for split in self.splits:
            data = self._load(split)
            class_names = list(data.classes)
            labels = np.asarray(data.targets, dtype=np.int64)
            frames.append(pd.DataFrame({
                "index_in_split": np.arange(len(labels)),
                "split": split,
                "label": labels,
                "class_name": [class_names[i] for i in labels],
                "source": [str(i) for i in range(len(labels))],
            }))
            self._arrays[split] = data.data
        return DatasetScan(pd.concat(frames, ignore_index=True), class_names)

    def read_image(self, split: str, source: str) -> np.ndarray:
        if split not in self._arrays:
            self._arrays[split] = self._load(split).data
        return self._arrays[split][int(source)]

    def __getstate__(self):
        # Decoding workers reload the arrays themselves instead of receiving 150 MB through a pipe.
        return {**self.__dict__, "_arrays": {}}
