"""Feature-space dataset distillation on the genuine CIFAR-100, against the replaced repo's claim.

Reads a whole-dataset feature store (default: the real ImageNet-pretrained EfficientNet-Lite0 store
the project builds, 20,000 train / 10,000 test images) and runs the distillation stage's library with
the schema's default ``distill`` settings (``--set key=value`` overrides) for each ``--per-class``:
it distils the train split, trains the classifier from scratch on (a) the distilled set, (b) a random
real subset of the same size per class, (c) the class centroids and (d) the full train split over the
evaluation seeds, and prints the four test accuracies (mean ± std), the compression ratio, the share of
the full fit's accuracy kept, whether (a) beats (b) beyond the seeds' spread, and the run times. As the
stage does, each set's learning rate and epochs are chosen among the settings' candidates (``--set
eval_lr=[0.01,0.1] ...``) on the validation part of the train split; the test split only reports.
The experts are trained once and shared by every ``--per-class`` (they do not depend on it).

With ``--pseudo-labels PATH`` (a ``pseudo_labels.json`` of the clustering stage for this store's train
split) the same runs follow with those labels. The replaced clustering repo claimed 50-100x compression
with 80-95% of the accuracy kept, without evidence.

    python benchmarks/distill_cifar100.py --store STORE [--per-class 1 10] [--pseudo-labels PATH [--pseudo-only]]
                                          [--set iterations=300 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import yaml

from embedlens.devices import resolve_device
from embedlens.distill.data import read_rows
from embedlens.distill.evaluation import choose_training, chosen_training, evaluate, summarize_evaluation
from embedlens.distill.matching import distill
from embedlens.distill.settings import DistillSettings
from embedlens.distill.summary import distill_document
from embedlens.roles import SplitRoles, stage_defaults
from embedlens.store import FeatureStore



def run(store: FeatureStore, settings: DistillSettings, pseudo_labels: str | None, experts_dir: str,
        device: torch.device) -> None:
    source = "true labels" if pseudo_labels is None else f"pseudo labels ({pseudo_labels})"
    print(f"\n=== {settings.per_class} vector(s) per class, {source}", flush=True)
    rows = read_rows(store, settings, pseudo_labels)
    num_classes = len(store.class_names)
    result = distill(rows.fit.features, rows.fit.labels, num_classes, settings, device, checkpoint_dir=experts_dir,
                     progress=lambda row: print(f"  {row}", flush=True) if row["phase"] == "experts"
                     or row["iteration"] % 50 == 0 else None)
    started = time.monotonic()
    choices = choose_training(result, rows.fit, rows.validation, num_classes, settings, device)
    table = summarize_evaluation(evaluate(result, rows.fit, rows.test, num_classes, settings, device,
                                          chosen_training(choices)))
    document = distill_document(result, table, choices, settings, train_images=len(rows.fit.labels),
                                validation_images=len(rows.validation.labels),
                                classes=len(set(rows.fit.labels.tolist())), label_source=source,
                                evaluation_seconds=time.monotonic() - started)
    print(choices.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))
    print(f"{document['choice']}\ncompression {document['compression_ratio']:g}x, accuracy kept "
          f"{document['accuracy_kept']:.1%}, learned lr {document['learned_lr']:.4g}, beats the random subset beyond "
          f"the seeds' spread: {document['beats_random']}")
    print(f"distillation {document['seconds']['distillation']:.0f} s (experts included the first time), "
          f"evaluation with its choices {document['seconds']['evaluation']:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a whole-dataset CIFAR-100 feature store, e.g. results/cifar100/dino_vits16/features.h5 from make run")
    parser.add_argument("--per-class", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--pseudo-labels", help="the clustering stage's pseudo_labels.json of the store's train split")
    parser.add_argument("--pseudo-only", action="store_true", help="with --pseudo-labels: leave out the true-label runs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="distill settings to override")
    arguments = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    defaults = {**stage_defaults("distill", SplitRoles("train", "test")),
                **{key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in arguments.set)}}
    store = FeatureStore(arguments.store)
    device = resolve_device(defaults["device"], "distill.device")
    print(f"{store.path}: {', '.join(f'{s} {store.split_size(s)}' for s in store.splits)} images, "
          f"{store.dim}-d, {len(store.class_names)} classes; on {device}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as experts_dir:
        sources = [None] + ([arguments.pseudo_labels] if arguments.pseudo_labels else [])
        for labels in sources[1:] if arguments.pseudo_labels and arguments.pseudo_only else sources:
            for per_class in arguments.per_class:
                settings = DistillSettings.from_config({**defaults, "per_class": per_class,
                                                        "labels": True if labels is None else "pseudo"})
                run(store, settings, labels, experts_dir, device)
    if not arguments.pseudo_labels:
        print("\npseudo labels: not run (no --pseudo-labels; the clustering stage writes them)")
    print(f"\ntotal {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
