"""The novelty stage's library: the fit/held-out split, the elbow, the three scores and their flags, the
saved model, the held-out-class quality measurement and the stage's summary."""

from __future__ import annotations

from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest

import embedlens.novelty.model as novelty_model
import embedlens.store as store_module
from embedlens.config import section_defaults
from embedlens.novelty.fit import elbow_k, fit_novelty, k_range, pca_map, split_fit_holdout
from embedlens.novelty.model import SCORE_COLUMNS, NoveltyModel, fit_model, own_knn_distances
from embedlens.novelty.quality import (detection_quality, fpr_at_tpr, measure_quality, quality_document,
                                       summarize_quality, unseen_class_quality, unseen_count)
from embedlens.novelty.results import (check_model_matches, figure_images, fit_document, map_columns, most_novel_images,
                                       read_images)
from embedlens.novelty.settings import NoveltyInputError, NoveltySettings
from embedlens.novelty.summary import novelty_summary
from embedlens.store import FeatureStore, SplitFeatures, write_store


def novelty_settings(quality: dict | None = None, **changes) -> NoveltySettings:
    """The schema's defaults with ``changes`` (``quality``: changes of the ``novelty.quality`` section)."""
    section = section_defaults("novelty")
    return NoveltySettings.from_config({**section, **changes, "quality": {**section["quality"], **(quality or {})}})


