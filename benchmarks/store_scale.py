"""Feature stores at ImageNet scale: merge and overlap in bounded memory, whatever the number of images.

For each size (default 320,000 and 1,280,000 images of 768 float32 dimensions, 1,000 classes, 90%
train / 10% val, 8 shards), builds a manifest and shard files as extraction jobs write them (random
features, filled chunk by chunk), then runs, each in a fresh process, what the rules do:

- merge: ``merge_shards`` into ``features.h5`` (rule merge_features);
- overlap: the store check against the manifest, streamed class centroids, the 1,000 x 1,000 cosine
  matrix, pairs, similarity CSV and clustered heatmap (rule overlap).

Prints wall time and peak resident memory (the process's ru_maxrss) of each step. Target: peak memory
under 1.5 GB and flat across sizes. Needs about 10 GB of free disk at the default sizes:

    python benchmarks/store_scale.py                                 # 320k and 1.28M x 768
    python benchmarks/store_scale.py --sizes 20000 80000 --dim 384   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from embedlens.config import section_defaults
from embedlens.manifest import write_table
from embedlens.overlap import OverlapSettings, compute_overlap, describe_result, write_similarity_csv
from embedlens.plots import similarity_heatmap
from embedlens.recipe import file_digest, job_recipe, requested_recipe
from embedlens.shards import merge_shards, open_shard, shard_rows
from embedlens.store import FeatureStore

CLASSES = 1000
BACKBONE = {"name": "vitb", "kind": "timm", "model": "vit_base_patch16_224.dino"}
EXTRACT = {"device": "cuda", "amp": True, "preprocess": "device"}


def build_inputs(folder: Path, images: int, dim: int, shards: int, seed: int = 0) -> None:
    """manifest.csv and ``shards`` shard files of random features under ``folder``."""
    rng = np.random.default_rng(seed)
    train = int(images * 0.9)
    labels = rng.integers(0, CLASSES, images)
    splits = np.where(np.arange(images) < train, "train", "val")
    index = np.where(np.arange(images) < train, np.arange(images), np.arange(images) - train)
    names = [f"class_{label:04d}" for label in range(CLASSES)]
    manifest = pd.DataFrame({"index_in_split": index, "split": splits, "label": labels,
                             "class_name": np.asarray(names)[labels],
                             "source": [f"{s}/{names[label]}/{names[label]}_{i}.JPEG"
                                        for s, label, i in zip(splits, labels, index)]})
    write_table(manifest, folder / "manifest.csv")
    (folder / "dataset.json").write_text(json.dumps({"name": "imagenet", "kind": "imagenet", "class_names": names}))
    recipe = job_recipe(requested_recipe({"name": "imagenet"}, BACKBONE, EXTRACT),
                        manifest_digest=file_digest(folder / "manifest.csv"),
                        described={"model": BACKBONE["model"], "weights": "hub", "dim": dim, "preprocessing": {}},
                        device_type="cuda", amp=True)
    for number in range(1, shards + 1):
        rows = shard_rows(images, f"{number}-of-{shards}")
        with open_shard(folder / "shards" / f"{number}-of-{shards}.h5", rows, dim, recipe) as shard:
            for start in range(0, len(rows), 65536):
                stop = min(start + 65536, len(rows))
                shard.features[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
            shard.finish({}, 1.0)


def run_merge(folder: Path) -> str:
    info = json.loads((folder / "dataset.json").read_text())
    extraction = merge_shards(sorted((folder / "shards").glob("*.h5")), folder / "manifest.csv", folder / "features.h5",
                              {"dataset": info["name"], "dataset_kind": info["kind"],
                               "class_names": info["class_names"]})
    return f"{extraction['images']} images"


def run_overlap(folder: Path) -> str:
    store = FeatureStore(folder / "features.h5")
    store.check(dataset="imagenet", recipe=requested_recipe({"name": "imagenet"}, BACKBONE, EXTRACT),
                manifest=folder / "manifest.csv")
    result = compute_overlap(store, OverlapSettings.from_config({**section_defaults("overlap"), "selection": "top_n",
                                                                  "top_n": 70}))
    write_similarity_csv(result.similarity, result.centroids.names, folder / "similarity.csv")
    similarity_heatmap(result.similarity, result.centroids.names, folder / "similarity.png")
    return describe_result(result)[:60]


STEPS = {"merge": run_merge, "overlap": run_overlap}


def measured(step: str, folder: Path) -> tuple[float, float, str]:
    """Run ``step`` in a fresh process: wall seconds, peak resident MB, and what it printed."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, __file__, "--step", step, "--folder", str(folder)],
                               stdout=subprocess.PIPE, text=True)
    output = process.stdout.read().strip()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"step {step} failed with status {status}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320_000, 1_280_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the stores (a temp dir)")
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(STEPS[args.step](args.folder))
        return
    workdir = Path(tempfile.mkdtemp(prefix="embedlens-store-scale-", dir=args.workdir))
    print(f"{'images':>10} {'dim':>5} {'store GB':>9} {'step':>8} {'seconds':>8} {'peak MB':>8}  result")
    try:
        for images in args.sizes:
            folder = workdir / str(images)
            build_inputs(folder, images, args.dim, args.shards)
            for step in STEPS:
                seconds, peak, output = measured(step, folder)
                size = (folder / "features.h5").stat().st_size / 1e9
                print(f"{images:>10} {args.dim:>5} {size:>9.2f} {step:>8} {seconds:>8.1f} {peak:>8.0f}  {output}",
                      flush=True)
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
