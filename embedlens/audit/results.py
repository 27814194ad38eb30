"""The audit stage's documents, pictures, explore-map colourings and ``summary.json``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from embedlens.audit.duplicates import DuplicateSearch
from embedlens.audit.labels import LabelCheck
from embedlens.audit.pixels import UNVERIFIED, VERDICTS
from embedlens.audit.settings import AuditSettings, probe_description
from embedlens.images import FigureImages
from embedlens.summary import Artifact, StageSummary, blank_images_note

RANKED_VERDICTS = (*VERDICTS, UNVERIFIED)   # a query image's verdict is the first of these among its candidates
COPIES = ("exact", "near")                  # the verdicts that mean the same photograph


def best_verdicts(pairs: pd.DataFrame) -> pd.Series:
    """Each query image's most serious verdict among its cross-split candidates (index: query_index)."""
    cross = pairs[pairs["search"] == "cross"]
    rank = cross["verdict"].map({verdict: i for i, verdict in enumerate(RANKED_VERDICTS)})
    best = rank.groupby(cross["query_index"]).min()
    return best.map(dict(enumerate(RANKED_VERDICTS)))


def duplicates_document(found: DuplicateSearch, settings: AuditSettings, blank_images: Mapping[str, str]) -> dict:
    """What ``duplicates.json`` records for the summary: per search the candidate pairs, the pairs per
    verdict, the seconds it took and the saturated query images; for the cross-split search also the
    query images per verdict (each counted once, by its most serious verdict), the copies (exact or
    near) whose labels differ, and quantiles of each query image's highest similarity; the likely-copies
    list's length, its strict copies and its lowest similarity; and the images of pairs.png that could
    not be read (``blank_images``, with the reasons)."""
    pairs = found.pairs
    likely = found.likely
    document = {"settings": settings.as_dict(), "unreadable": len(found.unreadable),
                "blank_images": dict(blank_images), "searches": {},
                "likely_copies": {"listed": int(len(likely)),
                                  "strict_copies": int(likely["verdict"].isin(COPIES).sum()),
                                  "lowest_similarity": (round(float(likely["similarity"].min()), 4)
                                                        if len(likely) else None)}}
    for name, result in found.searches.items():
        chosen = pairs[pairs["search"] == name]
        entry = {"pairs": int(len(chosen)), "seconds": round(result.seconds, 3), "saturated": result.saturated,
                 "pairs_per_verdict": {v: int((chosen["verdict"] == v).sum()) for v in RANKED_VERDICTS},
                 "copies_labels_differ": int((chosen["verdict"].isin(COPIES) & chosen["labels_differ"]).sum())}
        if name == "cross":
            best = best_verdicts(pairs)
            nearest = result.nearest[np.isfinite(result.nearest)]
            entry["images_per_verdict"] = {v: int((best == v).sum()) for v in RANKED_VERDICTS}
            entry["query_images"] = int(len(result.nearest))
            entry["nearest_quantiles"] = ({f"{q:g}": round(float(np.quantile(nearest, q)), 4)
                                           for q in (0.5, 0.9, 0.99, 0.999)} if len(nearest) else {})
        document["searches"][name] = entry
    return document


def labels_document(check: LabelCheck, blank_images: Mapping[str, str]) -> dict:
    """What ``labels.json`` records: images checked, issues found, the probe's out-of-sample accuracy,
    classes left out, notes, and the images of label_issues.png that could not be read (with the reasons)."""
    return {"checked": check.checked, "blank_images": dict(blank_images), "issues": int(len(check.issues)),
            "issues_per_split": {str(k): int(v) for k, v in check.issues["split"].value_counts().items()},
            "probe_accuracy": None if check.probe_accuracy is None else round(check.probe_accuracy, 4),
            "left_out": check.left_out, "notes": check.notes}


def _short(text: str, width: int = 25) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _image(reader: FigureImages, split: str, index: int) -> np.ndarray | None:
    return reader.get((split, index), f"{split} #{index}")


def pair_pictures(pairs: pd.DataFrame, reader: FigureImages, count: int) -> tuple[list[np.ndarray | None], list[str]]:
    """Images and captions of the ``count`` closest cross-split pairs (within-split pairs when there was
    no cross-split search) for a grid with an even number of columns: each query image, then its
    neighbour; the query's caption carries similarity and verdict. ``reader`` reads ``(split,
    index_in_split)``; an image it cannot read is drawn blank and named in ``reader.unreadable``."""
    images, captions = [], []
    shown = "cross" if (pairs["search"] == "cross").any() else "within"
    for row in pairs[pairs["search"] == shown].head(count).itertuples(index=False):
        images += [_image(reader, row.query_split, row.query_index),
                   _image(reader, row.reference_split, row.reference_index)]
        captions += [f"{row.query_split} #{row.query_index}\n{_short(row.query_class)}\n"
                     f"cos {row.similarity:.3f} {row.verdict}",
                     f"{row.reference_split} #{row.reference_index}\n{_short(row.reference_class)}"
                     + ("\nlabels differ" if row.labels_differ else "")]
    return images, captions


