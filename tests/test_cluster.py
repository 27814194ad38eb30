"""The clustering stage's library: settings, metrics on any rows, TEMI's heads, loss, training (determinism,
resume after a kill, the frozen last layer), its failure diagnostics, the k-means baseline, pseudo labels,
the pictures and the summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from embedlens.cluster.kmeans import cluster_kmeans
from embedlens.kmeans import assign, fit_kmeans
from embedlens.cluster.metrics import cluster_metrics, hungarian_accuracy, neighbour_agreement, size_statistics
from embedlens.cluster.pseudo import pseudo_labels, representatives
from embedlens.cluster.results import (Assignment, cluster_summary, collapse_warning, load_predictions, map_columns,
                                       metrics_table, results_document, save_predictions)
from embedlens.cluster.settings import ClusterInputError, ClusterSettings
from embedlens.cluster.temi import (ClusterHeads, TemiSchedule, cosine_schedule, ensemble_weight, load_heads,
                                    neighbour_count, temi_head_losses, train_temi, uniform_loss)
from embedlens.cluster.temi_run import diagnose, head_outputs, run_temi
from embedlens.config import section_defaults
from embedlens.roles import SplitRoles, with_roles
from embedlens.knn import cosine_topk
from embedlens.plots import image_rows, scatter_maps
from embedlens.store import SplitFeatures

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
    """Settings for a few hundred images: narrow heads, small batches and a faster teacher, so that
    150 steps suffice (the defaults are 4,800 steps of 16 wide heads)."""
    values = dict(neighbours=5, heads=3, steps=150, batch_size=20, warmup_fraction=0.1, learning_rate=0.05,
                  min_learning_rate=0.01, teacher_momentum=0.9, hidden_dim=64, bottleneck_dim=32,
                  freeze_last_layer_fraction=0.05, checkpoint_every=1)
    return settings(**{**values, **changes}).temi


def test_settings_come_from_the_schema_with_the_official_commands_defaults():
    defaults = settings()
    temi = defaults.temi
    assert (temi.neighbours, temi.neighbours_class_fraction, temi.heads, temi.beta) == (50, 0.1, 16, 0.6)
    assert (temi.hidden_dim, temi.bottleneck_dim, temi.freeze_last_layer_fraction) == (512, 256, 0.01)
    assert (temi.teacher_momentum, temi.teacher_momentum_end) == (0.996, None)  # constant, as the official command
    assert (temi.steps, temi.batch_size, temi.warmup_fraction, temi.embed_norm) == (4800, 1024, 0.2, False)
    # the official 100 epochs of 48 full batches on CIFAR's 50,000 images, 20 of them warm-up, 1 frozen
    official = TemiSchedule.plan(50_000, temi)
    assert (official.epochs, official.steps_per_epoch, official.warmup_steps, official.frozen_steps) == (100, 48, 960, 48)
    assert (defaults.kmeans.n_init, defaults.kmeans.normalize) == (2, True)
    assert defaults.methods == ("temi", "kmeans") and defaults.train_split == "train" and defaults.test_split == "test"
    values = with_roles("cluster", section_defaults("cluster"), SplitRoles("train", "test"), 0.2)
    values["temi"]["epochs"] = 3
    with pytest.raises(ValueError, match=r"cluster.temi: unknown key\(s\) \['epochs'\]"):
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
    outputs = head_outputs(heads, features, temi, CPU, keep=[first.best_head])
    assert cluster_metrics(labels, outputs.clusters[0], 5)["acc"] > 0.9
    assert first.best_head == int(np.argmin(first.head_losses[-1]))
    assert first.history["epoch"].tolist() == list(range(1, 16))
    assert first.history["loss_best"].iloc[-1] < 0.5 * uniform_loss(5, 0.6) - 0.3  # far below the uniform loss
    assert diagnose(outputs.statistics, first.head_losses[-1], 5, 0.6) == []


def test_a_killed_training_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    features, labels = blobs(per_class=20)
    neighbours = cosine_topk(features, k=5, device="cpu").indices
    temi = dataclasses.replace(small(), steps=30, checkpoint_every=10)  # 5 steps per epoch: saved after epochs 2, 4, 6
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


def test_the_last_layer_stays_frozen_during_the_first_steps():
    features, _ = blobs(per_class=10)
    neighbours = cosine_topk(features, k=3, device="cpu").indices
    # 50 images in batches of 20: 2 steps per epoch; the last layer frozen for all 2 steps of the first run
    temi = dataclasses.replace(small(), steps=2, freeze_last_layer_fraction=1.0, teacher_momentum=0.0,
                               warmup_fraction=0.0)
    torch.manual_seed(0)
    start = ClusterHeads(16, 5, temi.heads, temi.hidden_dim, temi.bottleneck_dim).state_dict()
    assert torch.all(start["last_gain"] == 1)
    fit = train_temi(features, neighbours, 5, temi, seed=0, device=CPU)  # momentum 0: teacher = student
    torch.testing.assert_close(fit.teacher["last_direction"], start["last_direction"], rtol=0, atol=0)
    torch.testing.assert_close(fit.teacher["last_gain"], start["last_gain"], rtol=0, atol=0)
    assert not torch.equal(fit.teacher["hidden_weight"], start["hidden_weight"])
    later = train_temi(features, neighbours, 5, dataclasses.replace(temi, steps=4, freeze_last_layer_fraction=0.5),
                       seed=0, device=CPU)  # frozen for 2 of 4 steps
    assert not torch.equal(later.teacher["last_direction"], start["last_direction"])


def test_the_uniform_solution_and_collapse_are_detected():
    uniform = [{"head": h, "entropy": 0.999, "active_clusters": 1} for h in range(2)]
    warnings = diagnose(uniform, np.array([uniform_loss(10, 0.6)] * 2), 10, 0.6)
    assert len(warnings) == 1 and warnings[0].startswith("uniform solution")
    one_confident = [*uniform, {"head": 2, "entropy": 0.1, "active_clusters": 10}]
    assert diagnose(one_confident, np.array([-2.0] * 3), 10, 0.6) == []
    assert collapse_warning(3, 10, 0.5).startswith("collapse: the fit images fall into 3 of 10 clusters")
    assert collapse_warning(5, 10, 0.5) is None


def test_head_outputs_stream_what_the_full_probabilities_give():
    """Batch by batch (7 rows at a time), the entropies, active clusters and argmaxes equal those of
    every head's (heads, N, K) probabilities computed at once in float64."""
    features, _ = blobs(per_class=10)
    temi = small()
    torch.manual_seed(1)
    heads = ClusterHeads(16, 5, temi.heads, temi.hidden_dim, temi.bottleneck_dim)
    with torch.no_grad():
        logits = heads(torch.as_tensor(features)).double().numpy() / temi.teacher_temperature
    probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    entropy = -(probabilities * np.log(probabilities)).sum(axis=-1).mean(axis=1) / math.log(5)
    argmax = probabilities.argmax(axis=-1)
    streamed = head_outputs(heads, features, temi, CPU, batch_rows=7)
    np.testing.assert_array_equal(streamed.clusters, argmax)
    np.testing.assert_allclose([s["entropy"] for s in streamed.statistics], entropy, rtol=1e-5)
    assert [s["active_clusters"] for s in streamed.statistics] == [len(np.unique(a)) for a in argmax]
    best = head_outputs(heads, features, temi, CPU, keep=[2], batch_rows=7,
                        transform=lambda rows: rows * 2)  # the transform applies to every batch
    with torch.no_grad():
        doubled = heads(torch.as_tensor(features * 2))[2].argmax(dim=-1).numpy()
    np.testing.assert_array_equal(best.clusters, doubled[None])


