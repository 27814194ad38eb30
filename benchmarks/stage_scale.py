"""Peak memory and time of every analysis job's code at scale, against the memory its rule declares.

Builds a synthetic feature store per size (1,000 classes of clustered features, 1,024 dimensions by
default; train rows as given, a test split of 5% of that) and runs each stage's job code on it in a
fresh Python process, training steps cut to a few (memory does not depend on them), printing one line
per stage exactly as

    stage NAME: rows N dim D store S MB peak P MB declared M MB seconds T

with the peak resident memory of that process (``os.wait4``) and what the rule declares for that store
(:func:`embedlens.resources.declared_mem_mb`). Run by hand, not by ``make test``:

    python benchmarks/stage_scale.py --rows 20000 100000                  # small, on a laptop
    python benchmarks/stage_scale.py --rows 1281167 --device cuda         # ImageNet size (GPU, 32 GB)
    python benchmarks/stage_scale.py --rows 20000 --stages cluster_temi audit_labels --folder /tmp/scale

Stages: classify (the classifier's training and its test predictions), cluster_kmeans, cluster_temi,
cluster_results (pseudo labels and metrics), audit_duplicates, audit_labels, novelty (novelty_fit's code:
the fit with k = 20 and one k-means start, the map columns and the PCA map; then one quality draw, as
novelty_quality runs it) and distill (distill_fit's code with one expert of 3 epochs and 2 matching
iterations, distill_evaluate's with one candidate, one seed and one epoch, distill_neighbours' search).
Each of novelty and distill runs its rules' code in one process, so its peak bounds each of those rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from embedlens.resources import declared_mem_mb

STAGES = ("classify", "cluster_kmeans", "cluster_temi", "cluster_results", "audit_duplicates", "audit_labels",
          "novelty", "distill")
TEST_FRACTION = 0.05


def build_store(path: Path, rows: int, classes: int, dim: int, seed: int) -> None:
    """Clustered features (a unit-norm centre per class plus noise, a common offset) written chunk by
    chunk, with a matching manifest beside the store."""
    import h5py
    import pandas as pd

    from embedlens.recipe import file_digest
    from embedlens.store import create_store

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = {"train": rows, "test": max(classes, int(rows * TEST_FRACTION))}
    labels = {split: rng.integers(0, classes, size) for split, size in sizes.items()}
    manifest = pd.concat([pd.DataFrame({"index_in_split": np.arange(size), "split": split, "label": labels[split],
                                        "class_name": [f"class{label}" for label in labels[split]],
                                        "source": np.arange(size)}) for split, size in sizes.items()])
    manifest_path = path.with_suffix(".csv")
    manifest.to_csv(manifest_path, index=False)
    attrs = {"dataset": "scale", "class_names": [f"class{c}" for c in range(classes)],
             "recipe": {"manifest_digest": file_digest(manifest_path)}}
    with h5py.File(path, "w") as handle:
        datasets = create_store(handle, attrs, {s: (labels[s], np.arange(n)) for s, n in sizes.items()}, dim)
        for split, data in datasets.items():
            for start in range(0, sizes[split], 65536):
                part = labels[split][start:start + 65536]
                data[start:start + len(part)] = (centres[part] * 4 + rng.normal(size=(len(part), dim)) + 1
                                                 ).astype(np.float32)


def run_stage(stage: str, store_path: Path, folder: Path, device: str) -> None:
    """One stage's job code, in this (fresh) process."""
    import pandas as pd
    import torch

    from embedlens.roles import SplitRoles, stage_defaults
    from embedlens.store import FeatureStore

    torch.set_num_threads(int(os.environ.get("SCALE_THREADS", "2")))
    store = FeatureStore(store_path)
    store.check(dataset="scale", recipe={}, manifest=store_path.with_suffix(".csv"))
    roles = SplitRoles("train", "test")
    device = torch.device(device)
    if stage.startswith("cluster"):
        from embedlens.cluster.kmeans import cluster_kmeans
        from embedlens.cluster.results import read_splits
        from embedlens.cluster.settings import ClusterSettings
        from embedlens.kmeans import assign

        settings = ClusterSettings.from_config(stage_defaults("cluster", roles))
        kmeans = dataclasses.replace(settings.kmeans, n_init=1, fit_rows=10_000)  # the centres from a sample
        train, test = read_splits(store, settings)
        clusters = len(store.class_names)
        if stage == "cluster_kmeans":
            fit = cluster_kmeans(train.features, clusters, kmeans, 0)
            assign(fit.model, test.features, kmeans)
        elif stage == "cluster_temi":
            from embedlens.cluster.temi_run import run_temi

            temi = dataclasses.replace(settings.temi, steps=4)
            run_temi(train, test, clusters, temi, kmeans, 0, device)
        else:
            from embedlens.cluster.pseudo import pseudo_labels
            from embedlens.cluster.results import Assignment, results_document

            cluster = np.random.default_rng(0).integers(0, clusters, len(train.labels))
            pseudo_labels(train.features, cluster, train.labels, train.index, settings.representatives,
                          method="kmeans", split="train", class_names=store.class_names)
            results_document("kmeans", clusters, {"train": Assignment(train.index, cluster, train.labels),
                                                  "test": Assignment(test.index, test.labels, test.labels)}, {},
                             settings)
    elif stage == "novelty":
        run_novelty(store, store_path, roles)
    elif stage == "distill":
        run_distill(store, store_path, roles, device)
    elif stage == "classify":
        from embedlens.classify.data import ClassSet, load_rows
        from embedlens.classify.settings import ClassifySettings
        from embedlens.classify.training import fit_mlp, hidden_sizes, predict_proba, train_val_split

        settings = ClassifySettings.from_config({**stage_defaults("classify", roles), "classes": "all",
                                                 "max_epochs": 1})
        classes = ClassSet(tuple(range(len(store.class_names))), tuple(store.class_names))
        rows, test = load_rows(store, "train", classes), load_rows(store, "test", classes)
        fit, val = train_val_split(rows.targets, settings.val_fraction, settings.seed)
        result = fit_mlp(rows.features[fit], rows.targets[fit], rows.features[val], rows.targets[val], len(classes),
                         settings, device)
        predict_proba(result.state_dict, test.features, hidden_sizes(store.dim, settings.hidden_fractions),
                      len(classes), settings.dropout, device)
    else:
        from embedlens.audit.settings import AuditSettings

        settings = AuditSettings.from_config({**stage_defaults("audit", roles), "enabled": True,
                                              "probe_epochs": 1, "probe_min_steps": 1})
        if stage == "audit_duplicates":
            from embedlens.audit.duplicates import find_duplicates

            manifest = pd.read_csv(store_path.with_suffix(".csv"))
            find_duplicates(store, manifest, settings, lambda key: np.zeros((8, 8, 3), np.uint8), device)
        else:
            from embedlens.audit.labels import check_labels, labelled_features

            features, rows = labelled_features(store, settings.label_splits)
            check_labels(features, rows, store.class_names, settings, device=device, folder=folder / "labels")


