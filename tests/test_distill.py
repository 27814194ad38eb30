"""The distillation stage's library: settings, labels (true and the clustering stage's pseudo labels),
trajectory matching with its checkpoints, the four-set evaluation, the saved set, the nearest real
images and the stage's summary."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from embedlens.config import section_defaults
from embedlens.roles import SplitRoles, with_roles
from embedlens.distill.data import LabelledFeatures, label_source, read_rows
from embedlens.distill.evaluation import (SETS, beats_random, choose_training, chosen_training, evaluate,
                                          summarize_evaluation)
from embedlens.distill.matching import Distilled, distill, distill_backing_off
from embedlens.distill.pictures import grid_vectors, nearest_real
from embedlens.distill.settings import DistillInputError, DistillSettings
from embedlens.distill.summary import distill_document, distill_summary
from embedlens.distill.training import initial_positions
from embedlens.pseudo_labels import PseudoLabelsError, pseudo_labels_path, read_pseudo_labels
from embedlens.store import FeatureStore, SplitFeatures, write_store

CPU = torch.device("cpu")
NAMES = ["apple", "bee", "cloud", "dune"]


def settings(**changes) -> DistillSettings:
    """The schema's defaults scaled down to tiny data, with ``changes``."""
    tiny = {"per_class": 2, "experts": 2, "expert_epochs": 6, "expert_lr": 0.05, "batch_size": 16, "syn_batch": 8,
            "syn_steps": 4, "expert_epochs_to_match": 2, "max_start_epoch": 3, "iterations": 12, "lr_features": 10.0,
            "eval_seeds": 3, "eval_epochs": 30, "eval_lr": 0.05, "full_epochs": 6, "full_lr": 0.05, "device": "cpu"}
    defaults = with_roles("distill", section_defaults("distill"), SplitRoles("train", "test"), 0.2)
    return DistillSettings.from_config({**defaults, **tiny, **changes})


def blobs(per_class: int = 20, dim: int = 12, seed: int = 0, classes: int = len(NAMES)) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes (non-negative, like pooled CNN features): the same class centres
    for every ``seed``, which draws the noise (seed 0: train, 1: test)."""
    centres = np.random.default_rng(42).uniform(0, 2, size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    noise = np.random.default_rng(seed).normal(scale=0.8, size=(len(labels), dim))
    return np.abs(centres[labels] + noise).astype(np.float32), labels


def store_at(tmp_path, train_index: np.ndarray | None = None) -> FeatureStore:
    features, labels = blobs()
    test_features, test_labels = blobs(per_class=6, seed=1)
    index = np.arange(len(labels)) * 3 + 5 if train_index is None else train_index  # index_in_split is not the row
    write_store(tmp_path / "features.h5", {"train": SplitFeatures(features, labels, index),
                                           "test": SplitFeatures(test_features, test_labels, np.arange(len(test_labels)))},
                {"dataset": "toy", "class_names": NAMES})
    return FeatureStore(tmp_path / "features.h5")


def write_pseudo_labels(path, *, split: str, index, pseudo_label) -> None:
    """A pseudo_labels.json in the clustering stage's contract."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clusters = list(range(len(index)))
    path.write_text(json.dumps({"method": "temi", "split": split, "index": [int(i) for i in index],
                                "cluster": [c % 5 for c in clusters], "pseudo_label": [int(p) for p in pseudo_label],
                                "cluster_to_label": {str(c): c % len(NAMES) for c in range(5)},
                                "representatives": {}, "purity": {}, "k": 5}))


# -- settings and labels --------------------------------------------------------------------------------


def test_settings_refuse_a_target_epoch_past_the_experts_and_unknown_label_sources():
    with pytest.raises(ValueError, match=r"max_start_epoch \(5\) \+ distill.expert_epochs_to_match \(2\) exceeds "
                                         r"distill.expert_epochs \(6\).*at most 4"):
        settings(max_start_epoch=5)
    with pytest.raises(ValueError, match="distill.labels is 'kmeans'; allowed values: true"):
        settings(labels="kmeans")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['iters'\]"):
        DistillSettings.from_config({**section_defaults("distill"), "iters": 3})


