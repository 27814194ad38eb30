"""The audit stage run by snakemake on a tiny folder dataset with planted copies: leaked and repeated
test images found and taken out of the clean split, the summary, the map colourings, and the
classifier's figures on the clean test split beside the full one."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image

from embedlens.audit import clean_index
from embedlens.summary import StageSummary

from conftest import save
from test_audit import picture
from test_workflow import TINY_BACKBONE, snakemake

pytestmark = pytest.mark.workflow

AUDIT = "results/pictures/tiny/audit"
CLASSES = ("ant", "bee", "cat")


def planted_tree(root):
    """train/<class>/ 8 pictures each, test/<class>/ 3 distinct pictures each; then in test/ an exact
    copy of train/ant/0 (same class), of train/bee/1 filed under cat (labels differ) and a second copy
    of test/cat/0."""
    for c, name in enumerate(CLASSES):
        for i in range(8):
            save(root / "train" / name / f"{i}.png", Image.fromarray(picture(100 * c + i)))
        for i in range(3):
            save(root / "test" / name / f"{i}.png", Image.fromarray(picture(1000 + 100 * c + i)))
    save(root / "test" / "ant" / "leak.png", Image.fromarray(picture(0)))
    save(root / "test" / "cat" / "leak.png", Image.fromarray(picture(101)))
    save(root / "test" / "cat" / "again.png", Image.fromarray(picture(1200)))


def test_the_audit_finds_planted_copies_and_the_classifier_reports_the_clean_split(tmp_path, check_artifacts):
    planted_tree(tmp_path / "pictures")
    config = {
        "datasets": [{"name": "pictures", "kind": "folder", "root": str(tmp_path / "pictures"),
                      "splits": ["train", "test"]}],
        "backbones": [TINY_BACKBONE],
        "extract": {"shards": 1, "batch_size": 16, "num_workers": 0},
        "overlap": {"export": False},
        "classify": {"classes": "all", "max_epochs": 3, "folds": 2, "pair_figures": 0},
        "audit": {"folds": 3, "pairs_shown": 6, "issues_shown": 6},
    }
    snakemake(tmp_path, f"{AUDIT}/summary.json", "results/pictures/tiny/classify/analysis.json", config=config)
    audit = tmp_path / AUDIT
    manifest = pd.read_csv(tmp_path / "results/pictures/manifest.csv")
    test = manifest[manifest["split"] == "test"].set_index("source")["index_in_split"]
    train = manifest[manifest["split"] == "train"].set_index("source")["index_in_split"]

    pairs = pd.read_csv(audit / "duplicates.csv")
    exact = pairs[pairs["verdict"] == "exact"]
    found = {(row.search, row.query_index, row.reference_index, row.labels_differ)
             for row in exact.itertuples(index=False)}
    assert found == {("cross", test["test/ant/leak.png"], train["train/ant/0.png"], False),
                     ("cross", test["test/cat/leak.png"], train["train/bee/1.png"], True),
                     ("within", test["test/cat/0.png"], test["test/cat/again.png"], False)}
    likely = pd.read_csv(audit / "likely_copies.csv")  # every test image ranked: the list holds up to 1,000
    assert len(likely) == 12 and likely["rank"].tolist() == list(range(1, 13))
    assert set(likely.head(2)["query_index"]) == {test["test/ant/leak.png"], test["test/cat/leak.png"]}
    clean = pd.read_csv(audit / "clean_test_index.csv", keep_default_na=False)
    assert len(clean) == 12
    reasons = clean.set_index("index_in_split")["reason"]
    assert reasons[test["test/ant/leak.png"]].startswith(f"exact copy of train #{train['train/ant/0.png']} (cosine 1.000)")
    assert reasons[test["test/cat/again.png"]].startswith(f"exact copy of test #{test['test/cat/0.png']}")
    assert not reasons[test["test/cat/0.png"]].startswith("exact")  # the first of a repeated pair stays
    kept = clean_index(audit / "clean_test_index.csv", split="test")
    assert set(kept) == set(clean.loc[clean["reason"] == "", "index_in_split"])
    assert not {test["test/ant/leak.png"], test["test/cat/leak.png"], test["test/cat/again.png"]} & set(kept)

    summary = StageSummary.read(audit / "summary.json")
    assert summary.stage == "audit" and (summary.dataset, summary.backbone) == ("pictures", "tiny")
    check_artifacts(audit, summary)
    head = summary.headline
    assert head["exact"] == 2 and head["duplicates"] >= 2 and head["within_duplicates"] >= 1
    assert head["copies_labels_differ"] >= 1 and head["removed"] == 12 - len(kept) and head["likely_copies"] == 12
    assert head["label_issues"] == len(pd.read_csv(audit / "label_issues.csv"))
    colours = pd.read_csv(audit / "map_columns.csv")
    assert len(colours) == len(manifest) and set(colours.columns) == {"split", "index_in_split", "audit copy",
                                                                       "audit label"}

    analysis = json.loads((tmp_path / "results/pictures/tiny/classify/analysis.json").read_text())
    assert analysis["headline"]["clean_test_images"] == len(kept)
    predictions = pd.read_csv(tmp_path / "results/pictures/tiny/classify/predictions.csv")
    on_clean = predictions[predictions["index_in_split"].isin(kept)]
    assert len(on_clean) == len(kept)
    assert analysis["headline"]["clean_accuracy"] == pytest.approx(on_clean["correct"].mean(), abs=1e-4)
    assert any(note.startswith("On the clean test split") for note in analysis["notes"])
