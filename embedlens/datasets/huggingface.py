"""Image classification datasets in the Hugging Face ``datasets`` format: from the hub or a local copy.

``path`` is one of:

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
  ``datasets.load_from_disk``; a single ``Dataset`` is split ``train``);
- a ``.parquet`` file (split ``train``), or a folder of parquet files laid out as on the hub
  (``data/train-00000-of-00001.parquet``, ``test-*.parquet``, ...; split names come from the file
  names), read with ``datasets.load_dataset``;
- anything else is a hub id (``datasets.load_dataset(path, config_name)``; needs a network or the hub
  cache). ``data_files`` ({split: file or glob or list}) reads parquet files explicitly instead.

``image_column`` (default ``image``) holds the images, ``label_column`` (default ``label``; null for
unlabelled data) the classes: names from its ``ClassLabel`` feature when it has one, else the sorted
distinct values (strings) or ``str(i)`` (integers). ``source`` is the row number in the split.

Pixels go through :func:`embedlens.images.to_rgb` (upright by EXIF orientation, as ``datasets`` itself
decodes an ``Image`` feature). The scan checks every row in ``scan_workers`` processes: encoded images
(the ``{bytes, path}`` cells of an ``Image`` feature) are identified from their header, not decoded,
as :func:`embedlens.images.header_reason` does for files; rows that fail are listed in ``skipped``
with a reason worded as for files (:func:`embedlens.images.short_reason`). A row whose header is
valid but whose pixel data is damaged (a truncated JPEG) is in the manifest: extraction decodes it,
and finds it then.
"""

from __future__ import annotations

import io
import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from embedlens.datasets.base import DatasetScan, ImageDataset
from embedlens.errors import FetchError
from embedlens.hub import offline_unless_hub_reachable
from embedlens.images import check_in_chunks, short_reason, to_rgb
from embedlens.manifest import SKIPPED_COLUMNS

# Loaded datasets of this process, by spec: workers open a dataset once, not once per task.
_OPEN: dict = {}


def _is_saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _open_cell(cell: dict) -> Image.Image:
    """The encoded image of a {bytes, path} cell, opened: PIL has read its header, not its pixels."""
    if cell.get("bytes") is not None:
        return Image.open(io.BytesIO(cell["bytes"]))
    if cell.get("path"):
        return Image.open(cell["path"])
    raise ValueError("image cell has neither bytes nor path")


def _to_pil(value) -> Image.Image:
    """An image cell (PIL image, {bytes, path} dict, array) as a fully decoded PIL image."""
    if isinstance(value, Image.Image):
        value.load()
        return value
    if isinstance(value, dict):
        image = _open_cell(value)
        image.load()
        return image
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW arrays
    return Image.fromarray(np.squeeze(array).astype(np.uint8))


def _rgb(value) -> np.ndarray:
    return to_rgb(_to_pil(value))


