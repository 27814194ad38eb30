"""The overlap classifier's library: settings, the MLP's training (best weights, determinism, resume),
the report, confusion pairs, cleanlab overlap, the measures' agreement, bad input and pictures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from embedlens.classify.analysis import (analyse, classification_table, cleanlab_overlap, confusion_pairs,
                                         measure_agreement, outlier_rule, pair_measures, row_normalise)
from embedlens.classify.data import ClassSet, classifier_problem, crossval_problem, fit_and_test_rows
from embedlens.classify.pictures import TestPredictions, draw_pair, pictured_pairs
from embedlens.classify.settings import ClassifySettings
from embedlens.classify.training import (fit_mlp, hidden_sizes, out_of_fold_probabilities,
                                         predict_proba, train_val_split)
from embedlens.config import section_defaults
from embedlens.networks import build_mlp
from embedlens.plots import confusion_heatmap
from embedlens.roles import SplitRoles, with_roles
from embedlens.store import FeatureStore, SplitFeatures, write_store

from conftest import picture_problem

CPU = torch.device("cpu")
TRAIN_TEST = SplitRoles("train", "test")


def settings(**changes) -> ClassifySettings:
    return ClassifySettings.from_config({**with_roles("classify", section_defaults("classify"), TRAIN_TEST, 0.2),
                                         **changes})


def blobs(classes: int = 4, per_class: int = 40, dim: int = 12, spread: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    targets = np.repeat(np.arange(classes), per_class)
    return (centres[targets] + rng.normal(size=(len(targets), dim)) * spread).astype(np.float32), targets


def test_settings_come_from_the_schema_and_unknown_keys_are_named():
    defaults = settings()
    assert (defaults.dropout, defaults.learning_rate) == (0.4, 1e-4)
    assert (defaults.batch_size, defaults.max_epochs) == (256, 200)
    assert (defaults.val_fraction, defaults.seed) == (0.3, 42)
    assert (defaults.pairs_k, defaults.early_stopping_patience) == (2.0, 20)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epochs'\]"):
        ClassifySettings.from_config({**section_defaults("classify"), "epochs": 3})


def test_hidden_layers_scale_with_the_feature_dimension_as_in_the_notebook():
    assert hidden_sizes(384, settings().hidden_fractions) == [256, 128]
    assert hidden_sizes(1280, settings().hidden_fractions) == [853, 427]
    layers = [type(m).__name__ for m in build_mlp(384, [256, 128], 54, 0.4)]
    assert layers == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]


def _fit(features, targets, config, **kwargs):
    train, val = train_val_split(targets, config.val_fraction, config.seed)
    return fit_mlp(features[train], targets[train], features[val], targets[val], int(targets.max()) + 1, config,
                   CPU, **kwargs), (train, val)


def test_training_keeps_the_lowest_validation_loss_weights_and_is_deterministic_on_the_cpu():
    features, targets = blobs(spread=3.0)
    config = settings(max_epochs=60, learning_rate=0.01, early_stopping_patience=200, batch_size=32)
    result, (_, val) = _fit(features, targets, config)
    history = result.history
    assert len(history) == 60 and result.best_epoch == int(history.loc[history["val_loss"].idxmin(), "epoch"])
    assert result.best_epoch < 60  # overfitting: the last epoch is not the best, so which weights are kept matters
    probabilities = predict_proba(result.state_dict, features[val], hidden_sizes(12, config.hidden_fractions), 4,
                                  config.dropout, CPU)
    loss = torch.nn.functional.nll_loss(torch.log(torch.as_tensor(probabilities)), torch.as_tensor(targets[val]))
    assert float(loss) == pytest.approx(result.best_val_loss, rel=1e-4)
    again, _ = _fit(features, targets, config)
    assert all(torch.equal(result.state_dict[k], again.state_dict[k]) for k in result.state_dict)
    other, _ = _fit(features, targets, settings(**{**config.as_dict(), "seed": 7}))
    assert not all(torch.equal(result.state_dict[k], other.state_dict[k]) for k in result.state_dict)


def test_early_stopping_ends_training_after_patience_epochs_without_improvement():
    features, targets = blobs(spread=3.0)
    result, _ = _fit(features, targets, settings(max_epochs=500, learning_rate=0.01, early_stopping_patience=5))
    assert result.stopped_early and len(result.history) == result.best_epoch + 5


class Killed(Exception):
    pass


def test_a_killed_training_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    features, targets = blobs()
    config = settings(max_epochs=8, learning_rate=0.01, checkpoint_seconds=0, batch_size=16)
    whole, _ = _fit(features, targets, config)

    def kill_at_epoch_3(row):
        if row["epoch"] == 3:
            raise Killed

    checkpoint = tmp_path / "train.pt"
    with pytest.raises(Killed):
        _fit(features, targets, config, checkpoint=checkpoint, progress=kill_at_epoch_3)
    resumed, _ = _fit(features, targets, config, checkpoint=checkpoint)
    assert resumed.resumed_at_epoch == 3
    pd.testing.assert_frame_equal(resumed.history, whole.history)
    assert all(torch.equal(resumed.state_dict[k], whole.state_dict[k]) for k in whole.state_dict)
    # a checkpoint of other settings is not resumed
    fresh, _ = _fit(features, targets, settings(**{**config.as_dict(), "dropout": 0.1}), checkpoint=checkpoint)
    assert fresh.resumed_at_epoch == 0


def test_out_of_fold_probabilities_cover_every_row_once_from_a_model_that_did_not_see_it():
    features, targets = blobs(per_class=15)
    result = out_of_fold_probabilities(features, targets, 4, settings(folds=3, max_epochs=40, learning_rate=0.01), CPU)
    assert sorted(np.unique(result.folds)) == [1, 2, 3]
    assert np.allclose(result.probabilities.sum(axis=1), 1, atol=1e-5)
    assert (result.probabilities.argmax(axis=1) == targets).mean() > 0.6  # chance: 0.25


def test_the_report_holds_scikit_learns_numbers():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 0, 1, 1, 2, 0, 2])
    table = classification_table(true, pred, ["a", "b", "c"]).set_index("class")
    assert table.loc["accuracy", "f1"] == pytest.approx(accuracy_score(true, pred))
    assert table.loc["b", "precision"] == pytest.approx(precision_score(true, pred, average=None)[1])
    assert table.loc["c", "recall"] == pytest.approx(recall_score(true, pred, average=None)[2])
    assert table.loc["macro avg", "f1"] == pytest.approx(f1_score(true, pred, average="macro"))
    assert table.loc["weighted avg", "support"] == 8 and table.loc["a", "support"] == 3


def _predictions(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and predicted targets that realise a confusion matrix of ``counts``."""
    true, pred = [], []
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            true += [i] * count
            pred += [j] * count
    return np.array(true), np.array(pred)


