"""The clustering stage's library: settings, metrics on any rows, TEMI's heads, loss, training (determinism,
resume after a kill, the frozen last layer), its failure diagnostics, the k-means baseline, pseudo labels,
the pictures and the summary."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from embedlens.cluster.kmeans import assign, fit_kmeans
from embedlens.cluster.metrics import cluster_metrics, hungarian_accuracy, neighbour_agreement, size_statistics
from embedlens.cluster.pseudo import pseudo_labels, representatives
from embedlens.cluster.results import (Assignment, cluster_summary, collapse_warning, load_predictions, map_columns,
                                       metrics_table, results_document, save_predictions)
from embedlens.cluster.settings import ClusterInputError, ClusterSettings
from embedlens.cluster.temi import (ClusterHeads, cosine_schedule, diagnose, head_probabilities, head_statistics,
                                    load_heads, temi_head_losses, train_temi, uniform_loss)
from embedlens.config import section_defaults
from embedlens.roles import SplitRoles, with_roles
from embedlens.knn import cosine_topk
from embedlens.plots import image_rows, scatter_maps

CPU = torch.device("cpu")


def settings(**temi) -> ClusterSettings:
    values = with_roles("cluster", section_defaults("cluster"), SplitRoles("train", "test"), 0.2)
    values["temi"].update(temi)
    return ClusterSettings.from_config(values)


def blobs(classes: int = 5, per_class: int = 40, dim: int = 16, seed: int = 0):
    """Well-separated classes of non-negative features (like pooled CNN features: a large common part)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 2, size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    features = np.abs(centres[labels] + rng.normal(scale=0.15, size=(len(labels), dim))) + 1.0
    return features.astype(np.float32), labels


def small(**changes):
    """Settings for a few hundred images: narrow heads, small batches and a faster teacher, so that the
    few steps there are suffice (the defaults assume thousands of steps)."""
    values = dict(neighbours=5, heads=3, epochs=15, batch_size=20, warmup_epochs=2, learning_rate=0.05,
                  min_learning_rate=0.01, teacher_momentum=0.9, hidden_dim=64, bottleneck_dim=32, checkpoint_every=1)
    return settings(**{**values, **changes}).temi


def test_settings_come_from_the_schema_with_the_published_defaults():
    defaults = settings()
    temi = defaults.temi
    assert (temi.neighbours, temi.heads, temi.beta) == (50, 16, 0.6)
    assert (temi.hidden_dim, temi.bottleneck_dim, temi.freeze_last_layer_epochs) == (512, 256, 1)
    assert (temi.teacher_momentum, temi.teacher_momentum_end) == (0.996, 1.0)
    assert (defaults.kmeans.n_init, defaults.kmeans.normalize) == (2, True)
    assert defaults.methods == ("temi", "kmeans") and defaults.train_split == "train" and defaults.test_split == "test"
    values = with_roles("cluster", section_defaults("cluster"), SplitRoles("train", "test"), 0.2)
    values["temi"]["epoch"] = 3
    with pytest.raises(ValueError, match=r"cluster.temi: unknown key\(s\) \['epoch'\]"):
        ClusterSettings.from_config(values)


def test_metrics_match_clusters_to_classes_and_can_score_any_subset_of_rows():
    true = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    pred = np.array([4, 4, 4, 0, 0, 3, 1, 1])  # cluster ids are arbitrary; one image of class 1 strays
    assert hungarian_accuracy(true, pred) == pytest.approx(7 / 8)
    metrics = cluster_metrics(true, pred, clusters=5)
    assert metrics["acc"] == pytest.approx(7 / 8) and 0 < metrics["ari"] < 1 and 0 < metrics["nmi"] < 1
    assert metrics["active_clusters"] == 4 and metrics["size_min"] == 0 and metrics["size_max"] == 3
    assert metrics["size_mean"] == pytest.approx(8 / 5)
    assert metrics["size_cv"] == pytest.approx(np.std([2, 2, 0, 1, 3]) / (8 / 5))
    subset = np.array([True, True, True, True, True, False, True, True])  # e.g. a clean test subset
    assert cluster_metrics(true[subset], pred[subset], 5)["acc"] == 1.0
    # more clusters than classes: the unmatched cluster's images count as wrong
    assert hungarian_accuracy(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 2])) == pytest.approx(3 / 4)


