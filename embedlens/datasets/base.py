"""What every dataset kind provides: a scan into a manifest, and a reader for one image's pixels."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from embedlens.config import entry_defaults
from embedlens.manifest import MANIFEST_COLUMNS, empty_skipped


@dataclass
class DatasetScan:
    """The result of scanning a dataset: the manifest, the images that could not be read, the classes.

    ``class_names[label]`` is the name of integer label ``label`` for every label of the full dataset,
    also those that filters removed, so labels keep their original meaning. ``extras`` carries what a
    kind knows beyond the manifest, e.g. the synthetic kind's ``designed_overlapping_pairs`` (ground
    truth for the overlap stage); it is passed through the filters unchanged.
    """

    manifest: pd.DataFrame
    class_names: list[str]
    skipped: pd.DataFrame = field(default_factory=empty_skipped)
    extras: dict = field(default_factory=dict)

    def summary(self, dataset: ImageDataset) -> dict:
        """What ``dataset.json`` records: name, kind, class names, images per split, skipped count,
        plus the kind's extras (e.g. a synthetic dataset's designed look-alike pairs)."""
        counts = self.manifest["split"].value_counts()
        labelled = self.manifest[self.manifest["label"] >= 0]
        per_class = labelled.groupby(["split", "class_name"], sort=True).size()
        return {
            "name": dataset.name,
            "kind": dataset.kind,
            "class_names": list(self.class_names),
            "images": {split: int(counts.get(split, 0)) for split in dataset.splits},
            # what the workflow decides with before any job: which stages can run on which split
            "class_counts": {split: {str(name): int(count) for (s, name), count in per_class.items() if s == split}
                             for split in dataset.splits},
            "skipped": int(len(self.skipped)),
            **self.extras,
        }


class ImageDataset(ABC):
    """A dataset kind. Built from its config entry; must be picklable (decoding workers receive it).

    Subclasses implement :meth:`_scan` (every image of the requested splits) and :meth:`read_image`;
    the class filter (``classes``) and the per-class cap (``max_per_class``) are applied here, the same
    way for every kind.

    Kinds that check every image at scan time to leave out the unreadable ones (folder, imagenet,
    huggingface) read each image's header there, not its pixels (:func:`embedlens.images.header_reason`:
    an image is decoded once, by extraction), and spread that check over worker processes
    (:func:`embedlens.images.check_in_chunks`):

    - ``scan_workers``: how many processes a scan uses; None (the default) means all the cores this
      process may run on (:func:`embedlens.parallel.available_cores`), 1 checks in this process. The
      workflow sets it to the rule's ``threads``. It is an attribute, not a config key: it changes how
      fast a scan runs, never what it finds.
    - ``scan_chunk_size``: images per task; None (the default) picks 16..512 (about 8 tasks per worker).
    """

    kind: str = ""
    default_splits: tuple[str, ...] = ()
    scan_workers: int | None = None
    scan_chunk_size: int | None = None

    def __init__(self, spec: dict):
        # the schema's defaults for the kind fill what the entry leaves out, as validation would
        self.spec = {**entry_defaults("datasets", self.kind), **spec}
        self.name: str = spec["name"]
        self.splits: list[str] = list(spec.get("splits") or self.default_splits)

    @abstractmethod
    def _scan(self) -> DatasetScan:
        """Every readable image of ``self.splits``, labelled, in a stable order."""

    @abstractmethod
    def read_image(self, split: str, source: str) -> np.ndarray:
        """The image as an RGB uint8 array of shape (H, W, 3)."""

    def read_encoded(self, split: str, source: str) -> bytes | None:
        """The image's file bytes when a batch JPEG decoder on the model's device gives the pixels
        :meth:`read_image` would (:func:`embedlens.images.batch_decodable_jpeg`); None when
        :meth:`read_image` must decode it, always for kinds that do not read files."""
        return None

    def source_file(self, split: str, source: str) -> Path | None:
        """The file that holds the image, for kinds that read files; None for array-backed kinds."""
        return None

    def scan(self) -> DatasetScan:
        """Scan, then apply the config's class filter and per-class cap."""
        scan = self._scan()
        manifest = scan.manifest
        wanted = self.spec.get("classes")
        if wanted:
            missing = sorted(set(wanted) - set(scan.class_names))
            if missing:
                raise ValueError(
                    f"dataset {self.name!r}: classes {missing} are not in this dataset; "
                    f"it has {len(scan.class_names)} classes, e.g. {scan.class_names[:10]}")
            manifest = manifest[manifest["class_name"].isin(wanted)]
        cap = self.spec.get("max_per_class")
        if cap:
            manifest = (manifest.sort_values(["split", "label", "index_in_split"], kind="stable")
                        .groupby(["split", "label"], sort=False).head(cap))
        order = {split: i for i, split in enumerate(self.splits)}
        manifest = (manifest.assign(_split_order=manifest["split"].map(order))
                    .sort_values(["_split_order", "index_in_split"], kind="stable")
                    .drop(columns="_split_order").reset_index(drop=True))
        return DatasetScan(manifest[MANIFEST_COLUMNS], scan.class_names, scan.skipped, scan.extras)