def test_true_labels_read_the_train_and_test_splits_and_a_validation_part_of_train(tmp_path):
    store = store_at(tmp_path)
    rows = read_rows(store, settings())
    train, validation, test = rows.fit, rows.validation, rows.test
    # val_fraction 0.1 of each class of 20 train rows: 2 per class held out to choose on, 18 to fit
    assert train.features.shape == (72, 12) and np.bincount(validation.labels).tolist() == [2, 2, 2, 2]
    assert sorted(np.concatenate([train.index, validation.index]).tolist()) == store.index("train").tolist()
    position = {index: row for row, index in enumerate(store.index("train").tolist())}
    assert np.array_equal(train.labels, store.labels("train")[[position[i] for i in train.index.tolist()]])
    assert np.array_equal(read_rows(store, settings()).validation.index, validation.index)  # seeded
    assert not np.array_equal(read_rows(store, settings(seed=5)).validation.index, validation.index)
    assert len(test.labels) == 24 and label_source(settings()) == "true labels"
    with pytest.raises(DistillInputError, match="distill.test_split: .* has no split 'val'; it has train, test"):
        read_rows(store, settings(test_split="val"))


def test_pseudo_labels_are_aligned_to_the_store_rows_by_index(tmp_path):
    store = store_at(tmp_path)
    index = store.index("train")
    pseudo = (store.labels("train") + 1) % len(NAMES)  # a labelling that differs from the truth
    shuffled = np.random.default_rng(0).permutation(len(index))
    path = tmp_path / pseudo_labels_path("results", "toy", "lite0", "temi")
    assert str(path).endswith("results/toy/lite0/cluster/temi/pseudo_labels.json")
    write_pseudo_labels(path, split="train", index=index[shuffled], pseudo_label=pseudo[shuffled])
    rows = read_rows(store, settings(labels="pseudo"), path)
    train, validation, test = rows.fit, rows.validation, rows.test
    both = np.concatenate([train.index, validation.index])
    assert sorted(both.tolist()) == index.tolist()
    truth = dict(zip(index.tolist(), pseudo.tolist()))
    assert [truth[i] for i in both.tolist()] == np.concatenate([train.labels, validation.labels]).tolist()
    pseudo[:5] = -1  # the clustering stage's "no label" (a cluster whose representatives had none)
    write_pseudo_labels(path, split="train", index=index, pseudo_label=pseudo)
    rows = read_rows(store, settings(labels="pseudo"), path)
    assert len(rows.fit.labels) + len(rows.validation.labels) == 75
    assert not set(index[:5].tolist()) & set(np.concatenate([rows.fit.index, rows.validation.index]).tolist())
    assert np.array_equal(test.labels, store.labels("test"))  # tested against the truth
    assert "pseudo labels of clustering method temi" in label_source(settings(labels="pseudo"), path)


def test_pseudo_labels_of_another_split_or_other_samples_are_refused(tmp_path):
    store = store_at(tmp_path)
    index, labels = store.index("train"), store.labels("train")
    path = tmp_path / "pseudo_labels.json"
    write_pseudo_labels(path, split="test", index=index, pseudo_label=labels)
    with pytest.raises(PseudoLabelsError, match="pseudo labels of split 'test', but they are read for split 'train'"):
        read_rows(store, settings(labels="pseudo"), path)
    write_pseudo_labels(path, split="train", index=index[:-1], pseudo_label=labels[:-1])
    with pytest.raises(PseudoLabelsError, match=r"1 rows without a pseudo label \(e.g. index \[242\]\)"):
        read_pseudo_labels(path, "train", index, len(NAMES))
    write_pseudo_labels(path, split="train", index=index, pseudo_label=np.full(len(index), 7))
    with pytest.raises(PseudoLabelsError, match="class indices 0..3"):
        read_pseudo_labels(path, "train", index, len(NAMES))
    path.write_text(json.dumps({"method": "temi", "split": "train", "index": [], "cluster": [], "pseudo_label": [],
                                "reason": "the split has 3 images; clustering needs at least 10"}))
    with pytest.raises(PseudoLabelsError, match="no pseudo labels: the split has 3 images"):
        read_pseudo_labels(path, "train", index, len(NAMES))
    with pytest.raises(DistillInputError, match="no pseudo_labels.json was given"):
        read_rows(store, settings(labels="pseudo"))