class HuggingFace(ImageDataset):
    """A Hugging Face image classification dataset (see the module docstring). Picklable: the loaded
    dataset stays in a per-process cache, each worker process opens it once."""

    kind = "huggingface"
    default_splits = ()

    def __init__(self, spec: dict):
        super().__init__(spec)
        if not spec.get("path") and not spec.get("data_files"):
            raise ValueError(f"dataset {self.name!r}: kind huggingface needs path (a hub id or a local copy)")
        self.path = str(spec.get("path") or "")
        self.config_name = spec.get("config_name")
        self.image_column = self.spec["image_column"]
        self.label_column = self.spec["label_column"]
        self.data_files = spec.get("data_files")
        self.cache_dir = spec.get("cache_dir")
        self._key = json.dumps([self.path, self.config_name, self.data_files, self.cache_dir],
                               sort_keys=True, default=str)

    # --- loading -------------------------------------------------------------------------------

    def _load(self) -> dict:
        import datasets

        path = Path(self.path) if self.path else None
        cache = {"cache_dir": self.cache_dir} if self.cache_dir else {}
        if self.data_files:
            loaded = datasets.load_dataset("parquet", data_files=self.data_files, **cache)
        elif path is not None and path.is_dir() and _is_saved_to_disk(path):
            loaded = datasets.load_from_disk(str(path))
        elif path is not None and path.is_file():
            if path.suffix != ".parquet":
                raise ValueError(f"dataset {self.name!r}: {path} is a file but not .parquet")
            loaded = datasets.load_dataset("parquet", data_files={"train": str(path)}, **cache)
        elif path is not None and path.is_dir():
            loaded = datasets.load_dataset(str(path), name=self.config_name, **cache)
        else:
            if offline_unless_hub_reachable():
                datasets.config.HF_HUB_OFFLINE = True  # no retry loop: the cache, or a clear error at once
            try:
                loaded = datasets.load_dataset(self.path, name=self.config_name, **cache)
            except Exception as error:
                raise FetchError(
                    f"dataset {self.name!r}: could not load {self.path!r} from the Hugging Face hub "
                    f"({type(error).__name__}). Without a network, point path at a local copy: "
                    f"a folder written by save_to_disk (DatasetDict or Dataset), a folder of parquet "
                    f"files as on the hub (e.g. a copy of the repo's data/ folder), or a .parquet "
                    f"file; or list parquet files per split under data_files, e.g.\n"
                    f"    data_files: {{train: /data/imagenet/train-*.parquet}}") from error
        if isinstance(loaded, datasets.Dataset):
            loaded = {"train": loaded}
        return dict(loaded)

    def _datasets(self) -> dict:
        if self._key not in _OPEN:
            _OPEN[self._key] = self._load()
        return _OPEN[self._key]

    def _split(self, split: str):
        available = self._datasets()
        if split not in available:
            raise ValueError(f"dataset {self.name!r}: no split {split!r}; it has {', '.join(available)}")
        return available[split]

    # --- the kind ----------------------------------------------------------------------------------

    def _class_names(self, tables: dict) -> tuple[list[str], dict | None]:
        """Class names, and (for string labels) the map from value to label."""
        import datasets

        if self.label_column is None:
            return [], None
        first = next(iter(tables.values()))
        feature = first.features[self.label_column]
        if isinstance(feature, datasets.ClassLabel):
            return list(feature.names), None
        values = pd.concat([self._labels(ds) for ds in tables.values()], ignore_index=True)
        if pd.api.types.is_integer_dtype(values.dtype):
            return [str(i) for i in range(int(values.max()) + 1 if len(values) else 0)], None
        names = sorted(set(values.dropna().astype(str)))
        return names, {name: i for i, name in enumerate(names)}

    def _labels(self, ds) -> pd.Series:
        return ds.select_columns([self.label_column]).to_pandas()[self.label_column]

    def _scan(self) -> DatasetScan:
        available = self._datasets()
        if not self.splits:
            self.splits = list(available)
        tables = {split: self._split(split) for split in self.splits}
        for split, ds in tables.items():
            wanted = [c for c in (self.image_column, self.label_column) if c is not None]
            missing = [c for c in wanted if c not in ds.column_names]
            if missing:
                raise ValueError(f"dataset {self.name!r}, split {split}: no column(s) {missing}; columns: "
                                 f"{ds.column_names} (set image_column / label_column)")
        class_names, by_value = self._class_names(tables)
        frames, skipped = [], []
        for split, ds in tables.items():
            rows = len(ds)
            reasons = check_in_chunks(partial(_check_rows, self, split), range(rows), self.scan_workers,
                                      self.scan_chunk_size, what=f"rows of split {split!r}",
                                      describe=lambda row: f"row {row}",
                                      remedy="filter the offending row out of the dataset and scan again")
            if self.label_column is None:
                labels = np.full(rows, -1, dtype=np.int64)
            else:
                values = self._labels(ds)
                labels = (values.astype(str).map(by_value) if by_value is not None else values)
                labels = labels.fillna(-1).to_numpy(dtype=np.int64)
            ok = np.array([r is None for r in reasons], dtype=bool)
            index = np.arange(rows)
            skipped += [(split, str(i), r) for i, r in enumerate(reasons) if r is not None]
            frames.append(pd.DataFrame({
                "index_in_split": index[ok],
                "split": split,
                "label": labels[ok],
                "class_name": [class_names[x] if x >= 0 else "" for x in labels[ok]],
                "source": [str(i) for i in index[ok]],
            }))
        return DatasetScan(pd.concat(frames, ignore_index=True), class_names,
                           pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))

    def _cells(self, split: str, start: int, stop: int) -> list:
        """The image cells of rows [start, stop) without decoding them ({bytes, path} for Image features)."""
        import datasets

        views = _OPEN.setdefault((self._key, "views"), {})
        if split not in views:
            ds = self._split(split).select_columns([self.image_column])
            raw = isinstance(ds.features[self.image_column], datasets.Image)
            views[split] = (ds.with_format("arrow") if raw else ds, raw)
        view, raw = views[split]
        if raw:
            return view[start:stop].column(self.image_column).to_pylist()
        return view[start:stop][self.image_column]

    def read_image(self, split: str, source: str) -> np.ndarray:
        row = int(source)
        return _rgb(self._cells(split, row, row + 1)[0])


def _check_rows(dataset: HuggingFace, split: str, rows: range) -> list[str | None]:
    """For consecutive ``rows`` of a split: None where the image can be read, else why not (short).

    An encoded image ({bytes, path} cell) is identified from its header, not decoded; other cells
    (arrays) hold pixels already and go through :func:`embedlens.images.to_rgb`."""
    try:
        cells = dataset._cells(split, rows.start, rows.stop)
    except Exception:  # read the rows one by one: the reason lands on the row that has it
        cells = [None] * len(rows)
    reasons: list[str | None] = []
    for row, cell in zip(rows, cells):
        try:
            if cell is None:
                cell = dataset._cells(split, row, row + 1)[0]
            if isinstance(cell, dict):
                _open_cell(cell).close()
            else:
                _rgb(cell)
            reasons.append(None)
        except Exception as error:  # anything PIL raises identifying or converting it means: skip this row
            path = cell.get("path") if isinstance(cell, dict) else None
            reasons.append(short_reason(error, path or None))
    return reasons


__all__ = ["HuggingFace"]
