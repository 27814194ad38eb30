"""Exact cosine top-k: blocked results against a brute-force numpy reference (the full cosine matrix)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from embedlens.knn import cosine_topk


def brute_force(queries: np.ndarray, reference: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by sorting the whole float64 cosine matrix; ``reference=None`` searches within ``queries``
    without self matches. Ties: lower index first (a stable sort)."""
    within_set = reference is None
    reference = queries if within_set else reference

    def normalised(rows):
        rows = np.asarray(rows, dtype=np.float64)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)

    similarities = normalised(queries) @ normalised(reference).T
    if within_set:
        np.fill_diagonal(similarities, -np.inf)
    order = np.argsort(-similarities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarities, order, axis=1)


def gaussian(rows: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_query_against_reference_matches_brute_force(block_size):
    queries, reference = gaussian(83, 24, seed=1), gaussian(61, 24, seed=2)
    result = cosine_topk(queries, reference, k=9, block_size=block_size, device="cpu")
    expected_indices, expected_similarities = brute_force(queries, reference, k=9)
    assert result.indices.dtype == np.int64 and result.similarities.dtype == np.float32
    assert result.indices.shape == result.similarities.shape == (83, 9)
    np.testing.assert_array_equal(result.indices, expected_indices)
    np.testing.assert_allclose(result.similarities, expected_similarities, atol=1e-5)


@pytest.mark.parametrize("block_size", [7, 50, 1000])
def test_within_one_set_matches_brute_force_without_self_matches(block_size):
    rows = gaussian(211, 16, seed=3)
    indices, similarities = cosine_topk(rows, k=12, block_size=block_size, device="cpu")
    expected_indices, expected_similarities = brute_force(rows, None, k=12)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)
    assert not (indices == np.arange(211)[:, None]).any()
    assert (np.diff(similarities, axis=1) <= 0).all()


def test_block_size_does_not_change_results():
    rows = gaussian(300, 32, seed=4)
    reference = cosine_topk(rows, k=20, block_size=4096, device="cpu")
    for block_size in (7, 31, 128, 299):
        result = cosine_topk(rows, k=20, block_size=block_size, device="cpu")
        np.testing.assert_array_equal(result.indices, reference.indices)
        np.testing.assert_allclose(result.similarities, reference.similarities, atol=1e-6)


@pytest.mark.parametrize("block_size", [2, 5, 1000])
def test_equal_similarities_rank_lower_indices_first(block_size):
    # One-hot rows: every similarity is exactly 1 (same axis) or 0, so ties are exact and most of the
    # k-th places are contested by several rows.
    axes = np.array([0, 1, 0, 2, 0, 1, 0, 3, 1, 0, 2, 0])
    rows = np.eye(4, dtype=np.float32)[axes] * np.arange(1, 13, dtype=np.float32)[:, None]
    indices, similarities = cosine_topk(rows, k=4, block_size=block_size, device="cpu")
    expected_indices, expected_similarities = brute_force(rows, None, k=4)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(similarities, expected_similarities.astype(np.float32))
    np.testing.assert_array_equal(indices[7], [0, 1, 2, 3])  # the only row on axis 3: all zeros, lowest first


def test_a_row_finds_its_duplicates_but_never_itself():
    rows = gaussian(40, 8, seed=5)
    rows[17] = rows[5]
    rows[33] = rows[5]
    indices, similarities = cosine_topk(rows, k=2, block_size=16, device="cpu")
    assert set(indices[5]) == {17, 33}
    assert set(indices[17]) == {5, 33}
    assert set(indices[33]) == {5, 17}
    np.testing.assert_allclose(similarities[[5, 17, 33]], 1.0, atol=1e-6)
    assert not (indices == np.arange(40)[:, None]).any()


def test_the_same_array_as_reference_lets_each_row_find_itself():
    rows = gaussian(30, 8, seed=6)
    indices, similarities = cosine_topk(rows, rows, k=1, device="cpu")
    np.testing.assert_array_equal(indices[:, 0], np.arange(30))
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-6)