def test_kmeans_at_scale_fits_a_sample_and_assigns_every_row_in_blocks(monkeypatch):
    import embedlens.kmeans as kmeans_module

    features, labels = blobs(per_class=60)  # 300 rows
    sampled = dataclasses.replace(settings().kmeans, fit_rows=100)
    monkeypatch.setattr(kmeans_module, "BLOCK_ROWS", 64)
    fit = cluster_kmeans(features, 5, sampled, seed=0)
    assert fit.fit_rows == 100 and len(fit.train_clusters) == 300
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distances = ((unit[:, None, :] - fit.model.cluster_centers_[None]) ** 2).sum(axis=-1)
    np.testing.assert_array_equal(fit.train_clusters, distances.argmin(axis=1))  # every row: its nearest centre
    assert cluster_metrics(labels, fit.train_clusters, 5)["acc"] > 0.95
    whole = cluster_kmeans(features, 5, settings().kmeans, seed=0)
    assert whole.fit_rows == 300
    np.testing.assert_array_equal(whole.train_clusters, whole.model.labels_)


def test_too_few_images_for_the_clusters_is_a_clear_error():
    features, _ = blobs(classes=2, per_class=2)
    with pytest.raises(ClusterInputError, match="4 images cannot be clustered into 9 clusters"):
        train_temi(features, np.zeros((4, 1), np.int64), 9, small(), seed=0, device=CPU)
    with pytest.raises(ValueError, match="4 images cannot be clustered into 9 clusters"):
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
    fit = {"seconds": 1.0, "device": "cpu", "heads": 2, "steps": 3, "epochs": 3, "steps_per_epoch": 1, "batch_size": 20,
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
    assert summary.headline["best_method"] == "temi" and not any("better than" in n for n in summary.notes)
    worse = {**results_document("kmeans", 4, {**collapsed, "test": collapsed["train"]}, {"seconds": 2.0, "device": "cpu"},
                                config), "map": "UMAP"}
    reversed_order = cluster_summary([worse, temi], config, dataset="d", backbone="b")  # k-means first, worse
    assert reversed_order.headline["best_method"] == "temi" and reversed_order.headline["method"] == "kmeans"
    assert "temi clusters this data better than kmeans: ACC 1.000 against" in " ".join(reversed_order.notes)
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
    short = dataclasses.replace(temi, steps=30, warmup_fraction=0.67, freeze_last_layer_fraction=0.33)  # 3 epochs
    fit = train_temi(features, neighbours, 5, short, seed=0, device=CPU,
                     warm_start=clusters)
    assigned = head_outputs(load_heads(fit.teacher, temi, CPU), features, temi, CPU, keep=[fit.best_head]).clusters[0]
    assert cluster_metrics(labels, assigned, 5)["acc"] > 0.9


def planted(classes: int = 8, per_class: int = 60, dim: int = 32, seed: int = 0):
    """Well-separated Gaussian clusters: centres drawn from N(0, I), images at std 0.25 around them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + 0.25 * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_every_head_is_weighted_by_the_teachers_agreement_averaged_over_all_heads():
    # one pair (x, x'), two heads, K = 2; teacher probabilities q_t^h(.|x), q_t^h(.|x')
    q = np.array([[[0.9, 0.1], [0.8, 0.2]],    # head 0: agreement 0.9*0.8 + 0.1*0.2 = 0.74
                  [[0.5, 0.5], [0.1, 0.9]]])   # head 1: agreement 0.5*0.1 + 0.5*0.9 = 0.50
    ensemble = (0.74 + 0.50) / 2                # 0.62, the weight of the pair in both heads' losses
    teacher_log = torch.tensor(np.log(q), dtype=torch.float32)
    assert ensemble_weight(teacher_log).tolist() == pytest.approx([ensemble])

    temi = settings().temi  # temperatures 0.1: logits 0.1 * log q give back q
    logits = 0.1 * teacher_log
    prior = torch.tensor([[0.5, 0.5], [0.3, 0.7]])
    beta = temi.beta
    expected = []
    for head in range(2):
        x, partner = q[head]
        p = prior[head].numpy().astype(np.float64)
        forward = np.log(np.sum((x * partner) ** beta / p))   # q_s(x) with q_t(x'), student = teacher here
        backward = np.log(np.sum((partner * x) ** beta / p))
        expected.append(-ensemble * (forward + backward) / 2)
    assert temi_head_losses(logits, logits, prior, temi).tolist() == pytest.approx(expected, rel=1e-5)
    per_head = [-w * np.log(np.sum((q[h, 0] * q[h, 1]) ** beta / prior[h].numpy())) for h, w in enumerate([0.74, 0.5])]
    assert temi_head_losses(logits, logits, prior, temi).tolist() != pytest.approx(per_head, rel=1e-3)


def test_the_teacher_is_a_constant_momentum_average_of_the_student(tmp_path):
    features, _ = blobs(per_class=4)  # 20 images in one batch: one step per epoch
    neighbours = cosine_topk(features, k=3, device="cpu").indices
    temi = dataclasses.replace(small(), steps=2, batch_size=20, warmup_fraction=0.0, freeze_last_layer_fraction=0.0,
                               teacher_momentum=settings().temi.teacher_momentum, checkpoint_every=1)
    assert temi.teacher_momentum == 0.996 and temi.teacher_momentum_end is None
    checkpoint = tmp_path / "train.pt"

    def keep_first_step(row):
        if row["step"] == 1:
            (tmp_path / "step1.pt").write_bytes(checkpoint.read_bytes())

    fit = train_temi(features, neighbours, 5, temi, seed=0, device=CPU, checkpoint=checkpoint, progress=keep_first_step)
    torch.manual_seed(0)
    student0 = ClusterHeads(16, 5, temi.heads, temi.hidden_dim, temi.bottleneck_dim).state_dict()
    first, second = (torch.load(path, weights_only=False) for path in (tmp_path / "step1.pt", checkpoint))
    m = 0.996
    for key in student0:
        teacher1 = m * student0[key] + (1 - m) * first["student"][key]          # teacher_0 = student_0
        teacher2 = m * teacher1 + (1 - m) * second["student"][key]
        torch.testing.assert_close(first["teacher"][key], teacher1, rtol=0, atol=1e-7)
        torch.testing.assert_close(fit.teacher[key], teacher2, rtol=0, atol=1e-7)
    assert fit.history["teacher_momentum"].tolist() == [m, m]
    # the ramp is a setting: over 2 steps DINO's cosine from 0.996 towards 1 gives 0.996, then 0.998; the
    # student is the same (its second step sees the same teacher), only the teacher's second average differs
    ramp = train_temi(features, neighbours, 5, dataclasses.replace(temi, teacher_momentum_end=1.0), seed=0, device=CPU)
    assert ramp.history["teacher_momentum"].tolist() == pytest.approx([m, 0.998])
    for key in student0:
        expected = 0.998 * first["teacher"][key] + 0.002 * second["student"][key]
        torch.testing.assert_close(ramp.teacher[key], expected, rtol=0, atol=1e-7)


def test_the_schedule_is_in_steps_and_the_epochs_follow_from_the_split():
    temi = settings().temi
    for rows, batch, per_epoch, epochs in ((50_000, 1024, 48, 100), (20_000, 1024, 19, 253), (500, 500, 1, 4800)):
        schedule = TemiSchedule.plan(rows, temi)
        assert (schedule.steps, schedule.batch_size, schedule.steps_per_epoch, schedule.epochs) == (
            4800, batch, per_epoch, epochs)
        assert (schedule.warmup_steps, schedule.frozen_steps) == (960, 48)  # the same share of the steps everywhere
    rates, momenta = schedule.learning_rates(temi), schedule.momenta(temi)
    assert len(rates) == len(momenta) == 4800 and rates[959] == pytest.approx(1e-4 * 500 / 256)
    assert np.all(momenta == 0.996)
    # 7 steps on 100 images in batches of 20: one epoch of 5 steps and one that stops after 2
    features, _ = blobs(per_class=20)
    fit = train_temi(features, cosine_topk(features, k=3, device="cpu").indices, 5,
                     dataclasses.replace(small(), steps=7), seed=0, device=CPU)
    assert fit.history["step"].tolist() == [5, 7] and (fit.schedule.epochs, fit.schedule.steps_per_epoch) == (2, 5)


def test_the_neighbour_count_is_scaled_down_to_a_share_of_the_class_size():
    temi = settings().temi  # k = 50, at most 0.1 of train images / K
    assert neighbour_count(temi, 50_000, 100) == (50, [])  # 10% of a 500-image CIFAR-100 class
    k, notes = neighbour_count(temi, 20_000, 100)
    assert k == 20 and "cluster.temi.neighbours_class_fraction = 0.1" in notes[0] and "200" in notes[0]
    assert neighbour_count(temi, 300, 100)[0] == 1  # at least one
    assert neighbour_count(dataclasses.replace(temi, neighbours_class_fraction=None), 20_000, 100) == (50, [])
    k, notes = neighbour_count(dataclasses.replace(temi, neighbours_class_fraction=None), 30, 2)
    assert k == 29 and notes == ["cluster.temi.neighbours = 50 lowered to 29: only 30 train images"]


def test_temi_finds_planted_clusters_and_leaves_the_uniform_solution():
    features, labels = planted()  # 8 clusters of 60 images: chance ACC 1/8
    train = SplitFeatures(features, labels, np.arange(len(labels)))
    temi = small(heads=4, batch_size=60, steps=300, neighbours=50, learning_rate=0.01, min_learning_rate=0.01,
                 teacher_momentum=0.99, warmup_fraction=0.2, freeze_last_layer_fraction=0.01)
    run = run_temi(train, train, 8, temi, settings().kmeans, 0, CPU)
    assert run.neighbours == 6  # 50 lowered to 10% of the 60-image clusters
    assert cluster_metrics(labels, run.train_clusters, 8)["acc"] >= 0.75  # six times chance
    assert max(cluster_metrics(labels, clusters, 8)["acc"] for clusters in run.test_head_clusters) >= 0.9
    assert run.warnings == [] and max(s["entropy"] for s in run.statistics) < 0.5  # far from uniform (1.0)
    assert run.fit.history["loss_best"].iloc[-1] < 5 * uniform_loss(8, temi.beta)
    document = run.document(temi)
    assert (document["neighbours"], document["steps"], document["epochs"], document["batch_size"]) == (6, 300, 38, 60)


def test_a_resumed_run_reads_its_neighbours_and_warm_start_and_says_so_when_it_resumes(tmp_path, monkeypatch, caplog):
    import embedlens.cluster.temi as temi_module
    import embedlens.cluster.temi_run as run_module

    features, labels = blobs(per_class=20)  # 100 images, batches of 20: 5 steps per epoch
    train = SplitFeatures(features, labels, np.arange(len(labels)))
    temi = dataclasses.replace(small(), steps=30, checkpoint_every=10, warm_start="kmeans")
    whole = run_temi(train, train, 5, temi, settings().kmeans, 3, CPU)
    save = temi_module.save_checkpoint

    def killed_after_the_first_training_checkpoint(path, *args, **kwargs):
        save(path, *args, **kwargs)
        if Path(path).name == "train.pt":
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(temi_module, "save_checkpoint", killed_after_the_first_training_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_temi(train, train, 5, temi, settings().kmeans, 3, CPU, checkpoints=tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["prepared.pt", "train.pt"]

    def recomputed(*args, **kwargs):
        raise AssertionError("a resumed run recomputed its neighbours or warm start")

    monkeypatch.setattr(temi_module, "save_checkpoint", save)
    monkeypatch.setattr(run_module, "cosine_topk", recomputed)
    monkeypatch.setattr(run_module, "cluster_kmeans", recomputed)
    with caplog.at_level(logging.DEBUG, logger="embedlens.cluster.temi"):  # the per-epoch lines are DEBUG
        resumed = run_temi(train, train, 5, temi, settings().kmeans, 3, CPU, checkpoints=tmp_path)
    assert resumed.fit.resumed_at_epoch == 2
    messages = [record.getMessage() for record in caplog.records]
    said = next(i for i, message in enumerate(messages) if message.startswith("resumed from epoch 2 of 6 (step 10"))
    assert said < next(i for i, message in enumerate(messages) if message.startswith("epoch 3, step 15"))
    np.testing.assert_array_equal(resumed.train_clusters, whole.train_clusters)
    for key in whole.fit.teacher:
        torch.testing.assert_close(resumed.fit.teacher[key], whole.fit.teacher[key], rtol=0, atol=0)


def test_embed_norm_standardises_what_the_heads_see_with_the_train_statistics():
    features, labels = blobs(per_class=20)
    train = SplitFeatures(features, labels, np.arange(len(labels)))
    test = SplitFeatures(features[::3] * 2, labels[::3], np.arange(0, len(labels), 3))
    temi = dataclasses.replace(small(), steps=20, embed_norm=True)
    run = run_temi(train, test, 5, temi, settings().kmeans, 0, CPU)
    np.testing.assert_allclose(run.standardizer.mean, features.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(run.standardizer.std, features.std(axis=0), rtol=1e-4)
    standardised = (features - features.mean(axis=0)) / features.std(axis=0)
    assert np.abs(standardised.mean(axis=0)).max() < 1e-5
    neighbours = cosine_topk(features, k=run.neighbours, device="cpu").indices  # mined on the raw embeddings
    direct = train_temi(standardised, neighbours, 5, temi, seed=0, device=CPU)
    for key in direct.teacher:
        torch.testing.assert_close(run.fit.teacher[key], direct.teacher[key], rtol=1e-4, atol=1e-5)
    heads = load_heads(run.fit.teacher, temi, CPU)
    test_seen = (features[::3] * 2 - features.mean(axis=0)) / features.std(axis=0)  # the train split's statistics
    with torch.no_grad():
        expected = heads(torch.as_tensor(test_seen, dtype=torch.float32)).argmax(dim=-1).numpy()
    np.testing.assert_array_equal(run.test_head_clusters, expected)