# -- distillation -------------------------------------------------------------------------------------------


def test_initial_vectors_are_seeded_real_samples_of_each_class():
    labels = np.array([0, 0, 0, 1, 1, 2])
    first = initial_positions(labels, np.array([0, 1, 2]), 2, np.random.default_rng(0))
    again = initial_positions(labels, np.array([0, 1, 2]), 2, np.random.default_rng(0))
    assert np.array_equal(first, again) and labels[first].tolist() == [0, 0, 1, 1, 2, 2]
    assert len(set(first[:2].tolist())) == 2  # without replacement where the class has enough rows


def test_matching_moves_the_synthetic_vectors_and_lowers_the_matching_loss():
    features, labels = blobs()
    result = distill(features, labels, len(NAMES), settings(iterations=40), CPU)
    assert result.features.shape == (8, 12) and result.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    start = features[initial_positions(labels, np.arange(4), 2, np.random.default_rng(0))]
    assert not np.allclose(result.features, start)  # learned, and stored back in the store's space
    assert np.abs(result.features.mean() - features.mean()) < 1.0
    losses = result.history["matching_loss"].to_numpy()
    assert len(losses) == 40 and losses[-10:].mean() < losses[:10].mean()
    assert result.learned_lr > 0 and result.learned_lr != 0.05
    again = distill(features, labels, len(NAMES), settings(iterations=40), CPU)
    assert np.array_equal(again.features, result.features) and again.learned_lr == result.learned_lr  # seeded


def test_the_mlp_classifier_is_distilled_and_evaluated_the_same_way():
    features, labels = blobs()
    config = settings(classifier="mlp", hidden=8, iterations=5, eval_seeds=1)
    result = distill(features, labels, len(NAMES), config, CPU)
    assert result.features.shape == (8, 12) and np.isfinite(result.history["matching_loss"]).all()
    train = LabelledFeatures(features, labels, np.arange(len(labels)))
    choices = choose_training(result, train, train, len(NAMES), config, CPU)
    per_seed = evaluate(result, train, train, len(NAMES), config, CPU, chosen_training(choices))
    assert per_seed["set"].tolist() == [name for name, _ in SETS] and (per_seed["epochs"] == [30, 30, 30, 6]).all()
    accuracy = per_seed.set_index("set")["accuracy"]
    assert accuracy["distilled"] > max(accuracy["random"], 0.25)  # 0.44 / 0.24 measured