def test_zero_rows_have_similarity_zero_to_everything():
    rows = gaussian(25, 6, seed=7)
    rows[3] = 0
    indices, similarities = cosine_topk(rows, k=24, block_size=8, device="cpu")
    assert np.isfinite(similarities).all()
    np.testing.assert_array_equal(similarities[3], 0.0)
    np.testing.assert_array_equal(indices[3], [i for i in range(25) if i != 3])  # all tied: by index
    others = np.arange(25) != 3
    np.testing.assert_array_equal(similarities[others][indices[others] == 3], 0.0)


def test_float16_and_float64_inputs_are_computed_in_float32():
    queries, reference = gaussian(90, 20, seed=8), gaussian(70, 20, seed=9)
    for dtype in (np.float16, np.float64):
        result = cosine_topk(queries.astype(dtype), reference.astype(dtype), k=5, block_size=32, device="cpu")
        expected_indices, expected_similarities = brute_force(queries.astype(dtype), reference.astype(dtype), k=5)
        assert result.similarities.dtype == np.float32
        np.testing.assert_array_equal(result.indices, expected_indices)
        np.testing.assert_allclose(result.similarities, expected_similarities, atol=1e-5)


def test_h5py_datasets_tensors_and_lists_are_accepted(tmp_path):
    rows = gaussian(50, 10, seed=10)
    with h5py.File(tmp_path / "features.h5", "w") as store:
        store["train/features"] = rows
    expected = cosine_topk(rows, k=3, device="cpu")
    with h5py.File(tmp_path / "features.h5") as store:
        from_store = cosine_topk(store["train/features"], k=3, block_size=16, device="cpu")
    from_list = cosine_topk(rows.tolist(), k=3, device="cpu")
    from_tensor = cosine_topk(torch.from_numpy(rows), k=3, block_size=16, device="cpu")
    for result in (from_store, from_list, from_tensor):
        np.testing.assert_array_equal(result.indices, expected.indices)
        np.testing.assert_allclose(result.similarities, expected.similarities, atol=1e-6)


def test_k_beyond_the_available_neighbours_is_named():
    rows = gaussian(5, 4, seed=11)
    assert cosine_topk(rows, k=4, device="cpu").indices.shape == (5, 4)
    assert cosine_topk(np.empty((0, 4)), rows, k=5, device="cpu").indices.shape == (0, 5)
    with pytest.raises(ValueError, match=r"k=5 but only 4 neighbours are available \(5 rows less the row itself\)"):
        cosine_topk(rows, k=5, device="cpu")
    with pytest.raises(ValueError, match="k=6 but only 5 neighbours are available .the reference has 5 rows"):
        cosine_topk(gaussian(3, 4, seed=12), rows, k=6, device="cpu")
    with pytest.raises(ValueError, match="k must be a positive integer; got 0"):
        cosine_topk(rows, k=0, device="cpu")


def test_bad_inputs_are_named():
    rows = gaussian(10, 4, seed=13)
    with pytest.raises(ValueError, match="queries have 4 dimensions but the reference has 3"):
        cosine_topk(rows, gaussian(10, 3, seed=14), k=2, device="cpu")
    with pytest.raises(ValueError, match=r"queries must be a 2-D array .* got shape \(10,\)"):
        cosine_topk(rows[:, 0], k=2, device="cpu")
    broken = rows.copy()
    broken[6, 2] = np.nan
    with pytest.raises(ValueError, match="reference row 6 holds NaN or infinite values"):
        cosine_topk(rows, broken, k=2, block_size=4, device="cpu")
    broken[6, 2] = np.inf
    with pytest.raises(ValueError, match="queries row 6 holds NaN or infinite values"):
        cosine_topk(broken, k=2, block_size=4, device="cpu")


def test_cuda_without_a_gpu_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device is available; use 'auto' or 'cpu'"):
        cosine_topk(gaussian(10, 4, seed=15), k=2, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_results():
    queries, reference = gaussian(1500, 64, seed=16), gaussian(1300, 64, seed=17)
    for args in ((queries,), (queries, reference)):
        on_cpu = cosine_topk(*args, k=10, block_size=500, device="cpu")
        on_cuda = cosine_topk(*args, k=10, block_size=500, device="cuda")
        np.testing.assert_array_equal(on_cuda.indices, on_cpu.indices)
        np.testing.assert_allclose(on_cuda.similarities, on_cpu.similarities, atol=1e-5)
