"""TEMI against k-means on a CIFAR-100 feature store (or on planted synthetic clusters): ACC, NMI, ARI on
the test split, active clusters, run times, and the neighbour label agreement that bounds what TEMI can
learn from pairs of neighbours; then the time of one TEMI epoch on 50,000 x 1,280 features.

Both methods are fitted on the train split and scored on the test split, with K = 100 clusters.
k-means runs as the published baselines do (L2-normalised features, n_init 2). TEMI runs as the stage
does (embedlens.cluster.temi_run.run_temi) with the stage's defaults except what the command line changes
(steps, heads, head widths, batch size, learning rate, teacher momentum ramp, embed_norm, a k-means
warm start): on 2 shared CPU cores the default 4,800 steps x 16 heads on 50,000 images take hours.

    python benchmarks/cluster_cifar100.py --store STORE                     # e.g. results/cifar100/dino_vits16/features.h5
    python benchmarks/cluster_cifar100.py --store STORE --steps 1900 --heads 4 --json out.json
    python benchmarks/cluster_cifar100.py --synthetic --clusters 50 --heads 4 --hidden-dim 128 \\
        --bottleneck-dim 64 --batch-size 256 --skip-speed --threads 1         # planted clusters, ~3 minutes

``--synthetic``: instead of a store, 50 Gaussian clusters of 100 train and 20 test images in 64
dimensions, each with its own random spread and all sharing a large common part (like pooled CNN
features: non-negative, offset), seeded by ``--seed``; K = ``--clusters``. The store is read where it is;
nothing is copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

import numpy as np
import torch

from embedlens.cluster.kmeans import cluster_kmeans
from embedlens.cluster.metrics import cluster_metrics
from embedlens.cluster.settings import ClusterSettings
from embedlens.cluster.temi import train_temi
from embedlens.cluster.temi_run import run_temi
from embedlens.kmeans import assign
from embedlens.roles import SplitRoles, stage_defaults
from embedlens.store import FeatureStore, SplitFeatures

SPEED_ROWS = 50_000
SYNTHETIC = {"classes": 50, "train": 100, "test": 20, "dim": 64}


def scores(labels: np.ndarray, clusters: np.ndarray, k: int) -> dict:
    metrics = cluster_metrics(labels, clusters, k)
    return {key: round(metrics[key], 4) if isinstance(metrics[key], float) else metrics[key]
            for key in ("acc", "nmi", "ari", "active_clusters", "size_min", "size_max", "size_cv")}


def synthetic_splits(seed: int) -> tuple[SplitFeatures, SplitFeatures]:
    """Planted clusters (see the module docstring): train and test rows of the same clusters."""
    rng = np.random.default_rng(seed)
    classes, dim = SYNTHETIC["classes"], SYNTHETIC["dim"]
    centres, spread = rng.normal(size=(classes, dim)), rng.uniform(0.5, 1.1, size=classes)

    def split(per_class: int) -> SplitFeatures:
        labels = np.repeat(np.arange(classes), per_class)
        rows = np.abs(centres[labels] + spread[labels, None] * rng.normal(size=(len(labels), dim))) + 2.0
        return SplitFeatures(rows.astype(np.float32), labels, np.arange(len(labels)))

    return split(SYNTHETIC["train"]), split(SYNTHETIC["test"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="a whole-dataset CIFAR-100 feature store, e.g. results/cifar100/dino_vits16/features.h5 from make run (or --synthetic)")
    parser.add_argument("--synthetic", action="store_true", help="planted clusters instead of a store")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--steps", type=int, help="TEMI's optimiser steps (default: the stage's, 4,800)")
    parser.add_argument("--heads", type=int, help="TEMI heads (default: the stage's)")
    parser.add_argument("--hidden-dim", type=int, help="width of the heads' hidden layer (default: the stage's)")
    parser.add_argument("--bottleneck-dim", type=int, help="width of the heads' bottleneck (default: the stage's)")
    parser.add_argument("--batch-size", type=int, help="TEMI batch size (default: the stage's)")
    parser.add_argument("--learning-rate", type=float,
                        help="TEMI's learning rate per 256 images, peak and end alike as in the official command "
                             "(default: the stage's)")
    parser.add_argument("--teacher-momentum-end", type=float,
                        help="ramp the teacher's momentum on a cosine to this (default: the stage's, constant)")
    parser.add_argument("--neighbours-class-fraction", type=float,
                        help="k at most this share of the typical class size (default: the stage's; 0: never lowered)")
    parser.add_argument("--embed-norm", action="store_true", help="standardise the embeddings (official --embed_norm)")
    parser.add_argument("--warm-start", choices=["none", "kmeans"], help="TEMI's start (default: the stage's, none)")
    parser.add_argument("--speed-heads", type=int,
                        help="heads of the timed epoch on 50,000 rows (default: the stage's)")
    parser.add_argument("--skip-speed", action="store_true", help="leave out the timed epoch on 50,000 rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch's CPU threads (1 is faster on busy shared cores)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where the neighbours and TEMI run")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if not args.synthetic and not args.store:
        parser.error("give the feature store to cluster, --store PATH, or --synthetic for planted clusters")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    logging.getLogger("embedlens").setLevel(logging.DEBUG)  # run_temi's progress, its per-epoch lines too
    device = torch.device(args.device)

    settings = ClusterSettings.from_config(stage_defaults("cluster", SplitRoles("train", "test")))
    changes = {name: value for name, value in (
        ("steps", args.steps), ("heads", args.heads), ("hidden_dim", args.hidden_dim),
        ("bottleneck_dim", args.bottleneck_dim), ("batch_size", args.batch_size),
        ("learning_rate", args.learning_rate), ("min_learning_rate", args.learning_rate),
        ("teacher_momentum_end", args.teacher_momentum_end), ("warm_start", args.warm_start)) if value is not None}
    if args.neighbours_class_fraction is not None:
        changes["neighbours_class_fraction"] = args.neighbours_class_fraction or None  # 0: never lowered
    temi = dataclasses.replace(settings.temi, **changes, embed_norm=args.embed_norm)
    if args.synthetic:
        source, (train, test) = "synthetic", synthetic_splits(args.seed)
    else:
        store = FeatureStore(args.store)
        source, train, test = args.store, store.read_split("train"), store.read_split("test")
    report = {"source": source, "train_images": len(train.labels), "test_images": len(test.labels),
              "clusters": args.clusters, "temi_settings": dataclasses.asdict(temi), "seed": args.seed}
    print(f"{source}: {len(train.labels)} train, {len(test.labels)} test images, {train.features.shape[1]}-d; "
          f"K = {args.clusters}", flush=True)

    started = time.perf_counter()
    kmeans = cluster_kmeans(train.features, args.clusters, settings.kmeans, args.seed)
    report["kmeans"] = {"seconds": round(time.perf_counter() - started, 1),
                        "test": scores(test.labels, assign(kmeans.model, test.features, settings.kmeans), args.clusters),
                        "train": scores(train.labels, kmeans.train_clusters, args.clusters)}
    print(f"k-means: {report['kmeans']}", flush=True)

    run = run_temi(train, test, args.clusters, temi, settings.kmeans, args.seed, device)
    fit = run.document(temi)
    report["temi"] = {
        **{key: fit[key] for key in ("seconds", "neighbours", "neighbour_agreement", "steps", "epochs",
                                     "steps_per_epoch", "best_head", "final_loss", "uniform_loss", "warnings")},
        "test": scores(test.labels, run.test_clusters, args.clusters),
        "train": scores(train.labels, run.train_clusters, args.clusters),
        "test_acc_per_head": [round(cluster_metrics(test.labels, clusters, args.clusters)["acc"], 4)
                              for clusters in run.test_head_clusters],
        "head_entropy": [round(s["entropy"], 3) for s in run.statistics],
        "loss_per_epoch": [round(v, 4) for v in run.fit.history["loss_best"]],
    }
    print(f"temi: {json.dumps({k: v for k, v in report['temi'].items() if k != 'loss_per_epoch'})}", flush=True)

    if not args.skip_speed:
        dim = train.features.shape[1]
        heads = args.speed_heads or settings.temi.heads
        speed = dataclasses.replace(temi, steps=SPEED_ROWS // temi.batch_size, warmup_fraction=0.0, heads=heads)
        rows = np.resize(np.concatenate([train.features, test.features]), (SPEED_ROWS, dim))  # tiled rows
        random_neighbours = np.random.default_rng(args.seed).integers(0, SPEED_ROWS, (SPEED_ROWS, run.neighbours))
        started = time.perf_counter()
        train_temi(rows, random_neighbours, args.clusters, speed, args.seed, device)
        report["epoch_50k"] = {"rows": SPEED_ROWS, "dim": dim, "heads": heads, "batch_size": speed.batch_size,
                               "seconds": round(time.perf_counter() - started, 1)}
        print(f"one TEMI epoch on {SPEED_ROWS} x {dim} (tiled rows), {heads} heads, batch "
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