def test_confusion_pairs_follow_the_notebooks_rule_and_keep_both_directions():
    counts = np.full((6, 6), 2) + np.eye(6, dtype=int) * 88
    counts[0] = [66, 24, 2, 2, 2, 4]
    counts[1] = [20, 72, 2, 2, 2, 2]
    true, pred = _predictions(counts)
    classes = ClassSet((3, 5, 8, 9, 11, 12), ("maple", "oak", "rocket", "girl", "woman", "shrew"))
    similarity = pd.DataFrame(np.eye(6) * 0.1 + 0.8, index=list(classes.names), columns=list(classes.names))
    pairs, rule = confusion_pairs(true, pred, classes, 2.0, 1.0, similarity)
    rates = row_normalise(counts)
    off = rates[~np.eye(6, dtype=bool)]
    off = off[off > 0]
    assert rule.threshold == pytest.approx(off.mean() + 2 * off.std())
    assert pairs[["true", "pred"]].values.tolist() == [["maple", "oak"], ["oak", "maple"]]
    first = pairs.iloc[0]
    assert first["mis_rate"] == pytest.approx(0.24) and first["reverse_mis_rate"] == pytest.approx(0.20)
    assert first["images"] == 24 and first["true_label"] == 3 and first["pred_label"] == 5
    assert first["recall_true"] == pytest.approx(0.66) and first["precision_pred"] == pytest.approx(72 / 104)
    assert first["centroid_similarity"] == pytest.approx(0.8)
    assert pairs["both_directions"].all()


def test_with_few_classes_the_capped_rule_flags_the_look_alike_pairs_that_mu_plus_k_sigma_misses():
    # The demo's shape: the overlap set is 3 look-alike pairs (6 classes, 10 test images each), each
    # pair confused 40-50% of the time, and one stray mistake.
    counts = np.diag([10] * 6)
    for a, b, rate in [(0, 3, 5), (3, 0, 4), (1, 4, 4), (4, 1, 5), (2, 5, 4), (5, 2, 4)]:
        counts[a, b] = rate
        counts[a, a] -= rate
    counts[2, 0], counts[2, 2] = 1, counts[2, 2] - 1
    true, pred = _predictions(counts)
    classes = ClassSet(tuple(range(6)), ("red", "green", "blue", "crimson", "emerald", "cobalt"))
    rates = row_normalise(counts)[~np.eye(6, dtype=bool)]
    nonzero = rates[rates > 0]
    assert nonzero.mean() + 2 * nonzero.std() > 0.5  # the notebook's rule alone flags no look-alike
    assert confusion_pairs(true, pred, classes, 2.0, 1.0)[0].empty
    pairs, rule = confusion_pairs(true, pred, classes, 2.0, 0.25)
    assert rule.threshold == 0.25 and rule.cap == 0.25
    assert {frozenset(pair) for pair in pairs[["true", "pred"]].values.tolist()} == {
        frozenset(("red", "crimson")), frozenset(("green", "emerald")), frozenset(("blue", "cobalt"))}
    assert len(pairs) == 6 and pairs["both_directions"].all()  # and not the stray blue -> red