def issue_pictures(issues: pd.DataFrame, reader: FigureImages, count: int
                   ) -> tuple[list[np.ndarray | None], list[str]]:
    """Images and captions of the ``count`` most likely label errors: given and suggested class, and the
    probe's probability of the given one (an image ``reader`` cannot read is drawn blank and named)."""
    images, captions = [], []
    for row in issues.head(count).itertuples(index=False):
        images.append(_image(reader, row.split, row.index_in_split))
        captions.append(f"{row.split} #{row.index_in_split}\ngiven: {_short(row.class_name, 18)}\n"
                        f"suggested: {_short(row.suggested_class, 14)}\np(given) {row.label_quality:.2f}")
    return images, captions


def map_columns(query_split: str, query_rows: pd.DataFrame, pairs: pd.DataFrame, checked_rows: pd.DataFrame,
                issues: pd.DataFrame) -> pd.DataFrame:
    """Colourings of the explore map: ``split, index_in_split``, then ``audit copy`` for the query
    split's images (their most serious cross-split verdict, or "no copy found") and ``audit label`` for
    the images checked for label errors ("label issue" or "label ok"). An image outside both shows n/a."""
    best = best_verdicts(pairs)
    query = pd.DataFrame({"split": query_split, "index_in_split": query_rows["index_in_split"].to_numpy()})
    query["audit copy"] = query["index_in_split"].map(best).fillna("no copy found").to_numpy()
    flagged = set(zip(issues["split"], issues["index_in_split"].astype(int)))
    labelled = pd.DataFrame({"split": checked_rows["split"].to_numpy(),
                             "index_in_split": checked_rows["index_in_split"].to_numpy()})
    labelled["audit label"] = ["label issue" if (s, int(i)) in flagged else "label ok"
                               for s, i in zip(labelled["split"], labelled["index_in_split"])]
    return query.merge(labelled, on=["split", "index_in_split"], how="outer").sort_values(
        ["split", "index_in_split"], kind="stable").reset_index(drop=True)


