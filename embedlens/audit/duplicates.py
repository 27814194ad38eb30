"""Near-duplicates from the embeddings: the query split's nearest neighbours in the reference split
(train/test leakage) and within the query split, by cosine similarity, through the one exact k-NN
search (:func:`embedlens.knn.cosine_topk`); the candidate pairs, closest first, each with its pixel
verdict (:mod:`embedlens.audit.pixels`).

The query split's features are held in memory; the reference split's are read from the store block by
block as the search needs them, so the reference may be larger than memory (ImageNet's train split).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from embedlens.audit.likely import LIKELY_COLUMNS, likely_copies
from embedlens.audit.pixels import PixelChecker
from embedlens.audit.settings import AuditSettings
from embedlens.datasets import ImageDataset
from embedlens.knn import Neighbours, cosine_topk
from embedlens.store import FeatureStore

SEARCHES = ("cross", "within")
PAIR_COLUMNS = ["search", "query_split", "query_index", "reference_split", "reference_index", "query_label",
                "query_class", "reference_label", "reference_class", "similarity", "labels_differ", "verdict",
                "pixel_similarity"]
ROW_COLUMNS = ["index_in_split", "label", "class_name", "source"]


class AuditInputError(ValueError):
    """The store or settings cannot support the audit (a split missing, ...); the message says what
    there is and which setting to change."""


@dataclass
class SearchResult:
    """One search: its candidate pairs (positions ``query_row``, ``reference_row`` and ``similarity``,
    closest first), every query row's highest similarity (NaN without a search), how many query rows
    had all their neighbours pass the threshold (more copies may lie beyond them), its time, and every
    query row's neighbours (None without a search)."""

    candidates: pd.DataFrame
    nearest: np.ndarray
    saturated: int
    seconds: float
    neighbours: Neighbours | None = None


@dataclass
class DuplicateSearch:
    """Both searches: ``pairs`` (:data:`PAIR_COLUMNS`, closest first within each search, cross-split
    first), the :class:`SearchResult` of each search that ran, the likely-copies list
    (:data:`embedlens.audit.likely.LIKELY_COLUMNS`, of the cross-split search, or of the within search
    when the query split is the only one), and the images that could not be read for their pixel
    check (``(split, index_in_split)`` -> reason)."""

    pairs: pd.DataFrame
    searches: dict[str, SearchResult] = field(default_factory=dict)
    likely: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LIKELY_COLUMNS))
    unreadable: dict = field(default_factory=dict)


def _empty_candidates() -> pd.DataFrame:
    return pd.DataFrame({"query_row": pd.Series(dtype="int64"), "reference_row": pd.Series(dtype="int64"),
                         "similarity": pd.Series(dtype="float64")})


def select_candidates(neighbours: Neighbours, settings: AuditSettings, *, within: bool) -> tuple[pd.DataFrame, int]:
    """The candidate pairs among ``neighbours`` (each query row's nearest, most similar first): with
    ``selection: threshold`` every pair with similarity >= ``threshold``, with ``top_n`` the ``top_n``
    most similar pairs. A ``within`` search (one split against itself) lists each unordered pair once,
    as (lower row, higher row). Returns the pairs (``query_row, reference_row, similarity``), most
    similar first (ties: lower rows first), and how many query rows had every neighbour pass the threshold."""
    indices, similarities = neighbours
    count, k = indices.shape
    if not count or not k:
        return _empty_candidates(), 0
    rows = np.repeat(np.arange(count), k)
    frame = pd.DataFrame({"query_row": rows, "reference_row": indices.ravel(),
                          "similarity": similarities.ravel().astype(np.float64)})
    if within:
        low = np.minimum(frame["query_row"], frame["reference_row"])
        high = np.maximum(frame["query_row"], frame["reference_row"])
        frame = frame.assign(query_row=low, reference_row=high).drop_duplicates(["query_row", "reference_row"])
    frame = frame.sort_values(["similarity", "query_row", "reference_row"], ascending=[False, True, True],
                              kind="stable")
    saturated = 0
    if settings.selection == "threshold":
        frame = frame[frame["similarity"] >= settings.threshold]
        saturated = int((similarities[:, -1] >= settings.threshold).sum())
    else:
        frame = frame.head(settings.top_n)
    return frame.reset_index(drop=True), saturated


def search(queries: np.ndarray, reference, settings: AuditSettings, device: str | torch.device = "cpu"
           ) -> SearchResult:
    """Nearest neighbours of every row of ``queries`` in ``reference`` (an array or an open h5py
    dataset, read block by block), or within ``queries`` when ``reference`` is None (a row never finds
    itself), on ``device``, then :func:`select_candidates`. ``settings.neighbours`` is lowered to the
    rows there are."""
    within = reference is None
    available = len(queries) - 1 if within else len(reference)
    k = min(settings.neighbours, available)
    if not len(queries) or k < 1:
        return SearchResult(_empty_candidates(), np.full(len(queries), np.nan), 0, 0.0)
    started = time.perf_counter()
    neighbours = cosine_topk(queries, reference, k=k, device=device)
    seconds = time.perf_counter() - started
    candidates, saturated = select_candidates(neighbours, settings, within=within)
    return SearchResult(candidates, neighbours.similarities[:, 0].astype(np.float64), saturated, seconds, neighbours)