def test_a_killed_distillation_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    features, labels = blobs()
    config = settings(checkpoint_seconds=0)
    whole = distill(features, labels, len(NAMES), config, CPU)

    def kill_at_iteration_5(row):
        if row["phase"] == "matching" and row["iteration"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(features, labels, len(NAMES), config, CPU, checkpoint_dir=tmp_path, progress=kill_at_iteration_5)
    assert (tmp_path / "experts.pt").is_file() and (tmp_path / "matching.pt").is_file()
    phases = []
    resumed = distill(features, labels, len(NAMES), config, CPU, checkpoint_dir=tmp_path,
                      progress=lambda row: phases.append(row["phase"]))
    assert resumed.resumed_at_iteration == 5 and phases.count("matching") == config.iterations - 5
    assert np.array_equal(resumed.features, whole.features) and resumed.learned_lr == whole.learned_lr
    assert resumed.history["matching_loss"].tolist() == whole.history["matching_loss"].tolist()
    # another per_class reuses the experts (they do not depend on it) but not the matching state
    trained = torch.load(tmp_path / "experts.pt", weights_only=False)["trajectories"]
    other = distill(features, labels, len(NAMES), settings(checkpoint_seconds=0, per_class=1), CPU,
                    checkpoint_dir=tmp_path)
    assert other.resumed_at_iteration == 0 and len(other.labels) == 4
    assert torch.equal(torch.load(tmp_path / "experts.pt", weights_only=False)["trajectories"], trained)


def test_a_diverging_distillation_stops_naming_the_settings():
    features, labels = blobs()
    with pytest.raises(DistillInputError, match="diverged at iteration .* lower distill.lr_features or distill.lr_lr"):
        distill(features, labels, len(NAMES), settings(lr_lr=1e6), CPU)


def test_a_diverging_distillation_backs_off_to_lower_rates_and_says_so():
    features, labels = blobs()
    result, used, notes = distill_backing_off(features, labels, len(NAMES), settings(lr_lr=1.0), CPU)
    assert len(result.labels) == 2 * len(NAMES) and np.isfinite(result.history["matching_loss"]).all()
    assert (used.lr_lr, used.lr_features) == pytest.approx((0.01, settings().lr_features / 100))  # two back-offs
    assert len(notes) == 2 and "at distill.lr_features 10 and lr_lr 1; retried with 1 and 0.1" in notes[0]
    with pytest.raises(DistillInputError, match="Every try diverged"):
        distill_backing_off(features, labels, len(NAMES), settings(lr_lr=1e12), CPU)


def test_without_a_test_split_the_test_and_validation_rows_are_disjoint_stratified_hold_outs_of_train(tmp_path):
    store = store_at(tmp_path)
    rows = read_rows(store, settings(test_split="train", holdout_fraction=0.25))
    train, validation, test = rows.fit, rows.validation, rows.test
    # 80 train rows, 20 of each of 4 classes: 5 per class tested, 0.1 of the other 15 (2) to validate
    assert np.bincount(test.labels).tolist() == [5, 5, 5, 5]
    assert np.bincount(validation.labels).tolist() == [2, 2, 2, 2] and len(train.labels) == 52
    assert not set(validation.index.tolist()) & set(test.index.tolist())  # nothing is chosen on a test row
    assert not set(train.index.tolist()) & (set(test.index.tolist()) | set(validation.index.tolist()))


def test_the_saved_set_is_plain_hdf5_and_loads_back(tmp_path):
    features, labels = blobs()
    result = distill(features, labels, len(NAMES), settings(iterations=3), CPU)
    result.save(tmp_path / "distilled.h5", class_names=NAMES, info={"settings": settings().as_dict(),
                                                                    "label_source": "true labels"})
    with h5py.File(tmp_path / "distilled.h5", "r") as handle:
        assert handle["features"].shape == (8, 12) and handle["labels"][:].tolist() == result.labels.tolist()
        assert handle.attrs["learned_lr"] == result.learned_lr
        assert json.loads(handle.attrs["settings"])["per_class"] == 2
    loaded, attrs = Distilled.load(tmp_path / "distilled.h5")
    assert np.array_equal(loaded.features, result.features) and attrs["class_names"] == NAMES
    assert attrs["label_source"] == "true labels" and len(loaded.history) == 3
    assert np.allclose(loaded.standardizer.inverse(loaded.standardizer.forward(features)), features, atol=1e-5)


# -- evaluation -----------------------------------------------------------------------------------------------


def test_each_set_is_trained_over_the_seeds_with_its_choice_and_summarised():
    features, labels = blobs()
    test_features, test_labels = blobs(per_class=10, seed=1)
    config = settings()
    result = distill(features, labels, len(NAMES), config, CPU)
    train = LabelledFeatures(features, labels, np.arange(len(labels)))
    choices = choose_training(result, train, LabelledFeatures(*blobs(per_class=5, seed=2), np.arange(20)),
                              len(NAMES), config, CPU)
    assert choices["chosen"].all() and choices["validation_accuracy"].isna().all()  # one candidate each: no choice
    per_seed = evaluate(result, train, LabelledFeatures(test_features, test_labels, np.arange(40)), len(NAMES),
                        config, CPU, chosen_training(choices))
    assert len(per_seed) == 4 * 3 and set(per_seed["seed"]) == {0, 1, 2}
    table = summarize_evaluation(per_seed)
    assert table["set"].tolist() == [name for name, _ in SETS]
    sizes = table.set_index("set")["vectors"].to_dict()
    assert sizes == {"distilled": 8, "random": 8, "centroids": 4, "full": 80}
    rates = table.set_index("set")["learning_rate"].to_dict()
    assert rates["distilled"] == result.learned_lr and rates["random"] == rates["centroids"] == 0.05
    assert (table["seeds"] == 3).all()
    mean = table.set_index("set")["accuracy_mean"]
    assert mean["distilled"] > mean["random"] + 0.1 and mean["distilled"] > 0.7  # 0.78 vs 0.61 measured
    full = table.set_index("set").loc["full", "accuracy_mean"]
    assert full > 0.5  # four classes: the full split is well above chance
    random_subsets = per_seed[per_seed["set"] == "random"]["accuracy"]
    assert random_subsets.nunique() > 1  # each seed draws its own subset
    document = distill_document(result, table, choices, config, train_images=80, validation_images=20, classes=4,
                                label_source="true labels", evaluation_seconds=2.0)
    assert document["compression_ratio"] == 10.0 and document["vectors"] == 8
    assert document["accuracy_kept"] == pytest.approx(table.set_index("set").loc["distilled", "accuracy_mean"] / full,
                                                      abs=1e-4)
    assert document["accuracy"]["random"]["candidates"] == 1 and "its only candidate" in document["choice"]
    assert document["beats_random"] is True  # the eight learned vectors beat eight drawn real ones
    json.dumps(document)  # plain JSON


def test_learning_rate_and_epochs_are_chosen_on_the_validation_part_and_the_test_split_only_reports():
    features, labels = blobs()
    config = settings(eval_lr=[1e-6, 0.5], eval_epochs=[30], full_lr=[1e-6, 0.05], full_epochs=[2, 6])
    result = distill(features, labels, len(NAMES), config, CPU)
    train = LabelledFeatures(features, labels, np.arange(len(labels)))
    validation = LabelledFeatures(*blobs(per_class=10, seed=2), np.arange(40))
    choices = choose_training(result, train, validation, len(NAMES), config, CPU)
    assert choices.groupby("set").size().to_dict() == {"centroids": 2, "distilled": 1, "full": 4, "random": 2}
    chosen = chosen_training(choices)
    # a rate of 1e-6 leaves the classifier at its random start: validation picks the rate that learns
    assert chosen["random"][0] == chosen["centroids"][0] == 0.5 and chosen["full"][0] == 0.05
    for name, group in choices.groupby("set"):
        if len(group) > 1:  # the chosen candidate is the best on validation
            assert group.loc[group["chosen"], "validation_accuracy"].iloc[0] == group["validation_accuracy"].max()
    # the test rows are only reported on, every seed with the chosen rate
    test = LabelledFeatures(*blobs(per_class=10, seed=1), np.arange(40))
    per_seed = evaluate(result, train, test, len(NAMES), config, CPU, chosen)
    assert (per_seed.groupby("set")["learning_rate"].first().to_dict()
            == {name: lr for name, (lr, _) in chosen.items()})
    document = distill_document(result, summarize_evaluation(per_seed), choices, config, train_images=80,
                                validation_images=40, classes=4, label_source="true labels", evaluation_seconds=1.0)
    assert "chosen on a validation part of 40 train images" in document["choice"]
    assert "random lr 0.5, 30 epochs (validation accuracy" in document["choice"]
    assert document["accuracy"]["full"]["validation_accuracy"] == pytest.approx(
        choices[choices["chosen"] & (choices["set"] == "full")]["validation_accuracy"].iloc[0], abs=1e-4)


def table_of(distilled: tuple[float, float], random: tuple[float, float]) -> pd.DataFrame:
    return pd.DataFrame({"set": ["distilled", "random"], "accuracy_mean": [distilled[0], random[0]],
                         "accuracy_std": [distilled[1], random[1]]})


def test_beating_the_random_subset_means_beyond_both_spreads():
    assert beats_random(table_of((0.60, 0.01), (0.55, 0.02)))
    assert not beats_random(table_of((0.60, 0.03), (0.55, 0.03)))  # the intervals overlap
    assert not beats_random(table_of((0.50, 0.00), (0.55, 0.00)))


# -- pictures and summary -----------------------------------------------------------------------------------------


def test_each_synthetic_vector_finds_its_nearest_real_images():
    features, labels = blobs()
    result = Distilled(features[[3, 30]], labels[[3, 30]], 0.1, None, pd.DataFrame(), 0.0)
    rows = pd.DataFrame({"split": "train", "index_in_split": np.arange(80) + 100, "source": [f"{i}" for i in range(80)],
                         "label": labels, "class_name": [NAMES[label] for label in labels]})
    table = nearest_real(result, features, rows, NAMES, 3, device="cpu")
    assert len(table) == 6 and table["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    first = table[table["rank"] == 1]
    assert first["index_in_split"].tolist() == [103, 130] and np.allclose(first["similarity"], 1.0)
    assert first["vector_class"].tolist() == ["apple", "bee"] and first["same_class"].all()
    assert (table.groupby("vector")["similarity"].apply(lambda s: s.is_monotonic_decreasing)).all()


def test_the_grid_shows_one_vector_per_class_first():
    assert grid_vectors(np.array([0, 0, 0, 1, 1, 1, 2, 2, 2]), 5) == [0, 3, 6, 1, 4]
    assert grid_vectors(np.array([0, 1]), 10) == [0, 1]


def test_the_summary_says_honestly_whether_the_distilled_set_is_worth_it():
    accuracy = {name: {"description": text, "mean": mean, "std": 0.01, "seeds": 5, "vectors": 100,
                       "learning_rate": 0.01, "epochs": 100}
                for (name, text), mean in zip(SETS, [0.40, 0.45, 0.42, 0.70])}
    document = {"label_source": "true labels", "classes": 100, "per_class": 1, "vectors": 100, "train_images": 20000,
                "compression_ratio": 200.0, "learned_lr": 0.02, "accuracy": accuracy, "accuracy_kept": 0.5714,
                "beats_random": False, "seconds": {"distillation": 60.0, "evaluation": 30.0},
                "choice": "Learning rates and epochs were chosen on a validation part of 2000 train images.",
                "settings": {"per_class": 1}}
    neighbours = {"k": 6, "same_class": 0.8, "vectors_drawn": 20, "blank_images": {"train #3 (3.png)": "truncated"}}
    summary = distill_summary(document, neighbours, dataset="c", backbone="b")
    assert summary.stage == "distill" and summary.headline["accuracy"] == 0.40
    assert summary.headline["beats_random"] is False and summary.headline["compression_ratio"] == 200.0
    notes = " ".join(summary.notes)
    assert "does NOT beat the random real subset" in notes and "200x compression" in notes
    assert "57.1% of the accuracy of every fit row" in notes and "80-95%" in notes
    assert "chosen on a validation part of 2000 train images" in notes
    assert "1 image(s) of neighbours.png could not be read and are drawn blank (train #3 (3.png))" in notes
    assert {artifact.path for artifact in summary.figures} == {"neighbours.png", "matching_loss.png"}
    assert "validation.csv" in {artifact.path for artifact in summary.tables}
    document["beats_random"] = True
    assert "beats the random real subset beyond the seeds' spread" in " ".join(
        distill_summary(document, {**neighbours, "blank_images": {}}, dataset="c", backbone="b").notes)