def audit_summary(duplicates: Mapping, labels: Mapping, clean: pd.DataFrame, *, dataset: str, backbone: str
                  ) -> StageSummary:
    """The stage's ``summary.json`` from ``duplicates.json``, ``labels.json`` and the clean table."""
    settings = duplicates["settings"]
    query, reference = settings["query_split"], settings["reference_split"]
    within = duplicates["searches"].get("within")
    # one split: no leakage to search, its repeats are the within search's
    cross = duplicates["searches"].get("cross") or {"pairs": 0, "copies_labels_differ": 0, "query_images": len(clean),
                                                    "images_per_verdict": dict.fromkeys(RANKED_VERDICTS, 0)}
    per_image = cross["images_per_verdict"]
    removed = int((~clean["kept"]).sum())
    headline = {
        "query_images": cross["query_images"], "candidates": cross["pairs"],
        **{verdict: per_image[verdict] for verdict in VERDICTS},
        "duplicates": per_image["exact"] + per_image["near"],
        "copies_labels_differ": cross["copies_labels_differ"],
        "likely_copies": duplicates["likely_copies"]["listed"],
        "within_duplicates": (within["pairs_per_verdict"]["exact"] + within["pairs_per_verdict"]["near"]
                              if within else None),
        "label_issues": labels["issues"], f"label_issues_{query}": labels["issues_per_split"].get(query, 0),
        "probe_accuracy": labels["probe_accuracy"], "clean_images": int(clean["kept"].sum()), "removed": removed,
        "search_seconds": {name: entry["seconds"] for name, entry in duplicates["searches"].items()},
    }
    rule = (f"cosine similarity >= {settings['threshold']:g}" if settings["selection"] == "threshold"
            else f"the {settings['top_n']} most similar pairs of each search")
    notes = [
        f"Split {query!r} is the dataset's only split: there is no leakage between splits to search; the repeats "
        f"within it are below." if query == reference else
        f"Candidates: among each {query} image's {settings['neighbours']} nearest neighbours, the pairs with {rule}. "
        f"{cross['pairs']} {query}-{reference} pairs over {sum(per_image.values())} {query} images: "
        f"{per_image['exact']} exact copies, {per_image['near']} near copies, {per_image['similar']} only similar "
        f"(each image counted by its most serious verdict); {cross['copies_labels_differ']} copied pairs carry "
        "different labels.",
        f"The clean {query} split keeps {headline['clean_images']} of {len(clean)} images; {removed} removed "
        f"(verdicts {', '.join(settings['remove']) or 'none'}"
        + (f", and the most likely label errors up to {settings['label_issue_fraction']:.1%} of the split"
           if settings["label_issue_fraction"] else "; likely label errors stay: label_issues.csv ranks them "
           "for review") + "; reasons in clean_test_index.csv).",
    ]
    likely = duplicates["likely_copies"]
    if likely["listed"]:
        notes.insert(1, f"likely_copies.csv ranks the {likely['listed']} {query} images most likely to be copies of "
                        f"{'another' if query == reference else 'a'} {reference} image (embedding similarity, its "
                        "margin over the second nearest and the pixel similarity to each neighbour combined), for "
                        "review: the re-shot, re-cropped and recoloured copies the strict verdicts miss rank high in "
                        f"it. {likely['strict_copies']} of them are exact or near copies; the lowest similarity "
                        f"listed is {likely['lowest_similarity']:.3f}.")
    if within:
        notes.insert(1, f"Within {query}: {within['pairs']} candidate pairs, {headline['within_duplicates']} of them "
                        "exact or near copies (the later image of each is removed from the clean split).")
    for name, entry in duplicates["searches"].items():
        if entry["saturated"]:
            notes.append(f"{entry['saturated']} {query} images had all {settings['neighbours']} neighbours of the "
                         f"{name} search above the threshold: more copies may lie beyond them; raise audit.neighbours.")
    if labels["probe_accuracy"] is not None:
        notes.append(f"Label errors: cleanlab flagged {labels['issues']} of {labels['checked']} labelled images "
                     f"({', '.join(f'{n} in {s}' for s, n in labels['issues_per_split'].items()) or 'none'}); the "
                     f"{settings['folds']}-fold {probe_description(settings)} predicts "
                     f"{100 * labels['probe_accuracy']:.1f}% of the given labels out of sample.")
    notes += labels["notes"]
    notes += [note for note in (blank_images_note("pairs.png", duplicates["blank_images"]),
                                blank_images_note("label_issues.png", labels["blank_images"])) if note]
    if duplicates["unreadable"]:
        notes.append(f"{duplicates['unreadable']} images of candidate pairs could not be read again for the pixel "
                     "check; their pairs are 'unverified' (the log names them).")
    seconds = ", ".join(f"{name} {entry['seconds']:.1f} s" for name, entry in duplicates["searches"].items())
    notes.append(f"Nearest-neighbour searches (embedlens.knn, exact): {seconds}.")
    tables = [
        Artifact("duplicates.csv", "Candidate near-duplicate pairs, closest first within each search (cross: "
                 f"{query} image and its {reference} neighbour; within: two {query} images): splits and "
                 "index_in_split, both labels and classes, cosine similarity, whether the labels differ, the pixel "
                 "verdict (exact: identical pixels; near: the same photograph re-encoded, cropped, shifted, "
                 "mirrored or recoloured; similar: a different photograph) and the pixel similarity."),
        Artifact("likely_copies.csv", f"The {query} images most likely to be copies of a {reference} image, most "
                 "likely first: rank, both images (split, index_in_split, label, class), which neighbour the query "
                 "is matched to (1: the nearest), the pair's cosine similarity, the query's margin (nearest minus "
                 "second-nearest similarity), the pair's pixel similarity, the score combining them, and the "
                 "pair's strict pixel verdict."),
        Artifact("label_issues.csv", "Likely label errors (cleanlab's find_label_issues on out-of-sample "
                 "probabilities of a cross-validated probe on the features), most likely first: split, index_in_split, given "
                 "label and class, suggested label and class, label_quality (the probe's probability of the given "
                 "label) and the suggested class's probability."),
        Artifact("clean_test_index.csv", f"Every {query} image, kept in the clean split or removed with the reasons "
                 "(embedlens.audit.clean_index reads the kept ones)."),
    ]
    figures = [
        Artifact("pairs.png", f"The closest {query}-{reference} pairs, closest first: each {query} image (with "
                 f"similarity and verdict) followed by its {reference} neighbour."),
        Artifact("nearest_similarity.png", f"Each {query} image's highest cosine similarity to a {reference} "
                 "image (log scale); the dashed line is the candidate threshold."),
        Artifact("label_issues.png", "The most likely label errors with the given and the suggested class and the "
                 "probe's probability of the given class."),
    ]
    return StageSummary(stage="audit", title="Dataset audit: near-duplicates, leakage and label errors",
                        dataset=dataset, backbone=backbone, headline=headline, tables=tables, figures=figures,
                        notes=notes, settings=dict(settings))


__all__ = ["COPIES", "RANKED_VERDICTS", "audit_summary", "best_verdicts", "duplicates_document", "issue_pictures",
           "labels_document", "map_columns", "pair_pictures"]
