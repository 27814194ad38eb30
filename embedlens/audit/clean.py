"""The clean query split: every image of the audited split, kept or removed, with the reasons.

``clean_test_index.csv`` has one row per image of the query split that the feature store holds:
``split, index_in_split, label, class_name, kept, reason`` (``reason`` empty for kept images, else
every reason joined by "; "). Downstream stages read the kept rows with :func:`clean_index`::

    from embedlens.audit import clean_index
    kept = clean_index("results/cifar100/lite0/audit/clean_test_index.csv", split="test")
    mask = np.isin(store.index("test"), kept)     # the clean rows of the store's test split
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedlens.audit.settings import AuditSettings

CLEAN_COLUMNS = ["split", "index_in_split", "label", "class_name", "kept", "reason"]


def _copy_reason(verdict: str, split: str, index: int, similarity: float) -> str:
    return f"{verdict} copy of {split} #{index} (cosine {similarity:.3f})"


def removed_label_issues(issues: pd.DataFrame, split: str, split_images: int, fraction: float) -> pd.DataFrame:
    """The rows of ``issues`` (most likely error first, as :func:`~embedlens.audit.labels.check_labels`
    ranks them) that leave the clean ``split``: its first ``floor(fraction * split_images)`` issues.
    A probe's flags are mostly hard images, not wrong labels (cleanlab with a 68%-accurate probe flags a
    quarter of CIFAR-100 test, about 6% of it has real errors), so removing every flag would leave a
    clean split made of the images the probe already gets right; the fraction bounds that bias."""
    return issues[issues["split"] == split].sort_values("rank").head(int(np.floor(fraction * split_images)))


def clean_table(query_rows: pd.DataFrame, split: str, pairs: pd.DataFrame, issues: pd.DataFrame,
                settings: AuditSettings) -> pd.DataFrame:
    """Every image of the query split (``query_rows``: ``index_in_split, label, class_name`` in store
    order), kept or removed (:data:`CLEAN_COLUMNS`). Removed: an image with a cross-split candidate
    whose verdict is in ``settings.remove``; of a within-split pair with such a verdict, the image with
    the higher ``index_in_split`` (the other one stays); the split's most likely label errors up to
    ``settings.label_issue_fraction`` of its images (:func:`removed_label_issues`; none by default)."""
    reasons: dict[int, list[str]] = {}
    removed = pairs[pairs["verdict"].isin(settings.remove)]
    for row in removed.itertuples(index=False):
        if row.search == "cross":
            reasons.setdefault(int(row.query_index), []).append(
                _copy_reason(row.verdict, row.reference_split, row.reference_index, row.similarity))
        else:
            first, later = sorted((int(row.query_index), int(row.reference_index)))
            reasons.setdefault(later, []).append(_copy_reason(row.verdict, split, first, row.similarity))
    for row in removed_label_issues(issues, split, len(query_rows), settings.label_issue_fraction).itertuples(index=False):
        reasons.setdefault(int(row.index_in_split), []).append(
            f"label issue: given {row.class_name}, suggested {row.suggested_class} "
            f"(p of the given label {row.label_quality:.3f})")
    index = query_rows["index_in_split"].to_numpy(dtype=np.int64)
    reason = ["; ".join(reasons.get(int(i), [])) for i in index]
    return pd.DataFrame({"split": split, "index_in_split": index, "label": query_rows["label"].to_numpy(),
                         "class_name": query_rows["class_name"].to_numpy(),
                         "kept": [not text for text in reason], "reason": reason}, columns=CLEAN_COLUMNS)


def read_clean_table(path: str | Path) -> pd.DataFrame:
    """``clean_test_index.csv`` as written by the audit stage; the error names the file and what it lacks."""
    table = pd.read_csv(path, keep_default_na=False, dtype={"split": str, "class_name": str, "reason": str})
    missing = [column for column in CLEAN_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: not a clean index of the audit stage (columns {', '.join(CLEAN_COLUMNS)}); "
                         f"missing {', '.join(missing)}")
    return table.astype({"index_in_split": np.int64, "kept": bool})


def clean_index(path: str | Path, split: str | None = None) -> np.ndarray:
    """The ``index_in_split`` values (the store's ``index``) of the images the audit kept in the clean
    split, ascending (int64). With ``split``, the file must describe that split: the error says which
    split it holds (the audit's ``query_split``) when it does not."""
    table = read_clean_table(path)
    held = sorted(set(table["split"]))
    if split is not None and held and held != [split]:
        raise ValueError(f"{path}: a clean index of split {', '.join(held)}, not of {split!r}; set "
                         f"audit.query_split to {split!r} to audit that split")
    return np.sort(table.loc[table["kept"], "index_in_split"].to_numpy(dtype=np.int64))