def blobs(classes: int = 5, per_class: int = 40, dim: int = 16, spread: float = 0.15, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Well separated clusters: one random unit direction per class plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def brute_force_knn_distance(queries: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    unit_q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return 1.0 - np.sort(unit_q @ unit_r.T, axis=1)[:, ::-1][:, k - 1]


# -- split and k ---------------------------------------------------------------------------------------


def test_the_split_is_seeded_disjoint_and_covers_every_row():
    fit, held_out = split_fit_holdout(100, 0.8, seed=3)
    assert len(fit) == 80 and len(held_out) == 20
    assert sorted(np.concatenate([fit, held_out]).tolist()) == list(range(100))
    again, _ = split_fit_holdout(100, 0.8, seed=3)
    other, _ = split_fit_holdout(100, 0.8, seed=4)
    assert np.array_equal(fit, again) and not np.array_equal(fit, other)


def test_fewer_than_two_images_cannot_be_split():
    with pytest.raises(NoveltyInputError, match="1 image"):
        split_fit_holdout(1, 0.8, seed=0)


def test_the_elbow_of_a_curve_that_bends_once():
    ks = list(range(2, 13))
    inertias = [10.0 - 2.0 * (k - 2) if k <= 6 else 2.0 - 0.05 * (k - 6) for k in ks]  # steep, then flat
    assert elbow_k(ks, inertias) == 6


def test_without_a_knee_the_farthest_point_below_the_chord_is_taken_and_two_points_give_the_first():
    ks = np.arange(2, 21)
    inertias = 100.0 / ks
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    y = (inertias - inertias[-1]) / (inertias[0] - inertias[-1])
    farthest = int(ks[np.argmax((1.0 - x) - y)])  # the chord runs from (0, 1) to (1, 0)
    assert elbow_k(ks, inertias, sensitivity=1000.0) == farthest  # no point passes so strict a threshold
    assert elbow_k([3, 4], [5.0, 4.0]) == 3


def test_k_search_finds_the_number_of_well_separated_clusters():
    features, _ = blobs(classes=5)
    fit = fit_novelty(features, novelty_settings(k_max=12))
    assert fit.searched and fit.model.k == 5
    assert fit.curve["k"].tolist() == list(range(2, 13))
    assert fit.curve["inertia"].is_monotonic_decreasing


def test_a_fixed_k_skips_the_search_and_keeps_its_own_point():
    features, _ = blobs(classes=5)
    fit = fit_novelty(features, novelty_settings(k=3))
    assert not fit.searched and fit.model.k == 3
    assert fit.curve["k"].tolist() == [3] and fit.curve["inertia"].iloc[0] > 0


def test_the_k_range_shrinks_to_the_images_and_says_so():
    features, _ = blobs(classes=2, per_class=4)  # 8 images: 6 fit, so k <= 5
    fit = fit_novelty(features, novelty_settings(k_max=20))
    assert fit.curve["k"].max() == 5
    assert any("searched up to 5" in note for note in fit.notes)
    assert any("neighbour 5" in note for note in fit.notes)  # knn_k 10 lowered to the 5 other fit images
    with pytest.raises(NoveltyInputError, match="novelty.k_min=4"):
        k_range(novelty_settings(k_min=4), fit_rows=4)


def test_a_fixed_k_above_the_fit_images_is_refused_with_the_setting_named():
    features, _ = blobs(classes=2, per_class=3)
    with pytest.raises(NoveltyInputError, match=r"novelty.k=8 but the fit part has only 4 images"):
        fit_novelty(features, novelty_settings(k=8))


# -- the model and its scores --------------------------------------------------------------------------


def test_scores_follow_their_definitions():
    features, labels = blobs(classes=3, per_class=30)
    settings = novelty_settings(normalize=False, knn_k=4)
    model = fit_model(features, 3, settings)
    cluster, distance = model.assign(features)
    # statistics per cluster from the fit rows
    for c in range(3):
        members = distance[cluster == c]
        assert model.cluster_mean[c] == pytest.approx(members.mean())
        assert model.cluster_std[c] == pytest.approx(members.std())
    spacing = np.mean([np.linalg.norm(model.centroids[a] - model.centroids[b]) for a in range(3) for b in range(a + 1, 3)])
    assert model.centroid_spacing == pytest.approx(spacing)
    # without a surprise_threshold setting, the flag_quantile of the fit images' own ratios
    assert model.surprise_threshold == pytest.approx(np.quantile(distance / spacing, 0.95))
    assert fit_model(features, 3, novelty_settings(normalize=False, surprise_threshold=0.7)).surprise_threshold == 0.7
    queries = features[:7] + 0.3
    scores = model.score(queries)
    assert list(scores.columns) == SCORE_COLUMNS
    q_cluster = np.argmin(np.linalg.norm(queries[:, None] - model.centroids[None], axis=2), axis=1)
    q_distance = np.linalg.norm(queries - model.centroids[q_cluster], axis=1)
    assert scores["cluster"].tolist() == q_cluster.tolist()
    np.testing.assert_allclose(scores["centroid_distance"], q_distance, rtol=1e-5)
    np.testing.assert_allclose(scores["novelty_score"],
                               (q_distance - model.cluster_mean[q_cluster]) / model.cluster_std[q_cluster], rtol=1e-4)
    np.testing.assert_allclose(scores["surprise_score"], q_distance / spacing, rtol=1e-5)
    np.testing.assert_allclose(scores["knn_distance"], brute_force_knn_distance(queries, features, 4), atol=1e-5)
    assert (scores["novel"] == (scores["novelty_score"] > settings.novelty_threshold)).all()
    assert (scores["surprising"] == (scores["surprise_score"] > model.surprise_threshold)).all()
    assert (scores["knn_novel"] == (scores["knn_distance"] > model.knn_threshold)).all()


def test_a_far_image_is_flagged_by_every_score_and_an_ordinary_one_by_none():
    features, _ = blobs(classes=4, per_class=50)
    model = fit_model(features, 4, novelty_settings())
    far = -features.sum(axis=0, keepdims=True)  # pointing away from all four clusters
    ordinary = features[:1] + 0.01
    scores = model.score(np.concatenate([far, ordinary]))
    assert scores.loc[0, ["novel", "surprising", "knn_novel"]].all()
    assert not scores.loc[1, ["novel", "surprising", "knn_novel"]].any()


def test_the_knn_threshold_is_the_quantile_of_the_fit_images_own_distances_without_themselves():
    features, _ = blobs(classes=3, per_class=40)
    model = fit_model(features, 3, novelty_settings(knn_k=5, flag_quantile=0.9))
    own = own_knn_distances(model, seed=0, sample=10_000)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    expected = 1.0 - np.sort(similarity, axis=1)[:, ::-1][:, 4]
    np.testing.assert_allclose(own, expected, atol=1e-5)
    assert model.knn_threshold == pytest.approx(np.quantile(expected, 0.9), abs=1e-5)
    assert np.mean(expected > model.knn_threshold) == pytest.approx(0.1, abs=0.01)


def test_a_cluster_without_spread_borrows_the_overall_spread():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [0.0, 1.1], [-0.1, 1.0]])
    model = fit_model(features, 2, novelty_settings(normalize=False, knn_k=1))
    assert np.isfinite(model.cluster_std).all() and (model.cluster_std > 0).all()


