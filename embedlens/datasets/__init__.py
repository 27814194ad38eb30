"""Dataset kinds. :func:`open_dataset` turns a config entry into an :class:`ImageDataset`."""

from __future__ import annotations

from embedlens.datasets.base import DatasetScan, ImageDataset
from embedlens.datasets.cifar import Cifar100
from embedlens.datasets.folder import FolderDataset
from embedlens.datasets.huggingface import HuggingFace
from embedlens.datasets.imagenet import ImageNet
from embedlens.datasets.synthetic import SyntheticDataset

KINDS: dict[str, type[ImageDataset]] = {cls.kind: cls for cls in (Cifar100, ImageNet, HuggingFace,
                                                             FolderDataset, SyntheticDataset)}


def open_dataset(spec: dict) -> ImageDataset:
    """Build the dataset that a validated config entry describes."""
    try:
        cls = KINDS[spec["kind"]]
    except KeyError:
        raise ValueError(f"dataset {spec.get('name')!r}: unknown kind {spec.get('kind')!r}; "
                         f"known kinds: {', '.join(sorted(KINDS))}") from None
    return cls(spec)


__all__ = ["DatasetScan", "ImageDataset", "KINDS", "open_dataset"]