def test_no_confusion_at_all_flags_nothing():
    true = np.array([0, 1, 2])
    pairs, rule = confusion_pairs(true, true, ClassSet((0, 1, 2), ("a", "b", "c")), 2.0, 0.25)
    assert rule is None and pairs.empty
    assert outlier_rule(np.array([0.0, 0.3]), 2.0).threshold == pytest.approx(0.3)


def test_cleanlab_finds_the_designed_overlapping_pair():
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(5), 60)
    probabilities = rng.dirichlet(np.ones(5) * 0.5, len(targets)) * 0.2
    probabilities[np.arange(len(targets)), targets] += 0.8
    swap = (targets == 3) & (rng.random(len(targets)) < 0.4)  # 40% of class 3 looks like class 1
    probabilities[swap] = probabilities[swap][:, [0, 3, 2, 1, 4]]
    classes = ClassSet((10, 11, 12, 13, 14), tuple("abcde"))
    found, rule = cleanlab_overlap(targets, probabilities, classes, 2.0)
    top = found.iloc[0]
    assert (top["class_a"], top["class_b"], top["label_a"]) == ("b", "d", 11) and top["flagged"]
    assert found["flagged"].sum() == 1 and len(found) == 10 and rule.nonzero >= 1


def test_agreement_is_spearman_over_the_shared_and_the_union_pairs():
    classes = ClassSet(tuple(range(5)), tuple("abcde"))
    rates = np.zeros((5, 5))
    similarity = pd.DataFrame(np.ones((5, 5)), index=list("abcde"), columns=list("abcde"))
    pair_scores = {("a", "b"): (0.99, 0.30), ("a", "c"): (0.97, 0.20), ("b", "c"): (0.95, 0.10),
                   ("d", "e"): (0.90, 0.25)}
    for (x, y), (cosine, confusion) in pair_scores.items():
        similarity.loc[x, y] = similarity.loc[y, x] = cosine
        rates["abcde".index(x), "abcde".index(y)] = confusion
    for x, y in [("a", "d"), ("a", "e"), ("b", "d"), ("b", "e"), ("c", "d"), ("c", "e")]:
        similarity.loc[x, y] = similarity.loc[y, x] = 0.5
    centroid_pairs = pd.DataFrame({"label_a": [0, 0, 1], "label_b": [1, 2, 2]})
    confusion = pd.DataFrame({"true_label": [0, 0, 1, 3], "pred_label": [1, 2, 2, 4]})
    measures = pair_measures(classes, rates, similarity, centroid_pairs, confusion, None)
    agreement = measure_agreement(measures).set_index(["measure_a", "measure_b"])
    row = agreement.loc[("centroid", "confusion")]
    assert (row["flagged_a"], row["flagged_b"], row["shared"], row["union"]) == (3, 4, 3, 4)
    assert row["spearman_shared"] == pytest.approx(1.0)   # a-b > a-c > b-c under both
    assert row["spearman_union"] == pytest.approx(0.4)    # d-e: last by centroid, second by confusion
    assert np.isnan(agreement.loc[("centroid", "cleanlab"), "spearman_shared"])  # cleanlab unavailable


