"""The stage summary every stage writes and the report reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedlens.summary import Artifact, StageSummary


def test_a_summary_survives_a_round_trip_through_json(tmp_path):
    summary = StageSummary(
        stage="overlap", title="Overlapping classes", dataset="cifar100", backbone="dino_vits16",
        headline={"pairs": np.int64(70), "classes": 54, "threshold": np.float32(0.9)},
        tables=[Artifact("pairs.csv", "pairs above the threshold")],
        figures=[Artifact("similarity.png", "clustered heatmap")],
        notes=["0.9 is calibrated for DINO ViT-S/16"], settings={"threshold": 0.9})
    path = tmp_path / "overlap" / "summary.json"
    summary.write(path)
    assert json.loads(path.read_text())["headline"]["pairs"] == 70
    again = StageSummary.read(path)
    assert again.tables == [Artifact("pairs.csv", "pairs above the threshold")]
    assert again.figures[0].path == "similarity.png" and again.headline["classes"] == 54


def test_artifacts_outside_the_summary_folder_are_refused(tmp_path):
    summary = StageSummary(stage="overlap", title="t", dataset="d", tables=[Artifact("../pairs.csv", "")])
    with pytest.raises(ValueError, match=r"\.\./pairs\.csv"):
        summary.write(tmp_path / "summary.json")


def test_reading_a_file_that_is_no_summary_names_the_missing_keys(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"stage": "x"}))
    with pytest.raises(ValueError, match="missing key.*title, dataset"):
        StageSummary.read(path)
