"""The dataset audit on the genuine CIFAR-100 features, beside the literature's figures.

Reads a whole-dataset CIFAR-100 feature store (measured below on a real ImageNet-pretrained
EfficientNet-Lite0 store, 200 train images per class and the whole test split: 20,000 train, 10,000 test)
and runs the audit stage's library with the schema's default ``audit`` settings: both nearest-neighbour
searches (test against train, and within test), the pixel check of every candidate, the label check
(5-fold linear probe + cleanlab on all 30,000 images) and the clean test split. It prints the test
images per verdict, copies whose labels differ, label issues, the time of each part, and the same
counts at stricter cosine thresholds; it writes the stage's tables and pictures to ``--out`` (default
``results/benchmarks/audit_cifar100/``) to look at.

The literature, on the full training set (50,000 images): Barz & Denzler (2020, "Do we train on test
data? Purging CIFAR of near-duplicates") found duplicates in the training set (exact, near-duplicate or
very similar) for 10% of CIFAR-100's test images; Northcutt et al. (2021, "Pervasive label errors in
test sets destabilize machine learning benchmarks") flagged CIFAR-100 test images with confident
learning and confirmed by human review that about 6% of the test set (585 images) is mislabelled.

    python benchmarks/audit_cifar100.py --store results/cifar100/dino_vits16/features.h5 \\
        [--manifest PATH] [--root CIFAR_ROOT] [--out DIR]

``--manifest`` defaults to the one the workflow wrote beside the store (``results/{dataset}/manifest.csv``),
``--root`` to where the workflow downloads CIFAR-100 (``resources/cifar100``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from embedlens.audit.clean import clean_table
from embedlens.audit.duplicates import find_duplicates, image_reader, split_rows
from embedlens.audit.labels import check_labels, labelled_features
from embedlens.audit.results import (COPIES, best_verdicts, audit_summary, duplicates_document, issue_pictures,
                                     labels_document, pair_pictures)
from embedlens.audit.settings import AuditSettings
from embedlens.roles import SplitRoles, stage_defaults
from embedlens.datasets import open_dataset
from embedlens.images import FigureImages
from embedlens.manifest import read_manifest, write_table
from embedlens.plots import histogram, image_grid
from embedlens.store import FeatureStore

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a whole-dataset CIFAR-100 feature store, e.g. results/cifar100/dino_vits16/features.h5 from make run")
    parser.add_argument("--manifest", help="the dataset's manifest.csv (default: results/{dataset}/manifest.csv "
                                           "beside the store's folder)")
    parser.add_argument("--root", default="resources/cifar100", help="the folder holding cifar-100-python/")
    parser.add_argument("--out", default="results/benchmarks/audit_cifar100")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = AuditSettings.from_config(stage_defaults("audit", SplitRoles("train", "test")))
    store = FeatureStore(args.store)
    manifest = read_manifest(args.manifest or Path(args.store).resolve().parents[1] / "manifest.csv")
    dataset = open_dataset({"name": "cifar100", "kind": "cifar100", "root": args.root, "download": False})
    read = image_reader(dataset, manifest)
    print(f"store {args.store}: " + ", ".join(f"{split} {store.split_size(split)}" for split in store.splits)
          + f", {store.dim}-d; settings {json.dumps(settings.as_dict())}")

    started = time.perf_counter()
    found = find_duplicates(store, manifest, settings, read)
    total = time.perf_counter() - started
    searches = {name: result.seconds for name, result in found.searches.items()}
    print(f"\n=== near-duplicates: {total:.1f} s in all; searches " +
          ", ".join(f"{name} {seconds:.1f} s" for name, seconds in searches.items())
          + f"; pixel checks and the rest {total - sum(searches.values()):.1f} s for {len(found.pairs)} candidate pairs")
    duplicates = duplicates_document(found, settings, {})
    print(json.dumps(duplicates["searches"], indent=2))
    cross = found.pairs[found.pairs["search"] == "cross"]
    for threshold in (0.8, 0.85, 0.9, 0.95):
        best = best_verdicts(cross[cross["similarity"] >= threshold])
        print(f"cosine >= {threshold:.2f}: test images per verdict " + ", ".join(
            f"{v} {int((best == v).sum())}" for v in ("exact", "near", "similar"))
            + f"; copies (exact or near) {int(best.isin(COPIES).sum())}")

    started = time.perf_counter()
    features, rows = labelled_features(store, settings.label_splits)
    check = check_labels(features, rows, store.class_names, settings)
    seconds = time.perf_counter() - started
    labels = labels_document(check, {})
    print(f"\n=== label issues: {seconds:.1f} s; {json.dumps(labels)}")

    query_rows = split_rows(store, manifest, settings.query_split)
    clean = clean_table(query_rows, settings.query_split, found.pairs, check.issues, settings)
    summary = audit_summary(duplicates, labels, clean, dataset="cifar100", backbone="lite0")
    print(f"\n=== headline: {json.dumps(summary.headline)}")
    for note in summary.notes:
        print(" -", note)

    write_table(found.pairs, out / "duplicates.csv")
    write_table(found.likely, out / "likely_copies.csv")
    write_table(check.issues, out / "label_issues.csv")
    write_table(clean, out / "clean_test_index.csv")
    figure = FigureImages(read, "the benchmark's pictures", print)
    images, captions = pair_pictures(found.pairs, figure, settings.pairs_shown)
    image_grid(images, captions, out / "pairs.png", columns=8, title="closest test-train pairs")
    leaked = found.pairs[(found.pairs["search"] == "cross") & found.pairs["labels_differ"]
                         & found.pairs["verdict"].isin(COPIES)]
    images, captions = pair_pictures(leaked, figure, settings.pairs_shown)
    image_grid(images, captions, out / "copies_labels_differ.png", columns=8, title="copies whose labels differ")
    for verdict in ("near", "similar"):
        chosen = cross[cross["verdict"] == verdict]
        images, captions = pair_pictures(chosen.sample(min(16, len(chosen)), random_state=0), figure, 16)
        image_grid(images, captions, out / f"sample_{verdict}.png", columns=8, title=f"16 random {verdict} pairs")
    images, captions = issue_pictures(check.issues, figure, settings.issues_shown)
    image_grid(images, captions, out / "label_issues.png", columns=8, title="most likely label errors")
    histogram(found.searches["cross"].nearest, out / "nearest_similarity.png", log=True, marked_x=settings.threshold,
              marked_label=f"threshold {settings.threshold:g}", xlabel="cosine to the nearest train image")
    print(f"\ntables and pictures in {out}/")


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
