"""The dataset manifest: one row per image, the contract between datasets and every later stage.

Columns, in order:
- ``index_in_split``: the image's position in its split of the original dataset (stable across
  class filters, so it always leads back to the same source image);
- ``split``: train, test, val, ... as the dataset names them;
- ``label``: the integer class label of the original dataset (-1 when the image has no class);
- ``class_name``: the human-readable class ("" when none);
- ``source``: where the pixels come from: a file path, or an index into the dataset's arrays.

Images that could not be read are not in the manifest; they go to ``skipped.csv`` with
``split, source, reason``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedlens.atomic import atomic_path

MANIFEST_COLUMNS = ["index_in_split", "split", "label", "class_name", "source"]
SKIPPED_COLUMNS = ["split", "source", "reason"]


def empty_skipped() -> pd.DataFrame:
    """A skipped-images table with the right columns and no rows."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in SKIPPED_COLUMNS})


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a CSV atomically, without the pandas index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_manifest(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a manifest CSV written by :func:`write_table`, checking its columns. ``columns`` reads only
    those (``split`` as a categorical): a few bytes per image where a stage needs no text."""
    if columns is not None:
        unknown = sorted(set(columns) - set(MANIFEST_COLUMNS))
        if unknown:
            raise ValueError(f"manifest columns {unknown} do not exist; the columns are {MANIFEST_COLUMNS}")
        return pd.read_csv(path, usecols=columns, keep_default_na=False,
                           dtype={"split": "category", "class_name": str, "source": str})[columns]
    frame = pd.read_csv(path, dtype={"split": str, "class_name": str, "source": str},
                        keep_default_na=False)
    if list(frame.columns) != MANIFEST_COLUMNS:
        raise ValueError(f"{path}: manifest columns are {list(frame.columns)}; expected {MANIFEST_COLUMNS}")
    return frame


def manifest_values(path: str | Path, rows: np.ndarray, column: str, chunk_rows: int = 200_000) -> list[str]:
    """The ``column`` values of manifest rows ``rows`` (row numbers, in that order), read in chunks so
    the whole column never sits in memory."""
    rows = np.asarray(rows, dtype=np.int64)
    found: dict[int, str] = {}
    wanted = set(rows.tolist())
    reader = pd.read_csv(path, usecols=[column], dtype=str, keep_default_na=False, chunksize=chunk_rows)
    for number, chunk in enumerate(reader):
        start = number * chunk_rows
        for row in wanted.intersection(range(start, start + len(chunk))):
            found[row] = chunk[column].iat[row - start]
    return [found[row] for row in rows.tolist()]
