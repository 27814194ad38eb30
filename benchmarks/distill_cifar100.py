"""Feature-space dataset distillation on the genuine CIFAR-100, against the replaced repo's claim.

Reads a whole-dataset feature store (default: the real ImageNet-pretrained EfficientNet-Lite0 store
the project builds, 20,000 train / 10,000 test images) and runs the distillation stage's library with
the schema's default ``distill`` settings (``--set key=value`` overrides) for each ``--per-class``:
it distils the train split, trains the classifier from scratch on (a) the distilled set, (b) a random
real subset of the same size per class, (c) the class centroids and (d) the full train split over the
evaluation seeds, and prints the four test accuracies (mean ± std), the compression ratio, the share of
the full split's accuracy kept, whether (a) beats (b) beyond the seeds' spread, and the run times.
Then, to make sure the baselines were not trained badly, (b) and (c) again at every learning rate of
``--baseline-lrs`` and epochs of ``--baseline-epochs``, the best on the test split kept: an upper bound,
generous to the baselines (the distilled set gets no such search).
The experts are trained once and shared by every ``--per-class`` (they do not depend on it).

With ``--pseudo-labels PATH`` (a ``pseudo_labels.json`` of the clustering stage for this store's train
split) the same runs follow with those labels. The replaced clustering repo claimed 50-100x compression
with 80-95% of the accuracy kept, without evidence.

    python benchmarks/distill_cifar100.py [--store PATH] [--per-class 1 10] [--pseudo-labels PATH [--pseudo-only]]
                                          [--set iterations=300 ...] [--baseline-lrs ...] [--baseline-epochs ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import pandas as pd
import torch
import yaml

from embedlens.roles import SplitRoles, stage_defaults
from embedlens.devices import resolve_device
from embedlens.distill import (DistillSettings, distill, distill_document, evaluate, read_rows,
                               summarize_evaluation)
from embedlens.store import FeatureStore

DEFAULT_STORE = "/work/stores/results/cifar100/lite0/features.h5"
FULL_EPOCHS = (15, 50)  # epochs searched for the full split (the experts' 15, the default full_epochs 50)


def best_of(result, train, test, num_classes: int, settings: DistillSettings, device: torch.device,
            sets: tuple[str, ...], grid: list[dict]) -> pd.DataFrame:
    """``sets`` evaluated with each settings change of ``grid``; the best of each set on the test split."""
    every = pd.concat([summarize_evaluation(evaluate(result, train, test, num_classes,
                                                     dataclasses.replace(settings, **change), device, sets=sets))
                       for change in grid], ignore_index=True)
    return every.loc[every.groupby("set", sort=False)["accuracy_mean"].idxmax()]


def run(store: FeatureStore, settings: DistillSettings, pseudo_labels: str | None, experts_dir: str,
        device: torch.device, lrs: list[float], epochs: list[int], best_full: dict) -> None:
    source = "true labels" if pseudo_labels is None else f"pseudo labels ({pseudo_labels})"
    print(f"\n=== {settings.per_class} vector(s) per class, {source}", flush=True)
    train, test = read_rows(store, settings, pseudo_labels)
    num_classes = len(store.class_names)
    result = distill(train.features, train.labels, num_classes, settings, device, checkpoint_dir=experts_dir,
                     progress=lambda row: print(f"  {row}", flush=True) if row["phase"] == "experts"
                     or row["iteration"] % 50 == 0 else None)
    started = time.monotonic()
    per_seed = evaluate(result, train, test, num_classes, settings, device)
    table = summarize_evaluation(per_seed)
    document = distill_document(result, table, settings, train_images=len(train.labels),
                                classes=len(set(train.labels.tolist())), label_source=source,
                                evaluation_seconds=time.monotonic() - started)
    print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(f"compression {document['compression_ratio']:g}x, accuracy kept {document['accuracy_kept']:.1%}, "
          f"learned lr {document['learned_lr']:.4g}, beats the random subset beyond the seeds' spread: "
          f"{document['beats_random']}")
    print(f"distillation {document['seconds']['distillation']:.0f} s (experts included the first time), "
          f"evaluation {document['seconds']['evaluation']:.0f} s", flush=True)
    if lrs:
        started = time.monotonic()
        tuned = best_of(result, train, test, num_classes, settings, device, ("random", "centroids"),
                        [{"eval_lr": lr, "eval_epochs": count} for lr in lrs for count in epochs])
        if source not in best_full:  # the full split does not depend on per_class: searched once per label source
            best_full[source] = best_of(result, train, test, num_classes, settings, device, ("full",),
                                        [{"full_lr": lr, "full_epochs": count, "eval_seeds": 2}
                                         for lr in lrs[:3] for count in FULL_EPOCHS])
        tuned = pd.concat([tuned, best_full[source]], ignore_index=True)
        print(f"  baselines at their best of lr {lrs} x epochs {epochs} (the full split: lr {lrs[:3]} x "
              f"epochs {FULL_EPOCHS}, 2 seeds), chosen on the test split:")
        print(tuned.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
        print(f"  accuracy kept against the best full split: "
              f"{document['accuracy']['distilled']['mean'] / tuned['accuracy_mean'].iloc[-1]:.1%}; "
              f"baseline search {time.monotonic() - started:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE)
    parser.add_argument("--per-class", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--pseudo-labels", help="the clustering stage's pseudo_labels.json of the store's train split")
    parser.add_argument("--pseudo-only", action="store_true", help="with --pseudo-labels: leave out the true-label runs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="distill settings to override")
    parser.add_argument("--baseline-lrs", type=float, nargs="*", default=[0.01, 0.03, 0.1, 0.3],
                        help="learning rates searched for the baselines (none: no search)")
    parser.add_argument("--baseline-epochs", type=int, nargs="+", default=[100, 300])
    arguments = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    defaults = {**stage_defaults("distill", SplitRoles("train", "test")),
                **{key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in arguments.set)}}
    store = FeatureStore(arguments.store)
    device = resolve_device(defaults["device"], "distill.device")
    print(f"{store.path}: {', '.join(f'{s} {store.split_size(s)}' for s in store.splits)} images, "
          f"{store.dim}-d, {len(store.class_names)} classes; on {device}")
    started = time.monotonic()
    best_full = {}  # label source -> the best full-split training, searched by the first run with those labels
    with tempfile.TemporaryDirectory() as experts_dir:
        sources = [None] + ([arguments.pseudo_labels] if arguments.pseudo_labels else [])
        for labels in sources[1:] if arguments.pseudo_labels and arguments.pseudo_only else sources:
            for per_class in arguments.per_class:
                settings = DistillSettings.from_config({**defaults, "per_class": per_class,
                                                        "labels": True if labels is None else "pseudo"})
                run(store, settings, labels, experts_dir, device, arguments.baseline_lrs, arguments.baseline_epochs,
                    best_full)
    if not arguments.pseudo_labels:
        print("\npseudo labels: not run (no --pseudo-labels; the clustering stage writes them)")
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