def split_rows(store: FeatureStore, manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The store's rows of ``split`` in store order with :data:`ROW_COLUMNS` from the manifest
    (``class_name`` empty for unlabelled images); the error names the splits the store has."""
    if split not in store.splits:
        raise AuditInputError(f"{store.path} has no split {split!r}; it has {', '.join(store.splits)}. Set "
                              "audit.query_split and audit.reference_split to two of these")
    rows = store.join_manifest(split, manifest)
    rows["class_name"] = rows["class_name"].fillna("").astype(str)
    return rows[ROW_COLUMNS]


def pairs_table(search_name: str, candidates: pd.DataFrame, query_split: str, query_rows: pd.DataFrame,
                reference_split: str, reference_rows: pd.DataFrame) -> pd.DataFrame:
    """The candidates of one search as rows of :data:`PAIR_COLUMNS` (verdicts still empty)."""
    query = query_rows.iloc[candidates["query_row"].to_numpy()].reset_index(drop=True)
    reference = reference_rows.iloc[candidates["reference_row"].to_numpy()].reset_index(drop=True)
    return pd.DataFrame({
        "search": search_name, "query_split": query_split, "query_index": query["index_in_split"].to_numpy(),
        "reference_split": reference_split, "reference_index": reference["index_in_split"].to_numpy(),
        "query_label": query["label"].to_numpy(), "query_class": query["class_name"].to_numpy(),
        "reference_label": reference["label"].to_numpy(), "reference_class": reference["class_name"].to_numpy(),
        "similarity": candidates["similarity"].to_numpy(),
        "labels_differ": query["label"].to_numpy() != reference["label"].to_numpy(),
        "verdict": "", "pixel_similarity": np.nan}, columns=PAIR_COLUMNS)


def add_verdicts(pairs: pd.DataFrame, checker: PixelChecker) -> pd.DataFrame:
    """``pairs`` with each pair's pixel verdict and similarity from ``checker`` (keys: ``(split,
    index_in_split)``)."""
    checked = [checker.check((qs, qi), (rs, ri)) for qs, qi, rs, ri in
               pairs[["query_split", "query_index", "reference_split", "reference_index"]].itertuples(index=False)]
    return pairs.assign(verdict=[v for v, _ in checked], pixel_similarity=[s for _, s in checked])


def find_duplicates(store: FeatureStore, manifest: pd.DataFrame, settings: AuditSettings,
                    read_image: Callable[[Hashable], np.ndarray], device: str | torch.device = "cpu"
                    ) -> DuplicateSearch:
    """Both searches on ``store`` (only the one within the query split when the reference is the same
    split), on ``device``, the pixel verdict of every candidate, and the likely-copies list
    (:func:`embedlens.audit.likely.likely_copies`). ``read_image((split,
    index_in_split))`` returns that image as RGB uint8; it is called once per image of a candidate."""
    query_rows = split_rows(store, manifest, settings.query_split)
    reference_rows = split_rows(store, manifest, settings.reference_split)
    queries = store.features(settings.query_split)
    searches, tables = {}, []
    if not settings.one_split:
        with store.open_features(settings.reference_split) as reference:
            searches["cross"] = search(queries, reference, settings, device)
        tables.append(pairs_table("cross", searches["cross"].candidates, settings.query_split, query_rows,
                                  settings.reference_split, reference_rows))
    if settings.within_query or settings.one_split:
        searches["within"] = search(queries, None, settings, device)
        tables.append(pairs_table("within", searches["within"].candidates, settings.query_split, query_rows,
                                  settings.query_split, query_rows))
    pairs = pd.concat(tables, ignore_index=True)
    checker = PixelChecker(read_image, settings.near_threshold)
    pairs = add_verdicts(pairs, checker)
    ranked, reference = ("within", query_rows) if settings.one_split else ("cross", reference_rows)
    likely = pd.DataFrame(columns=LIKELY_COLUMNS)
    if searches[ranked].neighbours is not None:
        likely = likely_copies(searches[ranked].neighbours, (settings.query_split, query_rows),
                               (settings.reference_split, reference), checker, settings.likely_copies,
                               settings.likely_copies_gap_weight, settings.likely_copies_pixel_weight)
    return DuplicateSearch(pairs, searches, likely, checker.unreadable)


def image_reader(dataset: ImageDataset, manifest: pd.DataFrame) -> Callable[[tuple[str, int]], np.ndarray]:
    """``read((split, index_in_split))``: that image's RGB pixels through the dataset's own reader (the
    audit opens images only to check and draw them)."""
    sources = {(split, int(index)): source for split, index, source in
               manifest[["split", "index_in_split", "source"]].itertuples(index=False)}

    def read(key: tuple[str, int]) -> np.ndarray:
        return dataset.read_image(key[0], sources[(key[0], int(key[1]))])

    return read