def run_novelty(store, store_path: Path, roles) -> None:
    """novelty_fit's and novelty_quality's code (no checkpoint folder: a rerun must not resume)."""
    from types import SimpleNamespace

    import pandas as pd

    from embedlens.novelty.fit import fit_novelty, pca_map
    from embedlens.novelty.quality import unseen_class_quality
    from embedlens.novelty.results import map_columns, read_images
    from embedlens.novelty.settings import NoveltySettings
    from embedlens.roles import stage_defaults

    section = stage_defaults("novelty", roles)
    settings = NoveltySettings.from_config({**section, "k": 20, "n_init": 1,
                                            "quality": {**section["quality"], "draws": 1}})
    no_files = SimpleNamespace(source_file=lambda split, source: None)
    features, rows = read_images(store, pd.read_csv(store_path.with_suffix(".csv")), no_files, settings.splits)
    fit = fit_novelty(features, settings)
    map_columns(rows, fit, features)
    pca_map(fit.model, points=settings.scatter_points, seed=settings.seed)
    del fit
    unseen_class_quality(features, rows["label"].to_numpy(), settings, store.class_names)


def run_distill(store, store_path: Path, roles, device) -> None:
    """distill_fit's, distill_evaluate's and distill_neighbours' code, training cut short."""
    import pandas as pd

    from embedlens.distill.data import read_rows
    from embedlens.distill.evaluation import choose_training, chosen_training, evaluate
    from embedlens.distill.matching import distill
    from embedlens.distill.pictures import nearest_real
    from embedlens.distill.settings import DistillSettings
    from embedlens.roles import stage_defaults

    settings = DistillSettings.from_config({**stage_defaults("distill", roles), "experts": 1, "expert_epochs": 3,
                                            "max_start_epoch": 1, "iterations": 2, "eval_seeds": 1,
                                            "eval_epochs": [1], "eval_lr": [0.1], "full_epochs": [1],
                                            "full_lr": [0.1]})
    classes = len(store.class_names)
    rows = read_rows(store, settings)
    distilled = distill(rows.fit.features, rows.fit.labels, classes, settings, device)
    choices = choose_training(distilled, rows.fit, rows.validation, classes, settings, device)
    evaluate(distilled, rows.fit, rows.test, classes, settings, device, chosen_training(choices))
    del rows
    manifest = pd.read_csv(store_path.with_suffix(".csv"))
    nearest_real(distilled, store.features(settings.train_split),
                 store.join_manifest(settings.train_split, manifest), store.class_names, settings.neighbours,
                 device=device)


def measure(stage: str, store_path: Path, folder: Path, device: str) -> tuple[float, float]:
    """Peak resident MB and seconds of ``stage`` in a fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--run-stage", stage, "--store", str(store_path),
                                "--folder", str(folder), "--device", device])
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"stage {stage} failed (exit {process.returncode})")
    return usage.ru_maxrss / 1024, time.perf_counter() - started  # ru_maxrss: KB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000], help="train rows per store")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--folder", default="scale-benchmark", help="where the stores and scratch files go")
    parser.add_argument("--json", help="also write the lines' figures to this JSON file")
    parser.add_argument("--run-stage", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder)
    if args.run_stage:
        run_stage(args.run_stage, Path(args.store), folder, args.device)
        return
    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    for rows in args.rows:
        store_path = folder / f"store-{rows}x{args.dim}.h5"
        if not store_path.is_file():
            build_store(store_path, rows, args.classes, args.dim, seed=0)
        store_mb = store_path.stat().st_size / 1e6
        for stage in args.stages:
            peak, seconds = measure(stage, store_path, folder / f"scratch-{rows}", args.device)
            declared = declared_mem_mb(stage, store_mb)
            print(f"stage {stage}: rows {rows} dim {args.dim} store {store_mb:.0f} MB peak {peak:.0f} MB "
                  f"declared {declared} MB seconds {seconds:.1f}", flush=True)
            figures.append({"stage": stage, "rows": rows, "dim": args.dim, "store_mb": round(store_mb),
                            "peak_mb": round(peak), "declared_mb": declared, "seconds": round(seconds, 1)})
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
