"""The overlap stage's summary.json: what the report shows of the overlap stage."""

from __future__ import annotations

import numpy as np
import pytest

from embedlens.overlap import compute_overlap, overlap_summary
from embedlens.store import FeatureStore, SplitFeatures, write_store
from embedlens.summary import StageSummary

from conftest import overlap_settings

NAMES = ["cat", "lynx", "truck", "car"]
# cat and lynx point nearly the same way, truck and car too, the two groups apart
VECTORS = np.array([[1.0, 0.05, 0.0], [1.0, 0.0, 0.05], [0.0, 1.0, 0.3], [0.05, 1.0, 0.35]])


@pytest.fixture
def store(tmp_path) -> FeatureStore:
    labels = np.repeat(np.arange(4), 2)
    features = (VECTORS[labels] + 0.001 * np.arange(8)[:, None]).astype(np.float32)
    write_store(tmp_path / "features.h5", {"train": SplitFeatures(features, labels, np.arange(8))},
                {"dataset": "toy", "class_names": NAMES})
    return FeatureStore(tmp_path / "features.h5")


def test_threshold_summary_names_pairs_rule_and_most_similar_pair(store, tmp_path):
    result = compute_overlap(store, overlap_settings(threshold=0.99))
    path = tmp_path / "overlap" / "summary.json"
    overlap_summary(result, dataset="toy", backbone="bb").write(path)
    summary = StageSummary.read(path)
    assert (summary.stage, summary.title, summary.dataset, summary.backbone) == \
        ("overlap", "Overlapping classes", "toy", "bb")
    assert summary.headline["pairs"] == 2 and summary.headline["classes"] == 4
    assert summary.headline["threshold"] == "> 0.99"
    assert summary.headline["most similar pair"].startswith(f"{result.pairs.class_a[0]} - {result.pairs.class_b[0]}")
    assert [t.path for t in summary.tables] == ["pairs.csv", "similarity.csv"]
    assert [f.path for f in summary.figures] == ["similarity.png"]
    assert all(artifact.caption for artifact in [*summary.tables, *summary.figures])
    assert summary.notes[0].startswith("2 pairs over 4 classes")
    assert "depends on the backbone" in summary.notes[1]
    assert summary.settings["threshold"] == 0.99 and summary.settings["selection"] == "threshold"


def test_top_n_summary_names_n_and_an_empty_result_still_names_the_closest_pair(store):
    top = overlap_summary(compute_overlap(store, overlap_settings(selection="top_n", top_n=1)),
                          dataset="toy", backbone="bb")
    assert top.headline["top_n"] == 1 and "threshold" not in top.headline and len(top.notes) == 1
    empty = overlap_summary(compute_overlap(store, overlap_settings(threshold=1.0, inclusive=False)),
                            dataset="toy", backbone="bb")
    assert empty.headline["pairs"] == 0 and empty.headline["threshold"] == "> 1"
    assert " - " in empty.headline["most similar pair"] and "overlap set is empty" in empty.notes[0]