def test_no_images_give_an_empty_scores_table():
    features, _ = blobs(classes=3)
    scores = fit_model(features, 3, novelty_settings()).score(np.zeros((0, features.shape[1])))
    assert list(scores.columns) == SCORE_COLUMNS and scores.empty


def test_a_saved_model_scores_exactly_as_the_fitted_one(tmp_path):
    features, _ = blobs(classes=4)
    model = fit_model(features, 4, novelty_settings(), info={"dataset": "shapes", "recipe": {"backbone": {"name": "b"}}})
    model.save(tmp_path / "model.h5")
    loaded = NoveltyModel.load(tmp_path / "model.h5")
    queries = features[::7] * 1.1
    pd.testing.assert_frame_equal(loaded.score(queries), model.score(queries))
    assert loaded.info == model.info and loaded.knn_threshold == model.knn_threshold
    assert not list(tmp_path.glob(".*.tmp"))


def test_loading_a_file_that_is_not_a_model_names_it(tmp_path):
    with h5py.File(tmp_path / "features.h5", "w") as handle:
        handle["x"] = [1]
    with pytest.raises(ValueError, match=r"features.h5: not a novelty model"):
        NoveltyModel.load(tmp_path / "features.h5")


def test_a_store_of_another_backbone_is_refused_for_scoring():
    features, _ = blobs(classes=3)
    recipe = {"backbone": {"name": "lite0", "model": "tf_efficientnet_lite0"}, "extract": {"amp": True}}
    model = fit_model(features, 3, novelty_settings(), info={"dataset": "photos", "recipe": recipe})
    same = SimpleNamespace(path="new.h5", dim=features.shape[1], recipe={**recipe, "dataset": "tomorrow"})
    check_model_matches(model, same)
    other = SimpleNamespace(path="new.h5", dim=features.shape[1],
                            recipe={**recipe, "backbone": {"name": "lite0", "model": "resnet10t"}})
    with pytest.raises(NoveltyInputError, match=r"(?s)new.h5 cannot be scored.*'photos'.*backbone.model: \"resnet10t\" "
                                                r"here, \"tf_efficientnet_lite0\" expected"):
        check_model_matches(model, other)


# -- measured quality ----------------------------------------------------------------------------------


def test_fpr_at_95_tpr_and_auroc_on_a_hand_made_example():
    is_novel = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.6, 0.7])
    # catching all four novel images needs threshold 0.4, which also passes the ordinary 0.9: FPR 1/4
    assert fpr_at_tpr(is_novel, scores) == 0.25
    quality = detection_quality(is_novel, pd.DataFrame({"s": scores}), names=["s"])
    assert quality["s"]["auroc"] == pytest.approx(12 / 16)
    with pytest.raises(NoveltyInputError, match="both novel and ordinary"):
        detection_quality(np.ones(3, bool), pd.DataFrame({"s": [1.0, 2.0, 3.0]}), names=["s"])


def test_unseen_class_quality_detects_far_classes_and_is_seeded():
    features, labels = blobs(classes=10, per_class=30, spread=0.1)
    settings = novelty_settings(quality={"unseen_fraction": 0.2, "draws": 3}, knn_k=5)
    per_draw = unseen_class_quality(features, labels, settings,
                                    class_names=[f"c{i}" for i in range(10)])
    assert len(per_draw) == 3 * 3 and set(per_draw["score"]) == {"novelty_score", "surprise_score", "knn_distance"}
    assert (per_draw["unseen_images"] == 2 * 30).all()
    assert (per_draw["seen_images"] == 8 * 30 * 0.2).all()  # the held-out part of the seen classes
    assert per_draw["unseen_classes"].str.match(r"^c\d, c\d$").all()
    assert per_draw.groupby("draw")["unseen_classes"].first().nunique() > 1
    knn = per_draw[per_draw["score"] == "knn_distance"]
    assert (knn["auroc"] > 0.99).all() and (knn["fpr_at_95_tpr"] < 0.05).all()
    pd.testing.assert_frame_equal(per_draw, unseen_class_quality(features, labels, settings,
                                                                 [f"c{i}" for i in range(10)]))
    table = summarize_quality(per_draw)
    assert table["draws"].tolist() == [3] * 3 and table["auroc_mean"].is_monotonic_decreasing
    assert table.set_index("score").loc["knn_distance", "auroc_mean"] == pytest.approx(knn["auroc"].mean())
    assert table.set_index("score").loc["knn_distance", "auroc_std"] == pytest.approx(knn["auroc"].std())


