"""Exact cosine nearest neighbours with bounded memory, on CUDA or the CPU.

The one k-NN module of embedlens: clustering (TEMI's neighbour pairs), novelty (k-NN distances) and
the dataset audit (near-duplicates) all take their neighbours from :func:`cosine_topk`.

The search is exhaustive (exact, not approximate). Queries and reference are cut into blocks of
``block_size`` rows; every query block is multiplied with every reference block on the device and a
running top-k per query is merged with each block's top-k. Memory is therefore linear in the number
of rows: the results (n x k), one block x block tile of similarities and two blocks of rows, never the
n x n matrix. Rows are converted to float32 and L2-normalised block by block on the device, so the
input is never copied whole (a float16 store stays float16 in memory; an h5py dataset is read block by
block).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from embedlens.devices import resolve_device


class Neighbours(NamedTuple):
    """The k nearest neighbours of each query row, most similar first.

    ``indices``: int64 (n_queries, k), row numbers in the reference (in the queries themselves when
    searching within one set); ``similarities``: float32 (n_queries, k), their cosine similarities.
    """

    indices: np.ndarray
    similarities: np.ndarray


def cosine_topk(queries: Any, reference: Any = None, k: int = 10, *, block_size: int = 4096,
                device: str | torch.device = "auto") -> Neighbours:
    """The ``k`` reference rows most cosine-similar to each query row, exactly.

    ``queries``: (n, d) array-like of real numbers (numpy arrays of any float dtype, memmaps, h5py
    datasets and torch tensors are read block by block; anything else goes through ``np.asarray``).
    ``reference``: (m, d) array-like to search in, or ``None`` to search within ``queries``: then a
    row never returns itself, while exact duplicates of it at other positions are returned like any
    other row. Pass the same array as ``reference`` to let each row find itself.
    ``block_size``: rows per block; the working set is about ``block_size**2 * 4`` bytes of
    similarities plus two blocks of rows in float32 (64 MB of similarities at 4096).
    ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or a ``torch.device``.

    Returns :class:`Neighbours`, sorted by similarity from high to low in each row. Cosine similarity
    is the dot product of the L2-normalised rows, computed in float32; a zero row (norm below
    float32's smallest normal number, 1.2e-38) has similarity 0 to every row. Equal similarities are
    ranked by lower reference index first, also where they compete for the k-th place. Duplicate rows
    can still differ in the last bit of their similarity (float32 sums taken in another order, which
    may depend on ``block_size`` and the device), and that difference then decides their order.

    On CUDA each query block copies the reference blocks from host memory again (unless they are
    CUDA tensors already); a larger ``block_size`` means fewer such passes.

    Raises ``ValueError`` for ``k`` larger than the number of candidate rows, for mismatched
    dimensions and for NaN or infinite values.
    """
    queries = _two_dimensional(queries, "queries")
    within_set = reference is None
    reference = queries if within_set else _two_dimensional(reference, "reference")
    n_queries, dim = queries.shape
    n_reference = reference.shape[0]
    if reference.shape[1] != dim:
        raise ValueError(f"queries have {dim} dimensions but the reference has {reference.shape[1]}; "
                         "both must come from the same embedding")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer; got {block_size!r}")
    candidates = n_reference - 1 if within_set else n_reference
    if k > candidates:
        where = (f"{n_reference} rows less the row itself" if within_set
                 else f"the reference has {n_reference} rows")
        raise ValueError(f"k={k} but only {candidates} neighbours are available ({where}); "
                         f"ask for k <= {candidates}")
    device = _compute_device(device)
    reference_name = "queries" if within_set else "reference"

    indices = np.empty((n_queries, k), dtype=np.int64)
    similarities = np.empty((n_queries, k), dtype=np.float32)
    with torch.inference_mode():
        # One buffer for every tile: a fresh block x block allocation per tile would keep two tiles
        # alive at once (the old one until the new one is assigned) and fault in new pages each time.
        tile_buffer = torch.empty(min(block_size, n_queries) * min(block_size, n_reference), device=device)
        for q_start in range(0, n_queries, block_size):
            q_stop = min(q_start + block_size, n_queries)
            first_pass = q_start == 0
            query_block = _normalised_block(queries, q_start, q_stop, device, "queries")
            best_similarities = torch.empty((q_stop - q_start, 0), device=device)
            best_indices = torch.empty((q_stop - q_start, 0), dtype=torch.int64, device=device)
            for r_start in range(0, n_reference, block_size):
                r_stop = min(r_start + block_size, n_reference)
                # Every reference row passes through the first query block, so checking values
                # there checks them all once.
                reference_block = (query_block if within_set and r_start == q_start else
                                   _normalised_block(reference, r_start, r_stop, device, reference_name,
                                                     check_finite=first_pass))
                tile = tile_buffer[:len(query_block) * len(reference_block)].view(len(query_block), -1)
                torch.matmul(query_block, reference_block.T, out=tile)
                if within_set:
                    _exclude_self(tile, q_start, r_start)
                tile_similarities, tile_positions = _top_k_lowest_position_first(tile, min(k, r_stop - r_start))
                # Running results hold lower indices than this block, so appending keeps, for equal
                # similarities, position order equal to index order.
                merged_similarities = torch.cat([best_similarities, tile_similarities], dim=1)
                merged_indices = torch.cat([best_indices, tile_positions + r_start], dim=1)
                best_similarities, order = _top_k_lowest_position_first(
                    merged_similarities, min(k, merged_similarities.shape[1]))
                best_indices = merged_indices.gather(1, order)
            indices[q_start:q_stop] = best_indices.cpu().numpy()
            similarities[q_start:q_stop] = best_similarities.cpu().numpy()
    return Neighbours(indices, similarities)


def _two_dimensional(rows: Any, name: str) -> Any:
    """``rows`` itself when it can be sliced block by block (it has a shape and a dtype), else as a
    numpy array; checked to be a 2-D table of real numbers."""
    if not (hasattr(rows, "shape") and hasattr(rows, "dtype")):
        rows = np.asarray(rows)
    if len(rows.shape) != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x dimensions); got shape {tuple(rows.shape)}")
    if isinstance(rows.dtype, np.dtype) and rows.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers; got dtype {rows.dtype}")
    return rows


def _compute_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("cosine_topk: device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return resolve_device(device, "cosine_topk device")


def _normalised_block(rows: Any, start: int, stop: int, device: torch.device, name: str,
                      check_finite: bool = True) -> torch.Tensor:
    """Rows ``start:stop`` as float32 on ``device``, each scaled to unit length (zero rows stay zero);
    non-finite values raise when ``check_finite``."""
    block = rows[start:stop]
    if isinstance(block, np.ndarray):
        block = np.ascontiguousarray(block)  # torch refuses negative strides
    block = torch.as_tensor(block).to(device=device, dtype=torch.float32)
    if check_finite and not torch.isfinite(block).all():
        bad = start + int((~torch.isfinite(block)).any(dim=1).nonzero()[0, 0])
        raise ValueError(f"{name} row {bad} holds NaN or infinite values; cosine similarity needs "
                         "finite features")
    norms = torch.linalg.vector_norm(block, dim=1, keepdim=True)
    # Below float32's smallest normal number the reciprocal would overflow; such rows count as zero.
    inverse_norms = torch.where(norms >= torch.finfo(torch.float32).tiny, norms.reciprocal(), 0.0)
    return block * inverse_norms


def _exclude_self(tile: torch.Tensor, q_start: int, r_start: int) -> None:
    """Set each row's similarity to itself to -inf in a tile of a within-set search."""
    first = max(q_start, r_start)
    last = min(q_start + tile.shape[0], r_start + tile.shape[1])
    if first < last:
        rows = torch.arange(first, last, device=tile.device)
        tile[rows - q_start, rows - r_start] = -torch.inf


def _top_k_lowest_position_first(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest scores of each row, from high to low, and their column positions; equal
    scores are ranked by lower position first, also where they compete for the k-th place."""
    values, positions = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
    if values.shape[1] > k:
        # topk breaks ties arbitrarily. Where the (k+1)-th score equals the k-th, the k-th place is
        # contested and only a stable sort of the whole row picks the lowest positions; such rows are
        # rare (duplicates, zero rows).
        contested = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
        if contested.numel():
            row_values, row_positions = torch.sort(scores[contested], dim=1, descending=True, stable=True)
            values[contested], positions[contested] = row_values[:, :k + 1], row_positions[:, :k + 1]
        values, positions = values[:, :k], positions[:, :k]
    positions, order = positions.sort(dim=1)
    values, order = values.gather(1, order).sort(dim=1, descending=True, stable=True)
    return values, positions.gather(1, order)
