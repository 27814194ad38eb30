"""How many planted label errors the audit's label check finds in real CIFAR-100 images: the linear
probe against a stronger out-of-fold model (a hidden layer, an ensemble of seeds).

Reads a whole-dataset CIFAR-100 feature store (train 50,000, test 10,000 images; measured on the
ImageNet-pretrained EfficientNet-Lite0 store) through :class:`embedlens.store.FeatureStore` and flips a
seeded 6% of each split's labels: *superclass* flips give each chosen image another class of its
CIFAR-100 superclass (a maple labelled oak, a girl labelled woman: the errors people make), *uniform*
flips any other class. The flips come on top of the dataset's own errors (about 6% of the test split,
Northcutt et al. 2021), which compete for the same top ranks whatever the model.

Two phases, run apart so a choice is never made on test:

``--phase validation`` checks the train split alone (its labels flipped) with every candidate of
``--candidates`` (JSON: a list of ``audit:`` overrides, default :data:`CANDIDATES`) and prints, for a
seeded validation part of 10,000 train images, the recall of its flipped images among its 1,000 (and
300) most likely issues: the test figure's twin. The model is chosen there.

``--phase test`` runs the audit's default label check (train and test pooled) once with the linear probe
and once with ``--model`` (JSON overrides, default: the schema's defaults), for superclass and uniform
flips, and prints the recall of the flipped test images among the top 1,000 and 300 test issues, the
out-of-sample accuracy and the seconds.

    PYTHONPATH=. nice -n 10 python benchmarks/label_errors_cifar100.py --store STORE --phase validation
    PYTHONPATH=. nice -n 10 python benchmarks/label_errors_cifar100.py --store STORE --phase test

``--coarse`` is the folder of CIFAR-100's ``train`` and ``test`` pickles (their ``coarse_labels``).
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from embedlens.audit.labels import check_labels, labelled_rows
from embedlens.audit.settings import AuditSettings
from embedlens.roles import SplitRoles, stage_defaults
from embedlens.store import FeatureStore

FLIPPED_SHARE = 0.06
VALIDATION_IMAGES = 10_000
TOPS = (1000, 300)
# The linear probe as the audit ran it before it had a hidden layer: its learning rate 0.05 makes its
# probabilities match scikit-learn's LogisticRegression (tests/test_probe.py).
LINEAR = {"probe_hidden": 0, "probe_dropout": 0.0, "probe_ensemble": 1, "probe_learning_rate": 0.05}
MLP = {"probe_hidden": 1024, "probe_dropout": 0.5, "probe_ensemble": 1, "probe_learning_rate": 0.001}
CANDIDATES = [LINEAR, MLP, {**MLP, "probe_ensemble": 3}]


def flip(labels: np.ndarray, superclass: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``labels`` with :data:`FLIPPED_SHARE` of them, drawn by ``rng``, set to another class of
    the same superclass (``kind`` superclass; ``superclass[c]`` is class c's) or any other class
    (uniform); and the positions flipped."""
    given = labels.copy()
    chosen = np.sort(rng.choice(len(labels), round(FLIPPED_SHARE * len(labels)), replace=False))
    classes = np.unique(labels)
    for row in chosen:
        pool = classes[(classes != labels[row]) & ((kind == "uniform") | (superclass[classes] == superclass[labels[row]]))]
        given[row] = rng.choice(pool)
    return given, chosen


def recalls(issues: pd.DataFrame, split: str, flipped_index: set[int], among: set[int] | None = None) -> dict:
    """Share of ``flipped_index`` (index_in_split of the split's flipped images) among the split's top
    issues (restricted to the images ``among`` when given)."""
    ranked = issues.loc[issues["split"] == split, "index_in_split"]
    if among is not None:
        ranked = ranked[ranked.isin(among)]
    return {f"recall@{top}": round(len(flipped_index & set(ranked.head(top))) / len(flipped_index), 4)
            for top in TOPS} | {"issues": int(len(ranked))}


def run_check(features, rows, store, settings, device) -> tuple[object, float]:
    started = time.perf_counter()
    check = check_labels(features, rows, store.class_names, settings, device=device)
    return check, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a whole-dataset CIFAR-100 feature store")
    parser.add_argument("--coarse", default="/work/shared/datasets/cifar-100-python",
                        help="the folder of CIFAR-100's train and test pickles")
    parser.add_argument("--phase", choices=["validation", "test"], required=True)
    parser.add_argument("--candidates", help="validation: JSON list of audit overrides (default CANDIDATES)")
    parser.add_argument("--model", default="{}", help="test: JSON audit overrides of the stronger model (default: the schema's)")
    parser.add_argument("--kinds", default="superclass,uniform")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    store = FeatureStore(args.store)
    defaults = stage_defaults("audit", SplitRoles("train", "test"))
    splits = ["train"] if args.phase == "validation" else ["train", "test"]
    coarse, fine = {}, {}
    for split in splits:
        with open(Path(args.coarse) / split, "rb") as handle:
            raw = pickle.load(handle, encoding="bytes")
        index = store.index(split)
        coarse[split] = np.asarray(raw[b"coarse_labels"])[index]
        fine[split] = np.asarray(raw[b"fine_labels"])[index]
        if not np.array_equal(fine[split], store.labels(split)):
            raise SystemExit(f"{args.store}: the {split} labels differ from {args.coarse}/{split}'s fine_labels")
    superclass = np.zeros(len(store.class_names), np.int64)
    for split in coarse:
        superclass[fine[split]] = coarse[split]
    print(f"store {args.store}: " + ", ".join(f"{s} {store.split_size(s)}" for s in store.splits)
          + f", {store.dim}-d; device {device}; defaults {json.dumps({k: v for k, v in defaults.items() if 'probe' in k})}")

    features = np.concatenate([store.features(split) for split in splits])
    for kind in args.kinds.split(","):
        rng = np.random.default_rng(args.seed)
        rows = labelled_rows(store, splits)
        flipped = {}
        for split in splits:
            part = (rows["split"] == split).to_numpy()
            given, chosen = flip(rows.loc[part, "label"].to_numpy(), superclass, kind, rng)
            rows.loc[part, "label"] = given
            flipped[split] = set(store.index(split)[chosen].tolist())
        if args.phase == "validation":
            validation = set(np.random.default_rng(args.seed + 1).choice(store.index("train"), VALIDATION_IMAGES,
                                                                          replace=False).tolist())
            target, among = flipped["train"] & validation, validation
            models = json.loads(args.candidates) if args.candidates else CANDIDATES
        else:
            target, among = flipped["test"], None
            models = [LINEAR, json.loads(args.model)]
        for overrides in models:
            settings = AuditSettings.from_config({**defaults, "label_splits": splits, **overrides})
            check, seconds = run_check(features, rows, store, settings, device)
            found = recalls(check.issues, splits[-1], target, among)
            print(json.dumps({"phase": args.phase, "flips": kind, "flipped": len(target), "model": overrides or "defaults",
                              **found, "accuracy": round(check.probe_accuracy, 4), "seconds": round(seconds, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
