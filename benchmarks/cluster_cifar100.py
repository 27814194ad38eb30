"""TEMI against k-means on a CIFAR-100 feature store: ACC, NMI, ARI on the test split, active clusters,
run times, and the neighbour label agreement that bounds what TEMI can learn from pairs of neighbours;
then the time of one TEMI epoch on 50,000 x 1,280 features.

Both methods are fitted on the store's train split and scored on its test split, with K = 100 clusters.
k-means runs as the published baselines do (L2-normalised features, n_init 2). TEMI runs with the
stage's defaults except what the command line changes (epochs, heads, batch size, warm-up, a k-means
warm start from the k-means fit above): on 2 shared CPU cores the published 100 epochs x 16 heads
would take most of an hour.

    python benchmarks/cluster_cifar100.py                                   # the lead's store
    python benchmarks/cluster_cifar100.py --epochs 30 --heads 4 --batch-size 256 --json out.json

The store is read where it is; nothing is copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from embedlens.cluster.kmeans import assign, fit_kmeans
from embedlens.cluster.metrics import cluster_metrics, neighbour_agreement
from embedlens.cluster.settings import ClusterSettings
from embedlens.cluster.temi import (diagnose, head_probabilities, head_statistics, load_heads, train_temi,
                                    uniform_loss)
from embedlens.config import section_defaults
from embedlens.knn import cosine_topk
from embedlens.store import FeatureStore

DEFAULT_STORE = "/work/stores/results/cifar100/lite0/features.h5"
SPEED_ROWS = 50_000


def scores(labels: np.ndarray, clusters: np.ndarray, k: int) -> dict:
    metrics = cluster_metrics(labels, clusters, k)
    return {key: round(metrics[key], 4) if isinstance(metrics[key], float) else metrics[key]
            for key in ("acc", "nmi", "ari", "active_clusters", "size_min", "size_max", "size_cv")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=DEFAULT_STORE)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--epochs", type=int, help="TEMI epochs (default: the stage's)")
    parser.add_argument("--heads", type=int, help="TEMI heads (default: the stage's)")
    parser.add_argument("--batch-size", type=int, help="TEMI batch size (default: the stage's)")
    parser.add_argument("--warmup-epochs", type=int, help="TEMI warm-up epochs (default: the stage's)")
    parser.add_argument("--learning-rate", type=float,
                        help="TEMI's learning rate per 256 images, peak and end alike as in the official command "
                             "(default: the stage's)")
    parser.add_argument("--warm-start", choices=["none", "kmeans"], help="TEMI's start (default: the stage's, none)")
    parser.add_argument("--speed-heads", type=int,
                        help="heads of the timed epoch on 50,000 rows (default: the stage's)")
    parser.add_argument("--skip-speed", action="store_true", help="leave out the timed epoch on 50,000 rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the neighbours and TEMI run")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = torch.device(args.device)

    settings = ClusterSettings.from_config(section_defaults("cluster"))
    changes = {name: value for name, value in (("epochs", args.epochs), ("heads", args.heads),
                                               ("batch_size", args.batch_size), ("warmup_epochs", args.warmup_epochs),
                                               ("warm_start", args.warm_start), ("learning_rate", args.learning_rate),
                                               ("min_learning_rate", args.learning_rate))
               if value is not None}
    temi = dataclasses.replace(settings.temi, **changes)
    store = FeatureStore(args.store)
    train, test = store.read_split("train"), store.read_split("test")
    report = {"store": args.store, "train_images": len(train.labels), "test_images": len(test.labels),
              "clusters": args.clusters, "temi_settings": dataclasses.asdict(temi), "seed": args.seed}
    print(f"{args.store}: {len(train.labels)} train, {len(test.labels)} test images, {store.dim}-d; "
          f"K = {args.clusters}", flush=True)

    started = time.perf_counter()
    neighbours = cosine_topk(train.features, k=temi.neighbours, device=device).indices
    report["neighbour_seconds"] = round(time.perf_counter() - started, 1)
    report["neighbour_agreement"] = round(neighbour_agreement(neighbours, train.labels), 4)
    print(f"neighbours: {temi.neighbours} per image in {report['neighbour_seconds']} s; "
          f"{report['neighbour_agreement']:.1%} share the image's label", flush=True)

    started = time.perf_counter()
    model = fit_kmeans(train.features, args.clusters, settings.kmeans, args.seed)
    report["kmeans"] = {"seconds": round(time.perf_counter() - started, 1),
                        "test": scores(test.labels, assign(model, test.features, settings.kmeans), args.clusters),
                        "train": scores(train.labels, model.labels_, args.clusters)}
    print(f"k-means: {report['kmeans']}", flush=True)

    started = time.perf_counter()
    fit = train_temi(train.features, neighbours, args.clusters, temi, args.seed, device,
                     warm_start=model.labels_ if temi.warm_start == "kmeans" else None,
                     progress=lambda row: print(f"  temi epoch {row['epoch']}: loss {row['loss_mean']:.4f} "
                                                f"(best head {row['best_head']}: {row['loss_best']:.4f}) "
                                                f"{time.perf_counter() - started:.0f} s", flush=True))
    seconds = time.perf_counter() - started
    heads = load_heads(fit.teacher, temi, device)
    train_probabilities = head_probabilities(heads, train.features, temi, device)
    statistics = head_statistics(train_probabilities)
    test_probabilities = head_probabilities(heads, test.features, temi, device)
    test_clusters = test_probabilities[fit.best_head].argmax(axis=1)
    report["temi"] = {
        "seconds": round(seconds, 1), "seconds_per_epoch": round(seconds / temi.epochs, 1),
        "best_head": fit.best_head, "final_loss": round(float(fit.head_losses[-1][fit.best_head]), 4),
        "uniform_loss": round(uniform_loss(args.clusters, temi.beta), 4),
        "test": scores(test.labels, test_clusters, args.clusters),
        "train": scores(train.labels, train_probabilities[fit.best_head].argmax(axis=1), args.clusters),
        "test_acc_per_head": [round(cluster_metrics(test.labels, p.argmax(axis=1), args.clusters)["acc"], 4)
                              for p in test_probabilities],
        "head_entropy": [round(s["entropy"], 3) for s in statistics],
        "warnings": diagnose(statistics, fit.head_losses[-1], args.clusters, temi.beta),
        "loss_per_epoch": [round(v, 4) for v in fit.history["loss_best"]],
    }
    print(f"temi: {json.dumps({k: v for k, v in report['temi'].items() if k != 'loss_per_epoch'})}", flush=True)

    if not args.skip_speed:
        speed = dataclasses.replace(temi, epochs=1, warmup_epochs=0, warm_start="none",
                                    heads=args.speed_heads or settings.temi.heads)
        rows = np.resize(np.concatenate([train.features, test.features]), (SPEED_ROWS, store.dim))  # tiled rows
        random_neighbours = np.random.default_rng(args.seed).integers(0, SPEED_ROWS, (SPEED_ROWS, temi.neighbours))
        started = time.perf_counter()
        train_temi(rows, random_neighbours, args.clusters, speed, args.seed, device)
        report["epoch_50k"] = {"rows": SPEED_ROWS, "dim": store.dim, "heads": speed.heads,
                               "batch_size": speed.batch_size, "seconds": round(time.perf_counter() - started, 1)}
        print(f"one TEMI epoch on {SPEED_ROWS} x {store.dim} (tiled store rows), {speed.heads} heads, batch "
              f"{speed.batch_size}: {report['epoch_50k']['seconds']} s", flush=True)

    print("\nmethod   ACC     NMI     ARI     active  seconds")
    for method in ("kmeans", "temi"):
        test_scores = report[method]["test"]
        print(f"{method:8} {test_scores['acc']:.4f}  {test_scores['nmi']:.4f}  {test_scores['ari']:.4f}  "
              f"{test_scores['active_clusters']:6d}  {report[method]['seconds']:.0f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
