"""The overlap classifier on the genuine CIFAR-100 features, beside what the classifier notebook reported.

Reads a whole-dataset feature store (default: the real ImageNet-pretrained EfficientNet-Lite0 store
the project builds), selects class sets with the overlap stage's code, and runs the classifier stage's
library on each, with the schema's default ``classify`` settings:

- ``default``: the overlap set that the default overlap settings select (centroid cosine > 0.9);
- ``top54``: the fewest most-similar pairs whose classes number at least 54, the size of the
  notebook's set (DINO ViT-S/16: 70 pairs over 54 classes).

For each set it prints the test accuracy and macro F1, the flagged confusion pairs, the pairs each of
the three measures flags, their rank agreement, and the time each part took. The notebook reported,
with DINO ViT-S/16 on its 54 classes: accuracy 78.35%; top pairs maple_tree->oak_tree 0.24,
girl->woman 0.16, girl->baby 0.14, man->woman 0.14, mouse->shrew 0.14.

    python benchmarks/classify_cifar100.py --store STORE [--sets default top54] [--folds K]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from embedlens.classify.analysis import analyse
from embedlens.classify.data import choose_classes, crossval_problem, load_rows
from embedlens.classify.settings import ClassifySettings
from embedlens.classify.training import (fit_mlp, hidden_sizes, out_of_fold_probabilities, predict_proba,
                                         train_val_split)
from embedlens.config import section_defaults
from embedlens.roles import SplitRoles, stage_defaults
from embedlens.devices import resolve_device
from embedlens.overlap import OverlapSettings, compute_overlap, overlap_classes, select_pairs
from embedlens.store import FeatureStore

NOTEBOOK_CLASSES = 54


def top_n_for(similarity: np.ndarray, names: list[str], labels: np.ndarray, classes: int) -> pd.DataFrame:
    """The fewest most-similar pairs whose union holds at least ``classes`` classes."""
    for n in range(1, len(names) * (len(names) - 1) // 2 + 1):
        pairs = select_pairs(similarity, names, labels, selection="top_n", top_n=n)
        if len(overlap_classes(pairs)) >= classes:
            return pairs
    raise ValueError(f"all pairs together cover fewer than {classes} classes")


def run_set(name: str, store: FeatureStore, pairs: pd.DataFrame, similarity: pd.DataFrame,
            settings: ClassifySettings, device: torch.device) -> None:
    classes = choose_classes("overlap", {"classes": overlap_classes(pairs)}, store, settings.train_split)
    print(f"\n=== {name}: {len(pairs)} centroid pairs over {len(classes)} classes "
          f"(similarity {pairs['similarity'].min():.4f} .. {pairs['similarity'].max():.4f})")
    started = time.monotonic()
    rows = load_rows(store, settings.train_split, classes)
    test = load_rows(store, settings.test_split, classes)
    fit_rows, val_rows = train_val_split(rows.targets, settings.val_fraction, settings.seed)
    fit = fit_mlp(rows.features[fit_rows], rows.targets[fit_rows], rows.features[val_rows], rows.targets[val_rows],
                  len(classes), settings, device)
    probabilities = predict_proba(fit.state_dict, test.features, hidden_sizes(store.dim, settings.hidden_fractions),
                                  len(classes), settings.dropout, device)
    train_seconds = time.monotonic() - started
    print(f"MLP {store.dim}-{'-'.join(map(str, hidden_sizes(store.dim, settings.hidden_fractions)))}-{len(classes)}: "
          f"{len(fit_rows)} train / {len(val_rows)} val / {len(test.targets)} test images; best epoch "
          f"{fit.best_epoch} of {len(fit.history)} (val loss {fit.best_val_loss:.4f}); "
          f"{train_seconds:.0f} s on {device}")
    last_epoch_accuracy = fit.history["val_accuracy"].iloc[-1]
    print(f"validation accuracy: best epoch {fit.history['val_accuracy'].iloc[fit.best_epoch - 1]:.4f}, "
          f"last epoch {last_epoch_accuracy:.4f}")

    started = time.monotonic()
    problem = crossval_problem(classes, rows.targets, settings.folds, settings.val_fraction, settings.train_split)
    crossval = None if problem else out_of_fold_probabilities(rows.features, rows.targets, len(classes), settings,
                                                             device)
    crossval_seconds = time.monotonic() - started
    if problem:
        print(f"no cleanlab overlap: {problem}")
    else:
        print(f"{settings.folds}-fold out-of-sample accuracy "
              f"{(crossval.probabilities.argmax(axis=1) == rows.targets).mean():.4f}; best epochs "
              f"{crossval.best_epochs}; {crossval_seconds:.0f} s")

    analysis = analyse(classes, test.targets, probabilities, k=settings.pairs_k,
                       max_threshold=settings.pairs_max_threshold, similarity=similarity,
                       centroid_pairs=pairs, crossval_targets=None if crossval is None else rows.targets,
                       crossval_probabilities=None if crossval is None else crossval.probabilities,
                       disagreement_rows=settings.disagreements)
    headline = analysis.headline
    print(f"test accuracy {100 * headline['accuracy']:.2f}%, macro F1 {headline['macro_f1']:.4f}")
    rule = analysis.rules["confusion"]
    print(f"confusion pairs (C[true,pred] >= mu {rule['mean']:.4f} + {rule['k']:g} x sigma {rule['std']:.4f} = "
          f"{rule['threshold']:.4f}): {len(analysis.confusion)} directions")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 200):
        columns = ["true", "pred", "mis_rate", "reverse_mis_rate", "both_directions", "recall_true",
                   "precision_pred", "centroid_similarity"]
        print(analysis.confusion[columns].round(3).to_string(index=False))
        print(f"pairs flagged: {headline['pairs_flagged']}")
        print("agreement:")
        print(analysis.agreement.round(3).to_string(index=False))
        print("cleanlab's top pairs:")
        print(analysis.cleanlab.head(10).round(5).to_string(index=False))
        print("where the measures disagree most:")
        print(analysis.disagreements.head(8)[["class_a", "class_b", "flagged_by", "not_flagged_by", "rank_centroid",
                                              "rank_confusion", "rank_cleanlab"]].to_string(index=False))
    print(f"time: classifier {train_seconds:.0f} s, cross-validation {crossval_seconds:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a whole-dataset CIFAR-100 feature store, e.g. results/cifar100/dino_vits16/features.h5 from make run")
    parser.add_argument("--sets", nargs="+", default=["default", "top54"], choices=["default", "top54"])
    parser.add_argument("--folds", type=int, help="override classify.folds (default: the schema's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    values = stage_defaults("classify", SplitRoles("train", "test"))
    if args.folds:
        values["folds"] = args.folds
    settings = ClassifySettings.from_config(values)
    device = resolve_device(settings.device, "classify.device")
    store = FeatureStore(args.store)
    print(f"store {args.store}: {store.attrs.get('model')}, {store.dim}-d, "
          + ", ".join(f"{split} {store.split_size(split)}" for split in store.splits))
    started = time.monotonic()
    overlap = compute_overlap(store, OverlapSettings.from_config(section_defaults("overlap")))
    similarity = pd.DataFrame(overlap.similarity, index=overlap.centroids.names, columns=overlap.centroids.names)
    print(f"centroids and similarity: {time.monotonic() - started:.0f} s")
    for name in args.sets:
        if name == "default":
            pairs = overlap.pairs
        else:
            pairs = top_n_for(overlap.similarity, overlap.centroids.names, overlap.centroids.labels, NOTEBOOK_CLASSES)
        run_set(name, store, pairs, similarity, settings, device)


if __name__ == "__main__":
    main()