def test_unseen_counts_and_the_reasons_not_to_measure():
    assert unseen_count(100, 0.1) == 10 and unseen_count(4, 0.1) == 1 and unseen_count(3, 0.9) == 1
    with pytest.raises(NoveltyInputError, match="at least 3"):
        unseen_count(2, 0.1)
    assert measure_quality(np.array([0, 1, 2]), novelty_settings()) is None
    assert "1 class(es)" in measure_quality(np.array([-1, -1, 0]), novelty_settings())
    assert "draws is 0" in measure_quality(np.array([0, 1, 2]), novelty_settings(quality={"draws": 0}))


# -- settings and summary ------------------------------------------------------------------------------


def test_settings_come_from_the_validated_config_section_and_refuse_unknown_keys():
    from embedlens.config import validate_config

    config = validate_config({"datasets": [{"name": "a", "kind": "synthetic"}],
                              "backbones": [{"name": "b", "kind": "timm", "model": "m"}],
                              "novelty": {"k": 7, "quality": {"draws": 2}, "splits": ["test"],
                                          "calibration_sample": 500}})
    settings = NoveltySettings.from_config(config["novelty"])  # enabled and score_datasets: the workflow's
    assert settings.k == 7 and settings.quality.draws == 2 and settings.splits == ("test",)
    assert settings.calibration_sample == 500 and settings.quality.unseen_fraction == 0.1
    assert settings.flag_quantile == section_defaults("novelty")["flag_quantile"]
    with pytest.raises(ValueError, match=r"novelty: unknown key\(s\) \['k_maxx'\], missing key\(s\) \[\]"):
        NoveltySettings.from_config({**section_defaults("novelty"), "k_maxx": 3})
    with pytest.raises(ValueError, match=r"novelty.quality: unknown key\(s\) \['drawz'\]"):
        NoveltySettings.from_config({**section_defaults("novelty"), "quality": {"draws": 1, "unseen_fraction": 0.1,
                                                                                "drawz": 1}})
    section = section_defaults("novelty")
    del section["knn_k"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['knn_k'\]"):
        NoveltySettings.from_config(section)


def test_the_knn_threshold_is_calibrated_on_a_seeded_sample_of_calibration_sample_fit_images():
    features, _ = blobs(classes=3, per_class=40)
    model = fit_model(features, 3, novelty_settings(calibration_sample=30))
    rows = np.sort(np.random.default_rng(0).choice(120, 30, replace=False))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit[rows] @ unit.T
    similarity[np.arange(30), rows] = -np.inf  # each without itself
    expected = 1.0 - np.sort(similarity, axis=1)[:, ::-1][:, 9]
    assert model.knn_threshold == pytest.approx(np.quantile(expected, 0.95), abs=1e-5)


def test_each_quality_draw_chooses_k_on_its_seen_classes_alone():
    # Six classes, each one tight blob: the elbow over every class finds 6 clusters; a draw that holds two
    # classes out as unseen must find the 4 of its seen classes, whichever they are.
    features, labels = blobs(classes=6, per_class=40, spread=0.03, seed=1)
    assert fit_novelty(features, novelty_settings(k_max=10)).model.k == 6
    settings = novelty_settings(k_max=10, quality={"unseen_fraction": 2 / 6, "draws": 3})
    per_draw = unseen_class_quality(features, labels, settings)
    assert per_draw["unseen_classes"].str.count(",").eq(1).all()  # two unseen classes per draw
    assert (per_draw["k"] == 4).all()
    document = quality_document(per_draw, summarize_quality(per_draw), labels, settings)
    assert document["k_per_draw"] == [4, 4, 4] and document["k_searched"]
    fixed = unseen_class_quality(features, labels, novelty_settings(k=3, quality={"draws": 2}))
    assert (fixed["k"] == 3).all()  # a fixed novelty.k is used as it is


def test_an_unreadable_image_is_drawn_blank_logged_with_its_reason_and_counted(tmp_path):
    from PIL import Image

    from embedlens.datasets import open_dataset

    (tmp_path / "cats").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "cats" / "good.png")
    (tmp_path / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    dataset = open_dataset({"name": "pets", "kind": "folder", "root": str(tmp_path)})
    table = pd.DataFrame({"split": ["train", "train"], "index_in_split": [0, 1],
                          "source": ["cats/broken.png", "cats/good.png"],
                          "path": [str(tmp_path / "cats/broken.png"), str(tmp_path / "cats/good.png")],
                          "label": [0, 0], "class_name": ["cats", "cats"], "knn_distance": [0.5, 0.1],
                          "novelty_score": [3.0, 0.0]})
    logged = []
    reader = figure_images(dataset, "novel.png", logged.append)
    images, captions = most_novel_images(reader, table, 2)
    assert images[0] is None and images[1].shape == (8, 8, 3) and captions[0].startswith("broken.png")
    assert list(reader.unreadable) == [f"train #0 ({tmp_path / 'cats/broken.png'})"]
    assert len(logged) == 1 and "broken.png" in logged[0] and "novel.png" in logged[0]
    assert logged[0].endswith(reader.unreadable[f"train #0 ({tmp_path / 'cats/broken.png'})"])
    features, _ = blobs(classes=3)
    settings = novelty_settings(k=3, quality={"draws": 0})
    document = fit_document(fit_novelty(features, settings), settings, unreadable=0, blank_images=reader.unreadable)
    summary = novelty_summary(document, {"measured": False, "reason": "novelty.quality.draws is 0"}, [],
                              dataset="pets", backbone="tiny")
    assert any(note.startswith("1 image(s) of novel.png could not be read and are drawn blank (train #0")
               for note in summary.notes)


def test_the_summary_reports_counts_quality_and_scored_datasets(tmp_path):
    features, labels = blobs(classes=5)
    settings = novelty_settings(k_max=8, quality={"draws": 2})
    fit = fit_novelty(features, settings)
    document = fit_document(fit, settings, unreadable=2, blank_images={})
    assert document["flags"]["images"] == len(fit.held_out_rows) == 40
    per_draw = unseen_class_quality(features, labels, settings)
    quality = quality_document(per_draw, summarize_quality(per_draw), labels, settings)
    scored = [{"dataset": "tomorrow", "flags": {"images": 5, "novel": 1, "surprising": 0, "knn_novel": 2},
               "unreadable": 1, "blank_images": {}}]
    summary = novelty_summary(document, quality, scored, dataset="shapes", backbone="tiny")
    summary.write(tmp_path / "summary.json")
    assert summary.headline["k"] == 5 and summary.headline["unreadable"] == 2
    knn = next(row for row in quality["scores"] if row["score"] == "knn_distance")
    assert summary.headline["auroc"] == pytest.approx(knn["auroc_mean"], abs=1e-4)
    paths = [artifact.path for artifact in summary.tables + summary.figures]
    assert {"scores.csv", "quality.csv", "elbow.png", "pca.png", "clusters.png", "novel.png",
            "score/tomorrow/scores.csv", "score/tomorrow/novel.png"} <= set(paths)
    assert any("2 images of the dataset could not be read" in note for note in summary.notes)
    assert any("tomorrow: 5 images scored, 2 flagged by kNN" in note and "1 could not be read" in note
               for note in summary.notes)
    unmeasured = novelty_summary(document, {"measured": False, "reason": "novelty.quality.draws is 0"}, [],
                                 dataset="shapes", backbone="tiny")
    assert "quality.csv" not in [a.path for a in unmeasured.tables]
    assert any("not measured: novelty.quality.draws is 0" in note for note in unmeasured.notes)
    assert "trusted" not in summary.headline  # 160 fit images, 32 per cluster


def test_a_fit_too_small_to_trust_says_so_first():
    features, _ = blobs(classes=3, per_class=15)
    settings = novelty_settings(k=3, quality={"draws": 0})
    document = fit_document(fit_novelty(features, settings), settings, unreadable=0, blank_images={})
    summary = novelty_summary(document, {"measured": False, "reason": "novelty.quality.draws is 0"}, [],
                              dataset="few", backbone="tiny")
    assert summary.headline["trusted"] == "no"
    assert summary.notes[0].startswith("Too small to trust: 36 fit images for k = 3 clusters, fewer than 30 per cluster")


def test_map_columns_give_every_image_its_cluster_and_held_out_images_their_knn_distance():
    features, _ = blobs(classes=3, per_class=20)
    fit = fit_novelty(features, novelty_settings(k=3))
    rows = pd.DataFrame({"split": ["train"] * 60, "index_in_split": np.arange(60) * 2})
    table = map_columns(rows, fit, features)
    assert table["index_in_split"].tolist() == rows["index_in_split"].tolist()
    assert table["novelty cluster"].tolist() == [f"cluster {c}" for c in fit.model.assign(features)[0]]
    distances = table["novelty kNN distance"]
    assert distances.isna().sum() == len(fit.fit_rows)
    np.testing.assert_allclose(distances.iloc[fit.held_out_rows], fit.scores["knn_distance"])


# -- at scale: streamed (blocks, samples) against an explicit in-memory float64 computation -------------


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(novelty_model, "BLOCK_ROWS", 7)


def unit_rows(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def explicit_nearest(prepared: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and distance from the whole float64 distance matrix."""
    distances = np.linalg.norm(prepared[:, None] - np.asarray(centroids, np.float64)[None], axis=2)
    return distances.argmin(axis=1), distances.min(axis=1)


def test_the_centres_come_from_a_seeded_sample_and_the_statistics_and_scores_from_every_row_in_blocks(small_blocks):
    from sklearn.cluster import KMeans

    features, _ = blobs(classes=4, per_class=30, dim=8)
    settings = novelty_settings(fit_rows=50, knn_k=3)
    model = fit_model(features, 4, settings)
    sample = np.sort(np.random.default_rng(settings.seed).choice(120, 50, replace=False))
    unit = unit_rows(features)
    centres = KMeans(4, n_init=settings.n_init, random_state=settings.seed).fit(unit[sample].astype(np.float32))
    np.testing.assert_allclose(model.centroids, centres.cluster_centers_, rtol=1e-5, atol=1e-6)
    cluster, distance = explicit_nearest(unit, model.centroids)  # every fit row, not only the sample
    for c in range(4):
        assert model.cluster_mean[c] == pytest.approx(distance[cluster == c].mean(), rel=1e-5)
        assert model.cluster_std[c] == pytest.approx(distance[cluster == c].std(), rel=1e-4)
    assert model.surprise_threshold == pytest.approx(np.quantile(distance / model.centroid_spacing, 0.95), rel=1e-5)
    queries = np.concatenate([features, blobs(classes=2, per_class=10, dim=8, seed=3)[0]])
    rows = np.array([125, 3, 139, 60, 0, 131, 77, 128, 119, 124, 130, 2, 5, 133, 50, 110])  # 3 blocks of 7
    scores = model.score(queries, rows)
    q_cluster, q_distance = explicit_nearest(unit_rows(queries[rows]), model.centroids)
    assert scores["cluster"].tolist() == q_cluster.tolist()
    np.testing.assert_allclose(scores["centroid_distance"], q_distance, rtol=1e-5)
    np.testing.assert_allclose(scores["novelty_score"], (q_distance - model.cluster_mean[q_cluster])
                               / model.cluster_std[q_cluster], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores["knn_distance"], brute_force_knn_distance(queries[rows], features, 3), atol=1e-5)
    pd.testing.assert_frame_equal(scores, model.score(queries[rows]))


def test_map_columns_and_the_pca_map_match_the_in_memory_float64_computation(small_blocks):
    features, _ = blobs(classes=3, per_class=20, dim=6)
    fit = fit_novelty(features, novelty_settings(k=3))
    rows = pd.DataFrame({"split": ["train"] * 60, "index_in_split": np.arange(60)})
    cluster, _ = explicit_nearest(unit_rows(features), fit.model.centroids)
    assert map_columns(rows, fit, features)["novelty cluster"].tolist() == [f"cluster {c}" for c in cluster]
    # PCA of a seeded sample of the fit rows (only the sample is prepared), by SVD in float64
    xy, clusters, centroid_xy, explained = pca_map(fit.model, points=20, seed=4)
    sample = unit_rows(features[fit.fit_rows][np.sort(np.random.default_rng(4).choice(len(fit.fit_rows), 20,
                                                                                       replace=False))])
    mean = sample.mean(axis=0)
    _, singular, axes = np.linalg.svd(sample - mean, full_matrices=False)
    expected = (sample - mean) @ axes[:2].T
    signs = np.sign((xy * expected).sum(axis=0))  # each axis is defined up to its sign
    np.testing.assert_allclose(xy * signs, expected, atol=1e-5)
    np.testing.assert_allclose(centroid_xy * signs, (fit.model.centroids - mean) @ axes[:2].T, atol=1e-5)
    np.testing.assert_allclose(explained, (singular ** 2 / (singular ** 2).sum())[:2], rtol=1e-4)
    assert clusters.tolist() == explicit_nearest(sample, fit.model.centroids)[0].tolist()


def test_the_images_are_read_chunk_by_chunk_into_one_float32_array(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "chunk_rows_for", lambda dim: 4)
    rng = np.random.default_rng(0)
    splits = {"train": SplitFeatures(rng.normal(size=(11, 3)).astype(np.float32), np.arange(11) % 3, np.arange(11)),
              "test": SplitFeatures(rng.normal(size=(6, 3)).astype(np.float32), np.arange(6) % 3, np.arange(6) * 2)}
    write_store(tmp_path / "store.h5", splits, {"dataset": "toy"})
    manifest = pd.concat([pd.DataFrame({"split": name, "index_in_split": data.index, "label": data.labels,
                                        "class_name": "c", "source": [f"{name}{i}" for i in data.index]})
                          for name, data in splits.items()])
    dataset = SimpleNamespace(source_file=lambda split, source: None)
    features, rows = read_images(FeatureStore(tmp_path / "store.h5"), manifest, dataset, ["test", "train"])
    assert features.dtype == np.float32
    np.testing.assert_array_equal(features, np.concatenate([splits["test"].features, splits["train"].features]))
    assert rows["source"].tolist() == [f"test{2 * i}" for i in range(6)] + [f"train{i}" for i in range(11)]


def test_killed_quality_draws_resume_where_they_stopped_and_give_the_uninterrupted_result(tmp_path, monkeypatch):
    import embedlens.novelty.quality as quality

    features, labels = blobs(classes=8, per_class=20, spread=0.1)
    settings = novelty_settings(quality={"unseen_fraction": 0.25, "draws": 3}, knn_k=5, k=4)
    uninterrupted = unseen_class_quality(features, labels, settings)
    fits, fit_model_itself = [], quality.fit_model

    def killed_after_the_first_draw(*args, **kwargs):
        if len(fits) == 1:
            raise KeyboardInterrupt("killed")
        fits.append(args[0])
        return fit_model_itself(*args, **kwargs)

    monkeypatch.setattr(quality, "fit_model", killed_after_the_first_draw)
    with pytest.raises(KeyboardInterrupt):
        unseen_class_quality(features, labels, settings, folder=tmp_path / "draws")
    assert sorted(path.name for path in (tmp_path / "draws").iterdir()) == ["draw-0.json"]

    def counted(*args, **kwargs):
        fits.append(args[0])
        return fit_model_itself(*args, **kwargs)

    monkeypatch.setattr(quality, "fit_model", counted)
    fits.clear()
    messages = []
    resumed = unseen_class_quality(features, labels, settings, folder=tmp_path / "draws", report=messages.append)
    assert messages == ["resumed: 1 of 3 draws done"]
    assert len(fits) == 2  # the finished draw was not fitted again
    pd.testing.assert_frame_equal(resumed, uninterrupted)
    # other settings do not reuse the markers: every draw is fitted again
    fits.clear()
    messages.clear()
    unseen_class_quality(features, labels, novelty_settings(quality={"unseen_fraction": 0.25, "draws": 3}, knn_k=4, k=4),
                         folder=tmp_path / "draws", report=messages.append)
    assert len(fits) == 3 and messages == []