def test_the_whole_analysis_names_the_disagreements():
    features, targets = blobs(classes=4, per_class=30, spread=2.5, seed=1)
    probabilities = np.eye(4)[targets] * 0.6 + 0.1
    probabilities[targets == 0] = [0.3, 0.6, 0.05, 0.05]  # class 0 is always taken for class 1
    classes = ClassSet((0, 1, 2, 3), tuple("abcd"))
    similarity = pd.DataFrame(np.full((4, 4), 0.5), index=list("abcd"), columns=list("abcd"))
    similarity.loc["c", "d"] = similarity.loc["d", "c"] = 0.95
    centroid_pairs = pd.DataFrame({"class_a": ["c"], "class_b": ["d"], "similarity": [0.95], "label_a": [2],
                                   "label_b": [3]})
    result = analyse(classes, targets, probabilities, k=2.0, max_threshold=0.25, similarity=similarity, centroid_pairs=centroid_pairs,
                     crossval_targets=None, crossval_probabilities=None, disagreement_rows=5,
                     notes=["no cleanlab overlap: test"])
    assert result.headline["accuracy"] == pytest.approx(0.75)
    assert result.headline["pairs_flagged"] == {"centroid": 1, "confusion": 1, "cleanlab": None}
    flagged_by = dict(zip(zip(result.disagreements["class_a"], result.disagreements["class_b"]),
                          result.disagreements["flagged_by"]))
    assert flagged_by == {("a", "b"): "confusion", ("c", "d"): "centroid"}
    assert "no cleanlab overlap: test" in result.notes


def test_without_a_test_split_the_classifier_tests_on_a_stratified_hold_out_of_train(tmp_path):
    features, targets = blobs(classes=3, per_class=10)
    write_store(tmp_path / "features.h5", {"train": SplitFeatures(features, targets, np.arange(30) + 100)},
                {"dataset": "toy", "class_names": ["a", "b", "c"]})
    (tmp_path / "classes.json").write_text("{}")
    classes, fit, test, notes = fit_and_test_rows(FeatureStore(tmp_path / "features.h5"), tmp_path / "classes.json",
                                                  settings(classes="all", test_split="train", holdout_fraction=0.3))
    assert len(classes) == 3 and np.bincount(test.targets).tolist() == [3, 3, 3] and len(fit.targets) == 21
    assert not set(fit.index.tolist()) & set(test.index.tolist()) and test.index.min() >= 100
    assert "hold-out of 0.3 of split 'train' (9 images; 21 left to fit)" in notes[0]


def test_too_few_classes_or_images_are_named_with_what_would_be_right():
    one = ClassSet((4,), ("girl",))
    assert "at least two classes" in classifier_problem(one, np.zeros(10, int), 0.3, "train")
    assert "overlap.threshold" in classifier_problem(ClassSet((), ()), np.zeros(0, int), 0.3, "train")
    pair = ClassSet((4, 7), ("girl", "woman"))
    targets = np.array([0] * 20 + [1])
    assert "woman (1)" in classifier_problem(pair, targets, 0.3, "train")
    targets = np.array([0] * 20 + [1] * 4)
    assert classifier_problem(pair, targets, 0.3, "train") is None
    problem = crossval_problem(pair, targets, 5, 0.3, "train")
    assert "woman (4)" in problem and "classify.folds" in problem
    assert crossval_problem(pair, np.array([0] * 20 + [1] * 5), 5, 0.3, "train") is None


def test_a_confusion_heatmap_of_54_classes_names_every_class(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (54, 54)) + np.eye(54, dtype=int) * 80
    names = [f"class_{i}" for i in range(54)]
    order = confusion_heatmap(row_normalise(counts), names, tmp_path / "confusion.png", title="54 classes")
    assert sorted(order.tolist()) == list(range(54))
    with Image.open(tmp_path / "confusion.png") as image:
        assert min(image.size) > 1000  # room for 54 readable names


def test_pair_pictures_show_both_classes_and_their_mistakes(tmp_path):
    features, targets = blobs(classes=3, per_class=25, seed=2)
    probabilities = np.eye(3, dtype=np.float32)[targets] * 0.7 + 0.1
    probabilities[:5] = [0.2, 0.7, 0.1]  # five images of class 0 predicted as class 1
    predictions = TestPredictions(np.arange(len(targets)) * 2, targets, probabilities)
    classes = ClassSet((2, 5, 9), ("maple", "oak", "rocket"))
    confusion = pd.DataFrame({"true_label": [2, 5], "pred_label": [5, 2]})
    assert pictured_pairs(confusion, 10) == [(2, 5)]
    asked = []

    def image_of(index):
        asked.append(index)
        return np.full((8, 8, 3), index % 255, dtype=np.uint8)

    artifacts = draw_pair((2, 5), classes, predictions, features, image_of, tmp_path / "pair_figures", 1,
                          samples_per_class=3, misclassified=4, seed=0)
    assert [a.path for a in artifacts] == ["umap_01_maple__oak.png", "samples_01_maple__oak.png"]
    assert [picture_problem(tmp_path / "pair_figures" / a.path) for a in artifacts] == [None, None]
    assert "5 maple as oak" in artifacts[0].caption
    assert len(asked) == 3 + 3 + 4 and set(asked[-4:]) <= {0, 2, 4, 6, 8}  # the most confident mistakes