def test_without_labels_the_label_metrics_are_left_out():
    pred = np.array([0, 1, 1, 2])
    for true in (None, np.full(4, -1)):
        metrics = cluster_metrics(true, pred, 3)
        assert "acc" not in metrics and "nmi" not in metrics and "ari" not in metrics
        assert metrics["active_clusters"] == 3 and metrics["images"] == 4
    partly = cluster_metrics(np.array([0, -1, 1, 1]), pred, 3)
    assert partly["labelled"] == 3 and partly["acc"] == pytest.approx(2 / 3)
    assert size_statistics(np.array([0, 0]), 2)["active_clusters"] == 1


def test_neighbour_agreement_is_the_share_of_pairs_with_one_label():
    labels = np.array([0, 0, 1, 1])
    neighbours = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    assert neighbour_agreement(neighbours, labels) == pytest.approx(0.5)
    assert neighbour_agreement(neighbours, np.full(4, -1)) is None


def test_heads_are_the_published_architecture():
    torch.manual_seed(0)
    heads = ClusterHeads(dim=64, clusters=7, heads=3, hidden=512, bottleneck=256)
    assert heads(torch.randn(5, 64)).shape == (3, 5, 7)
    assert heads.hidden_weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert heads.bottleneck_weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(heads.hidden_bias == 0) and torch.all(heads.last_gain == 1)
    # each head's output is cos(bottleneck, column) * g: bounded by g = 1 at the start
    assert heads(torch.randn(50, 64)).abs().max() <= 1 + 1e-5
    # head 1 alone equals Linear -> GELU -> Linear -> L2 norm -> weight-normalised Linear
    x = torch.randn(4, 64)
    first = torch.nn.functional.gelu(x @ heads.hidden_weight[:, 512:1024] + heads.hidden_bias[512:1024])
    bottleneck = torch.nn.functional.normalize(first @ heads.bottleneck_weight[1] + heads.bottleneck_bias[1], dim=-1)
    direction = heads.last_direction[1]
    expected = bottleneck @ (heads.last_gain[1] * direction / direction.norm(dim=0, keepdim=True))
    torch.testing.assert_close(heads(x)[1], expected)


def test_the_loss_of_uniform_probabilities_and_of_agreeing_confident_pairs():
    temi = settings().temi
    clusters, batch = 10, 8
    flat = torch.zeros(2, 2 * batch, clusters)
    prior = torch.full((2, clusters), 1 / clusters)
    losses = temi_head_losses(flat, flat, prior, temi)
    assert losses.tolist() == pytest.approx([uniform_loss(clusters, 0.6)] * 2)
    assert uniform_loss(clusters, 0.6) == pytest.approx(-math.log(clusters ** 0.8) / clusters)
    # image and partner confidently in the same cluster, clusters balanced: close to -log K
    confident = torch.full((1, 2 * batch, clusters), -10.0)
    confident[0, torch.arange(2 * batch), torch.arange(2 * batch) % batch % clusters] = 10.0
    assert temi_head_losses(confident, confident, prior[:1], temi).item() < -0.9 * math.log(clusters)
    # probabilities that underflow to 0 (logits / temperature = ±100) still give finite gradients
    student = confident.clone().requires_grad_(True)
    temi_head_losses(student, confident, prior[:1], temi).sum().backward()
    assert torch.isfinite(student.grad).all()


def test_schedules_warm_up_and_follow_a_cosine():
    rates = cosine_schedule(1.0, 0.1, steps=10, warmup_steps=4)
    assert rates[0] == 0 and rates[3] == 1.0 and rates[4] == 1.0 and rates[-1] > 0.1 and np.all(np.diff(rates[4:]) < 0)
    momenta = cosine_schedule(0.996, 1.0, steps=100)
    assert momenta[0] == 0.996 and np.all(np.diff(momenta) >= 0) and momenta[-1] == pytest.approx(1.0, abs=1e-5)


def test_temi_separates_well_separated_classes_deterministically():
    features, labels = blobs()
    neighbours = cosine_topk(features, k=5, device="cpu").indices
    temi = small()
    first = train_temi(features, neighbours, 5, temi, seed=0, device=CPU)
    again = train_temi(features, neighbours, 5, temi, seed=0, device=CPU)
    for key in first.teacher:
        torch.testing.assert_close(first.teacher[key], again.teacher[key], rtol=0, atol=0)
    heads = load_heads(first.teacher, temi, CPU)
    probabilities = head_probabilities(heads, features, temi, CPU)
    assigned = probabilities[first.best_head].argmax(axis=1)
    assert cluster_metrics(labels, assigned, 5)["acc"] > 0.9
    assert first.best_head == int(np.argmin(first.head_losses[-1]))
    assert first.history["epoch"].tolist() == list(range(1, 16))
    assert first.history["loss_best"].iloc[-1] < 0.5 * uniform_loss(5, 0.6) - 0.3  # far below the uniform loss
    statistics = head_statistics(probabilities)
    assert diagnose(statistics, first.head_losses[-1], 5, 0.6) == []


