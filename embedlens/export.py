"""Export a class subset of a dataset as a lossless PNG tree that torchvision's ImageFolder loads.

Layout of the subset root (the reference overlap notebook's names)::

    <root>/
      train/<PREFIX>_<class>/<PREFIX>_train_orig-idx-<i>_label-<label>.png
      test/<PREFIX>_<class>/<PREFIX>_test_orig-idx-<i>_label-<label>.png
      metadata_train.csv, metadata_test.csv   one per exported split
      label_map.json                          class folder -> subset label
      skipped.csv                             images that could not be written (split, source, reason)

- ``PREFIX`` is ``CIFAR100`` for the cifar100 kind (as the notebook named it) and the dataset's
  configured name for every other kind (e.g. ``imagenet100``); it also fills the metadata's
  ``original_dataset`` column. See :func:`dataset_prefix`.
- ``<class>`` is the class name made filesystem-safe: every run of characters other than letters,
  digits, ``_``, ``.`` and ``-`` (spaces, slashes, commas, ...) becomes one ``_``; if two classes end
  up with the same folder name, each gets ``_<label>`` appended. See :func:`safe_name`.
- ``<i>`` is the image's ``index_in_split`` and ``<label>`` its label in the original dataset.
- Every split folder holds a folder for every class of the subset, also when a class has no image in
  that split (possible after refinement), so ImageFolder sees the same sorted class list everywhere
  and its labels equal ``label_map.json`` (load such a split with ``allow_empty=True``).
- Metadata columns, in order: new_class_name, original_dataset, original_class_name,
  original_label_idx, original_index_in_split, split, saved_path (relative to the root, with ``/``),
  then ``original_source_path`` (the absolute path of the source image) for file-backed kinds (folder,
  imagenet), and ``partner_similarity`` when the rows carry it (per-sample refinement).
- Pixels are lossless: array-backed images (CIFAR-100) are saved with PIL's PNG encoder; for
  file-backed kinds a PNG source file is copied byte for byte and any other format (JPEG, WebP, ...)
  is decoded to RGB by the dataset and saved as PNG, so the PNG holds exactly the decoded pixels.

The tree is built in a temporary folder beside ``root`` and renamed onto it at the end: a killed
export leaves no half-written subset.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from embedlens.atomic import atomic_directory
from embedlens.datasets.base import ImageDataset
from embedlens.manifest import SKIPPED_COLUMNS

METADATA_COLUMNS = ["new_class_name", "original_dataset", "original_class_name", "original_label_idx",
                    "original_index_in_split", "split", "saved_path"]
SOURCE_PATH_COLUMN = "original_source_path"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KIND_PREFIXES = {"cifar100": "CIFAR100"}


def dataset_prefix(kind: str, name: str) -> str:
    """The prefix of folder and file names: ``CIFAR100`` for the cifar100 kind, else the dataset's
    name (already filesystem-safe by the config schema; made safe here anyway)."""
    return KIND_PREFIXES.get(kind) or safe_name(name)


def safe_name(text: str) -> str:
    """``text`` as one safe path component: runs of characters other than letters, digits, ``_``,
    ``.`` and ``-`` become ``_``; leading dots and outer ``_`` go; never empty (``_``)."""
    name = re.sub(r"[^\w.-]+", "_", str(text).strip()).lstrip(".").strip("_")
    return name or "_"


def class_folders(classes: Sequence[tuple[int, str]], prefix: str) -> dict[int, str]:
    """label -> folder name ``<prefix>_<safe class name>``; names that would collide get ``_<label>``."""
    base = {int(label): f"{prefix}_{safe_name(name)}" for label, name in classes}
    counts = pd.Series(list(base.values()), dtype="object").value_counts()
    return {label: (f"{folder}_{label}" if counts[folder] > 1 else folder) for label, folder in base.items()}


def image_file_name(prefix: str, split: str, index_in_split: int, label: int) -> str:
    """``<prefix>_<split>_orig-idx-<i>_label-<label>.png``."""
    return f"{prefix}_{safe_name(split)}_orig-idx-{int(index_in_split)}_label-{int(label)}.png"


def label_map(folders: Sequence[str]) -> dict[str, int]:
    """Folder name -> subset label, as torchvision's ImageFolder assigns them: sorted folder names
    (Python string order), numbered from 0."""
    return {folder: i for i, folder in enumerate(sorted(set(folders)))}


def write_png(dataset: ImageDataset, split: str, source: str, dest: Path) -> None:
    """Write one image losslessly to ``dest`` (a .png path): copy a PNG source file byte for byte,
    otherwise save the dataset's decoded RGB pixels as PNG."""
    path = dataset.source_file(split, source)
    if path is not None:
        with open(path, "rb") as handle:
            is_png = handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
        if is_png:
            shutil.copyfile(path, dest)
            return
    pixels = np.asarray(dataset.read_image(split, source))
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"read_image gave {pixels.dtype} {pixels.shape}; expected uint8 (H, W, 3)")
    Image.fromarray(np.ascontiguousarray(pixels)).save(dest, format="PNG")


