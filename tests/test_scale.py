"""The streamed, block-by-block helpers that let the stages run at ImageNet size: each gives what an
explicit float64 computation over the whole array gives (blocks made small so that several are used),
and scattered store rows come back in the asked order."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import embedlens.geometry as geometry
from embedlens.cluster.pseudo import representatives
from embedlens.geometry import Standardizer, class_centroids, column_statistics, l2_normalize, row_norms
from embedlens.store import FeatureStore, SplitFeatures, read_rows, write_store


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(geometry, "BLOCK_ROWS", 7)


def rows(count: int = 50, dim: int = 6, seed: int = 0) -> np.ndarray:
    features = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    features[3] = 0.0  # an all-zero row stays zero
    return features


def test_l2_normalize_and_norms_in_float32_blocks(small_blocks):
    features = rows()
    reference = features.astype(np.float64)
    norms = np.sqrt((reference ** 2).sum(axis=1))
    unit = l2_normalize(features)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, reference / np.where(norms > 0, norms, 1)[:, None], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(row_norms(features), norms, rtol=1e-6)
    assert not unit[3].any()


def test_centroids_in_blocks_are_the_class_means(small_blocks):
    features = rows(count=60)
    labels = np.random.default_rng(1).integers(-1, 4, size=60)  # -1: no class, never counted
    reference = features.astype(np.float64)
    norms = np.sqrt((reference ** 2).sum(axis=1, keepdims=True))
    unit = reference / np.where(norms > 0, norms, 1)
    for normalized, values in ((False, reference), (True, unit)):
        centroids = class_centroids(features, labels, normalized=normalized)
        assert centroids.labels.tolist() == [0, 1, 2, 3]
        expected = [values[labels == label].mean(axis=0) for label in range(4)]
        np.testing.assert_allclose(centroids.vectors, expected, rtol=1e-5, atol=1e-6)
        assert centroids.counts.tolist() == [int((labels == label).sum()) for label in range(4)]
    only = class_centroids(features, labels, classes=[2])
    np.testing.assert_allclose(only.vectors, [reference[labels == 2].mean(axis=0)], rtol=1e-5)


def test_column_statistics_in_blocks(small_blocks):
    features = rows() * 3 + 5
    features[:, 2] = 1.5  # a constant dimension: deviation 1
    mean, std = column_statistics(features)
    expected_std = features.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(mean, features.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, np.where(expected_std > 0, expected_std, 1.0), rtol=1e-5)
    standardizer = Standardizer.fit(features)  # the distillation's: the same block-wise statistics
    np.testing.assert_array_equal(standardizer.mean, mean)
    np.testing.assert_array_equal(standardizer.std, std)


def test_representatives_in_blocks_are_the_members_nearest_their_centre(small_blocks):
    features = rows(count=40)
    cluster = np.random.default_rng(2).integers(0, 3, size=40)
    unit = features.astype(np.float64) / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-30)
    chosen = representatives(features, cluster, k=5)
    for label in range(3):
        members = np.flatnonzero(cluster == label)
        centre = unit[members].mean(axis=0)
        similarity = unit[members] @ centre / np.linalg.norm(centre)
        np.testing.assert_array_equal(chosen[label], members[np.argsort(-similarity, kind="stable")[:5]])


def test_scattered_rows_are_read_through_blocks_in_the_asked_order(tmp_path):
    features = rows(count=103, dim=4)
    with h5py.File(tmp_path / "rows.h5", "w") as handle:
        handle.create_dataset("features", data=features, chunks=(10, 4))
    wanted = np.array([102, 0, 57, 57, 3, 99, 12, 0, 58])
    with h5py.File(tmp_path / "rows.h5", "r") as handle:
        for block_rows in (1, 10, 64, 1000):
            np.testing.assert_array_equal(read_rows(handle["features"], wanted, block_rows), features[wanted])
        assert read_rows(handle["features"], np.array([], dtype=np.int64)).shape == (0, 4)
    path = tmp_path / "store.h5"
    write_store(path, {"train": SplitFeatures(features, np.zeros(103, np.int64), np.arange(103))}, {"dataset": "toy"})
    np.testing.assert_array_equal(FeatureStore(path).features("train", wanted), features[wanted])