def test_a_killed_training_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    features, labels = blobs(per_class=20)
    neighbours = cosine_topk(features, k=5, device="cpu").indices
    temi = dataclasses.replace(small(), epochs=6, checkpoint_every=2)
    whole = train_temi(features, neighbours, 5, temi, seed=3, device=CPU)

    def kill_after_epoch_3(row):
        if row["epoch"] == 3:
            raise KeyboardInterrupt("killed")

    checkpoint = tmp_path / "checkpoints" / "train.pt"
    with pytest.raises(KeyboardInterrupt):
        train_temi(features, neighbours, 5, temi, seed=3, device=CPU, checkpoint=checkpoint,
                   progress=kill_after_epoch_3)
    assert checkpoint.is_file() and not list(checkpoint.parent.glob(".*.tmp"))
    resumed = train_temi(features, neighbours, 5, temi, seed=3, device=CPU, checkpoint=checkpoint)
    assert resumed.resumed_at_epoch == 2  # the last checkpoint before the kill
    for key in whole.teacher:
        torch.testing.assert_close(resumed.teacher[key], whole.teacher[key], rtol=0, atol=0)
    assert resumed.history.equals(whole.history) and resumed.best_head == whole.best_head
    # a checkpoint of other settings is not resumed
    other = train_temi(features, neighbours, 5, dataclasses.replace(temi, beta=0.7), seed=3, device=CPU,
                       checkpoint=checkpoint)
    assert other.resumed_at_epoch == 0


def test_the_last_layer_stays_frozen_during_the_first_epoch():
    features, _ = blobs(per_class=10)
    neighbours = cosine_topk(features, k=3, device="cpu").indices
    temi = dataclasses.replace(small(), epochs=1, teacher_momentum=0.0, teacher_momentum_end=0.0, warmup_epochs=0)
    torch.manual_seed(0)
    start = ClusterHeads(16, 5, temi.heads, temi.hidden_dim, temi.bottleneck_dim).state_dict()
    assert torch.all(start["last_gain"] == 1)
    fit = train_temi(features, neighbours, 5, temi, seed=0, device=CPU)  # momentum 0: teacher = student
    torch.testing.assert_close(fit.teacher["last_direction"], start["last_direction"], rtol=0, atol=0)
    torch.testing.assert_close(fit.teacher["last_gain"], start["last_gain"], rtol=0, atol=0)
    assert not torch.equal(fit.teacher["hidden_weight"], start["hidden_weight"])
    later = train_temi(features, neighbours, 5, dataclasses.replace(temi, epochs=2), seed=0, device=CPU)
    assert not torch.equal(later.teacher["last_direction"], start["last_direction"])


def test_the_uniform_solution_and_collapse_are_detected():
    uniform = np.full((2, 30, 10), 0.1, dtype=np.float32)
    uniform[:, :, 0] += 1e-3  # argmax: all in cluster 0
    statistics = head_statistics(uniform)
    assert statistics[0]["entropy"] == pytest.approx(1.0, abs=1e-3) and statistics[0]["active_clusters"] == 1
    warnings = diagnose(statistics, np.array([uniform_loss(10, 0.6)] * 2), 10, 0.6)
    assert len(warnings) == 1 and warnings[0].startswith("uniform solution")
    confident = np.eye(10, dtype=np.float32)[np.arange(30) % 10][None]
    assert diagnose(head_statistics(confident), np.array([-2.0]), 10, 0.6) == []
    assert collapse_warning(3, 10, 0.5).startswith("collapse: the fit images fall into 3 of 10 clusters")
    assert collapse_warning(5, 10, 0.5) is None


def test_too_few_images_for_the_clusters_is_a_clear_error():
    features, _ = blobs(classes=2, per_class=2)
    with pytest.raises(ClusterInputError, match="4 images cannot be clustered into 9 clusters"):
        train_temi(features, np.zeros((4, 1), np.int64), 9, small(), seed=0, device=CPU)
    with pytest.raises(ClusterInputError, match="lower cluster.clusters"):
        fit_kmeans(features, 9, settings().kmeans, seed=0)