def _run(tasks: list, work: Callable, workers: int) -> list:
    if workers <= 1 or len(tasks) <= 1:
        return [work(task) for task in tasks]
    # The first image of each split runs alone, so a dataset's lazy array loading happens once.
    first, seen = [], set()
    for i, task in enumerate(tasks):
        if task[0] not in seen:
            seen.add(task[0])
            first.append(i)
    results = [None] * len(tasks)
    for i in first:
        results[i] = work(tasks[i])
    rest = [i for i in range(len(tasks)) if i not in set(first)]
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL and file I/O release the GIL
        for i, result in zip(rest, pool.map(work, [tasks[i] for i in rest])):
            results[i] = result
    return results


def export_subset(dataset: ImageDataset, rows: pd.DataFrame, root: str | Path, *,
                  classes: Sequence[tuple[int, str]], prefix: str, splits: Sequence[str] | None = None,
                  similarity_column: str | None = None, workers: int = 1,
                  log: Callable[[str], None] | None = None) -> dict:
    """Write the PNG tree of ``rows`` (manifest rows: index_in_split, split, label, class_name,
    source; optionally ``similarity_column``) under ``root``, replacing it atomically.

    ``classes`` is the subset's classes as (label, name): each gets a folder in every split, also
    when it has no rows. ``splits`` are the splits to write (default: those in ``rows``, in order):
    each gets a folder and a ``metadata_<split>.csv``, empty ones with headers only. Images that
    cannot be read or written are left out and listed in ``skipped.csv``. ``workers`` > 1 writes
    images from that many threads. Returns a summary (counts per split and class) for the manifest
    file downstream rules depend on.
    """
    root = Path(root)
    splits = list(dict.fromkeys(rows["split"])) if splits is None else list(splits)
    folders = class_folders(classes, prefix)
    labels_of = label_map(list(folders.values()))
    names = {int(label): str(name) for label, name in classes}
    unknown = sorted(set(rows["label"].astype(int)) - set(folders))
    if unknown:
        raise ValueError(f"rows hold labels {unknown} that are not among the subset's classes")
    extra = sorted(set(rows["split"]) - set(splits))
    if extra:
        raise ValueError(f"rows hold splits {extra} that are not among the exported splits {splits}")
    say = log or (lambda message: None)

    with atomic_directory(root) as tmp:
        tasks, meta = [], []
        for split in splits:
            split_dir = safe_name(split)
            (tmp / split_dir).mkdir(parents=True, exist_ok=True)
            for folder in folders.values():
                (tmp / split_dir / folder).mkdir(parents=True, exist_ok=True)
        for row in rows.itertuples(index=False):
            folder = folders[int(row.label)]
            relative = f"{safe_name(row.split)}/{folder}/{image_file_name(prefix, row.split, row.index_in_split, row.label)}"
            tasks.append((row.split, str(row.source), tmp / relative))
            record = {
                "new_class_name": folder,
                "original_dataset": prefix,
                "original_class_name": names[int(row.label)],
                "original_label_idx": int(row.label),
                "original_index_in_split": int(row.index_in_split),
                "split": row.split,
                "saved_path": relative,
            }
            source_path = dataset.source_file(row.split, str(row.source))
            if source_path is not None:
                record[SOURCE_PATH_COLUMN] = str(Path(source_path).absolute())
            if similarity_column:
                record[similarity_column] = float(getattr(row, similarity_column))
            meta.append(record)

        def work(task):
            split, source, dest = task
            try:
                write_png(dataset, split, source, dest)
                return None
            except Exception as error:  # an unreadable image is skipped and listed, not fatal
                return f"{type(error).__name__}: {error}"

        say(f"writing {len(tasks)} images of {len(folders)} classes, {len(splits)} splits")
        errors = _run(tasks, work, max(1, int(workers)))
        skipped = [{"split": t[0], "source": t[1], "reason": e} for t, e in zip(tasks, errors) if e]
        ok = [m for m, e in zip(meta, errors) if not e]
        file_backed = any(SOURCE_PATH_COLUMN in record for record in meta)
        columns = (METADATA_COLUMNS + ([SOURCE_PATH_COLUMN] if file_backed else [])
                   + ([similarity_column] if similarity_column else []))
        table = pd.DataFrame(ok, columns=columns)
        summary_images, per_class = {}, {}
        for split in splits:
            part = table[table["split"] == split]
            part.to_csv(tmp / f"metadata_{safe_name(split)}.csv", index=False)
            summary_images[split] = int(len(part))
            counts = part["new_class_name"].value_counts()
            per_class[split] = {folder: int(counts.get(folder, 0)) for folder in sorted(folders.values())}
        pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).to_csv(tmp / "skipped.csv", index=False)
        (tmp / "label_map.json").write_text(json.dumps(labels_of, indent=2) + "\n")

    if skipped:
        say(f"skipped {len(skipped)} images that could not be written; see {root / 'skipped.csv'}")
    return {
        "root": str(root),
        "prefix": prefix,
        "splits": splits,
        "num_classes": len(folders),
        "classes": [{"label": label, "name": names[label], "folder": folders[label],
                     "subset_label": labels_of[folders[label]]} for label in sorted(folders)],
        "images": summary_images,
        "images_per_class": per_class,
        "skipped": len(skipped),
        "similarity_column": similarity_column,
    }
