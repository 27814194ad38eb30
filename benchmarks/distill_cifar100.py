"""Feature-space dataset distillation on the genuine CIFAR-100, against the replaced repo's claim.

Reads a whole-dataset feature store (default: the real ImageNet-pretrained EfficientNet-Lite0 store
the project builds, 20,000 train / 10,000 test images) and runs the distillation stage's library with
the schema's default ``distill`` settings (``--set key=value`` overrides) for each ``--per-class``:
it distils the train split, trains the classifier from scratch on (a) the distilled set, (b) a random
real subset of the same size per class, (c) the class centroids and (d) the full train split over the
evaluation seeds, and prints the four test accuracies (mean ± std), the compression ratio, the share of
the full split's accuracy kept, whether (a) beats (b) beyond the seeds' spread, and the run times.
The experts are trained once and shared by every ``--per-class`` (they do not depend on it).

With ``--pseudo-labels PATH`` (a ``pseudo_labels.json`` of the clustering stage for this store's train
split) the same runs follow with those labels. The replaced clustering repo claimed 50-100x compression
with 80-95% of the accuracy kept, without evidence.

    python benchmarks/distill_cifar100.py [--store PATH] [--per-class 1 10] [--pseudo-labels PATH]
                                          [--set iterations=300 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import yaml

from embedlens.config import section_defaults
from embedlens.devices import resolve_device
from embedlens.distill import (DistillSettings, distill, distill_document, evaluate, read_rows,
                               summarize_evaluation)
from embedlens.store import FeatureStore

DEFAULT_STORE = "/work/stores/results/cifar100/lite0/features.h5"


def run(store: FeatureStore, settings: DistillSettings, pseudo_labels: str | None, experts_dir: str,
        device: torch.device) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE)
    parser.add_argument("--per-class", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--pseudo-labels", help="the clustering stage's pseudo_labels.json of the store's train split")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="distill settings to override")
    arguments = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    defaults = {**section_defaults("distill"),
                **{key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in arguments.set)}}
    store = FeatureStore(arguments.store)
    device = resolve_device(defaults["device"])
    print(f"{store.path}: {', '.join(f'{s} {store.split_size(s)}' for s in store.splits)} images, "
          f"{store.dim}-d, {len(store.class_names)} classes; on {device}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as experts_dir:
        for labels in [None] + ([arguments.pseudo_labels] if arguments.pseudo_labels else []):
            for per_class in arguments.per_class:
                settings = DistillSettings.from_config({**defaults, "per_class": per_class,
                                                        "labels": True if labels is None else "pseudo"})
                run(store, settings, labels, experts_dir, device)
    if not arguments.pseudo_labels:
        print("\npseudo labels: not run (no --pseudo-labels; the clustering stage writes them)")
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