def test_kmeans_baseline_on_normalised_features_scores_the_test_rows():
    features, labels = blobs(per_class=30)
    model = fit_kmeans(features[::2], 5, settings().kmeans, seed=0)
    assert cluster_metrics(labels[1::2], assign(model, features[1::2], settings().kmeans), 5)["acc"] > 0.95
    assert np.allclose(np.linalg.norm(model.cluster_centers_, axis=1), 1.0, atol=0.05)  # clusters of directions


def test_pseudo_labels_are_voted_by_the_images_nearest_each_centre():
    rng = np.random.default_rng(0)
    centre = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cluster = np.repeat([0, 1], 6)
    features = centre[cluster] + rng.normal(scale=0.05, size=(12, 3))
    features[5] = [1.0, 0.9, 0.0]  # far from its cluster's centre
    labels = np.array([2, 2, 2, 0, 2, 0, 1, 1, 1, 1, 1, 1])
    index = np.arange(100, 112)
    chosen = representatives(features, cluster, k=4)
    assert 5 not in chosen[0] and len(chosen[0]) == 4
    document = pseudo_labels(features, cluster, labels, index, 4, method="temi", split="train",
                             class_names=["a", "b", "c"])
    assert set(document) >= {"method", "split", "index", "cluster", "pseudo_label", "cluster_to_label",
                             "representatives", "purity", "k"}
    assert document["cluster_to_label"] == {"0": 2, "1": 1}
    assert document["pseudo_label"] == [2] * 6 + [1] * 6 and document["index"] == index.tolist()
    assert all(i - 100 in chosen[0] for i in document["representatives"]["0"])
    assert document["purity"]["0"] == pytest.approx(float(np.mean(labels[chosen[0]] == 2)))
    assert document["purity"]["1"] == 1.0
    unlabelled = pseudo_labels(features, cluster, np.full(12, -1), index, 4, method="kmeans", split="train",
                               class_names=[])
    assert unlabelled["cluster_to_label"] == {} and set(unlabelled["pseudo_label"]) == {-1}
    json.dumps(document)  # plain JSON


def test_results_summary_and_map_columns(tmp_path):
    config = settings()
    truth = np.repeat(np.arange(4), 5)
    split = {"train": Assignment(np.arange(20), truth[::-1].copy(), truth),
             "test": Assignment(np.arange(20), truth.copy(), truth)}
    save_predictions(tmp_path / "p.npz", "temi", 4, split, ["a", "b", "c", "d"])
    method, clusters, loaded, names = load_predictions(tmp_path / "p.npz")
    assert (method, clusters, names) == ("temi", 4, ["a", "b", "c", "d"])
    np.testing.assert_array_equal(loaded["test"].cluster, truth)
    fit = {"seconds": 1.0, "device": "cpu", "heads": 2, "epochs": 3, "steps_per_epoch": 1, "batch_size": 20,
           "best_head": 0, "final_loss": -1.0, "uniform_loss": -0.2, "neighbours": 5, "neighbour_agreement": 0.8,
           "warnings": ["uniform solution: ..."]}
    temi = {**results_document("temi", 4, loaded, fit, config), "map": "UMAP"}
    collapsed = {"train": Assignment(np.arange(20), np.zeros(20, np.int64), truth), "test": split["test"]}
    kmeans = {**results_document("kmeans", 4, collapsed, {"seconds": 2.0, "device": "cpu"}, config), "map": "UMAP"}
    assert temi["metrics"]["test"]["acc"] == 1.0 and temi["warnings"] == ["uniform solution: ..."]
    assert kmeans["warnings"][0].startswith("collapse: the fit images fall into 1 of 4")
    table = metrics_table([temi, kmeans])
    assert table[["method", "split"]].values.tolist() == [["temi", "train"], ["temi", "test"], ["kmeans", "train"],
                                                         ["kmeans", "test"]]
    summary = cluster_summary([temi, kmeans], config, dataset="d", backbone="b")
    assert summary.headline["acc"] == 1.0 and summary.headline["method"] == "temi"
    assert {"nmi", "ari", "acc_kmeans"} <= set(summary.headline)
    assert any("kmeans: warning: collapse" in note for note in summary.notes)
    assert any("80.0% of the mined neighbour pairs" in note for note in summary.notes)
    figures = {figure.path for figure in summary.figures}
    assert {"temi/map.png", "kmeans/representatives.png", "temi/training_curve.png"} <= figures
    columns = map_columns({"temi": loaded, "kmeans": collapsed, "skipped": {}})
    assert list(columns.columns) == ["split", "index_in_split", "temi cluster", "kmeans cluster", "skipped cluster"]
    assert len(columns) == 40 and columns["skipped cluster"].isna().all() and columns["temi cluster"].notna().all()
    skipped = {"method": "temi", "status": "skipped", "reason": "no split 'val'", "metrics": {}, "warnings": []}
    assert metrics_table([skipped, kmeans])["method"].unique().tolist() == ["kmeans"]
    alone = cluster_summary([skipped], config, dataset="d", backbone="b")
    assert alone.headline == {"clustered": "no"} and alone.notes == ["temi: not clustered: no split 'val'"]


def test_figures_on_the_clean_test_split_leave_out_the_rows_the_audit_flagged():
    truth = np.repeat(np.arange(4), 5)
    wrong = truth.copy()
    wrong[[0, 5]] = [3, 2]  # two test images clustered with another class
    split = {"train": Assignment(np.arange(20), truth.copy(), truth),
             "test": Assignment(np.arange(100, 120), wrong, truth)}
    fit = {"seconds": 1.0, "device": "cpu"}
    kept = np.setdiff1d(np.arange(100, 120), [100, 105])  # the audit flagged exactly those two
    document = results_document("kmeans", 4, split, fit, settings(), clean_index=kept)
    assert document["metrics"]["test"]["acc"] == pytest.approx(0.9)
    clean = document["metrics"]["test (clean)"]
    assert clean["images"] == 18 and clean["acc"] == 1.0
    summary = cluster_summary([{**document, "map": "UMAP"}], settings(), dataset="d", backbone="b")
    assert summary.headline["acc"] == pytest.approx(0.9) and summary.headline["clean_acc"] == 1.0
    assert any("without the images the dataset audit flagged (18 of 20 images)" in note for note in summary.notes)
    assert "test (clean)" in metrics_table([document])["split"].tolist()
    assert "test (clean)" not in results_document("kmeans", 4, split, fit, settings())["metrics"]


def test_side_by_side_maps_and_coloured_captions_are_drawn(tmp_path):
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(300, 2))
    scatter_maps(xy, [("by cluster", rng.integers(0, 100, 300)), ("by class", [f"c{i % 100}" for i in range(300)])],
                 tmp_path / "map.png", title="100 groups")
    image = np.zeros((8, 8, 3), np.uint8)
    image_rows([("cluster 0", [image, image], ["a", "b"])], tmp_path / "grid.png",
               caption_colours=[["tab:green", "tab:red"]])
    image_rows([("cluster 0", [image], ["a"])], tmp_path / "plain.png", title="captions black by default")
    assert (tmp_path / "map.png").stat().st_size > 10_000 and (tmp_path / "grid.png").stat().st_size > 1000
    assert (tmp_path / "plain.png").stat().st_size > 1000


def test_a_kmeans_warm_start_points_every_head_at_the_given_clusters():
    features, labels = blobs()
    temi = small()
    torch.manual_seed(0)
    heads = ClusterHeads(16, 5, temi.heads, temi.hidden_dim, temi.bottleneck_dim)
    x = torch.as_tensor(features)
    cold = heads(x).argmax(dim=-1).numpy()
    clusters = fit_kmeans(features, 5, settings().kmeans, seed=0).labels_
    heads.warm_start(x, torch.as_tensor(clusters, dtype=torch.int64))
    warm = heads(x).argmax(dim=-1).numpy()
    assert all(cluster_metrics(clusters, warm[h], 5)["acc"] > 0.9 for h in range(temi.heads))
    assert max(cluster_metrics(clusters, cold[h], 5)["acc"] for h in range(temi.heads)) < 0.9
    assert torch.all(heads.last_gain == 1)
    neighbours = cosine_topk(features, k=5, device="cpu").indices
    fit = train_temi(features, neighbours, 5, dataclasses.replace(temi, epochs=3), seed=0, device=CPU,
                     warm_start=clusters)
    assigned = head_probabilities(load_heads(fit.teacher, temi, CPU), features, temi, CPU)[fit.best_head].argmax(1)
    assert cluster_metrics(labels, assigned, 5)["acc"] > 0.9
