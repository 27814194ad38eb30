"""How well the novelty scores find novel images, measured on a CIFAR-100 feature store.

Near novelty (the hard case): whole CIFAR-100 classes are held out as unseen; k-means and the kNN
reference are fitted on 80% of the other classes' images, and the held-out 20% of those (negatives)
are scored together with every image of the unseen classes (positives). Repeated over several random
draws of unseen classes: AUROC and FPR at 95% TPR per score, mean ± std.

Far novelty: scikit-learn's bundled handwritten digits (8x8 greyscale, upscaled to 32x32 RGB like
CIFAR) are embedded with the store's own backbone and scored against a fit on CIFAR-100 (every class),
together with the held-out CIFAR-100 images.

k is chosen as the workflow chooses it (the elbow of the inertia curve; in each draw on its seen classes
alone), unless --k is given.

    python benchmarks/novelty_quality.py --store results/cifar100/dino_vits16/features.h5 --draws 5

The store is read where it is; nothing is copied.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from embedlens.backbones import load_backbone
from embedlens.config import section_defaults
from embedlens.extract import embed_images
from embedlens.novelty.fit import fit_novelty
from embedlens.novelty.quality import detection_quality, summarize_quality, unseen_class_quality
from embedlens.novelty.settings import NoveltySettings
from embedlens.store import FeatureStore



def digit_images(count: int, side: int = 32) -> np.ndarray:
    """The first ``count`` of scikit-learn's digits as uint8 RGB (count, side, side, 3), upscaled bilinearly."""
    digits = load_digits().images[:count]  # values 0..16
    grey = (digits * (255.0 / 16.0)).round().astype(np.uint8)
    upscaled = [np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR)) for image in grey]
    return np.repeat(np.stack(upscaled)[..., None], 3, axis=3)


def print_table(title: str, table: pd.DataFrame) -> None:
    print(f"\n{title}")
    print(table.to_string(index=False, float_format=lambda value: f"{value:.4f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a whole-dataset CIFAR-100 feature store, e.g. results/cifar100/dino_vits16/features.h5 from make run")
    parser.add_argument("--unseen", type=int, default=10, help="classes held out per draw (10)")
    parser.add_argument("--draws", type=int, default=5, help="random draws of unseen classes (5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=None, help="a fixed k instead of the elbow's")
    parser.add_argument("--knn-k", type=int, default=section_defaults("novelty")["knn_k"],
                        help="the kNN score's neighbour (the schema's default)")
    parser.add_argument("--no-raw", dest="raw", action="store_false",
                        help="skip the k-means scores on raw (not L2-normalised) embeddings")
    parser.add_argument("--far-images", type=int, default=1797, help="digits to embed (1797: all of them)")
    args = parser.parse_args()

    store = FeatureStore(args.store)
    features = np.concatenate([store.features(split) for split in store.splits])
    labels = np.concatenate([store.labels(split) for split in store.splits])
    classes = len(np.unique(labels[labels >= 0]))
    settings = NoveltySettings.from_config({**section_defaults("novelty"), "seed": args.seed, "k": args.k,
                                            "knn_k": args.knn_k,
                                            "quality": {"unseen_fraction": args.unseen / classes, "draws": args.draws}})
    print(f"store {args.store}: {len(features)} images ({'+'.join(store.splits)}), {classes} classes, "
          f"{store.dim}-d, {store.attrs.get('model')}")

    start = time.monotonic()
    fit = fit_novelty(features, settings)
    chosen = "the elbow of k = 2..20" if fit.searched else "--k"
    print(f"fit on all classes: k = {fit.model.k} ({chosen}), {len(fit.fit_rows)} fit / {len(fit.held_out_rows)} "
          f"held out, {time.monotonic() - start:.0f} s")

    start = time.monotonic()
    per_draw = unseen_class_quality(features, labels, settings, store.class_names)
    near = summarize_quality(per_draw)
    if args.raw:  # the notebook clustered raw embeddings; the kNN score is a cosine either way
        raw = unseen_class_quality(features, labels, replace(settings, normalize=False), store.class_names)
        raw = raw[raw["score"] != "knn_distance"].assign(score=lambda table: table["score"] + " (raw)")
        near = pd.concat([near, summarize_quality(raw)]).sort_values("auroc_mean", ascending=False)
    print_table(f"near novelty: {args.unseen} of {classes} CIFAR-100 classes unseen, {args.draws} draws, "
                f"k per draw {per_draw.groupby('draw')['k'].first().tolist()}, knn_k = {settings.knn_k} "
                f"({time.monotonic() - start:.0f} s); "
                f"mean and std over draws; (raw): k-means on embeddings not L2-normalised, as the notebook did", near)
    for draw, group in per_draw.groupby("draw"):
        print(f"  draw {draw}: unseen {group['unseen_classes'].iloc[0]}")

    start = time.monotonic()
    digits = embed_images(load_backbone(store.recipe["backbone"]), digit_images(args.far_images),
                          store.recipe["extract"]["preprocess"])
    scores = pd.concat([fit.scores, fit.model.score(digits)], ignore_index=True)
    is_novel = np.r_[np.zeros(len(fit.scores), bool), np.ones(len(digits), bool)]
    far = pd.DataFrame([{"score": name, **values} for name, values in detection_quality(is_novel, scores).items()])
    print_table(f"far novelty: {len(digits)} scikit-learn digits against {len(fit.scores)} held-out CIFAR-100 "
                f"images, fit on all classes ({time.monotonic() - start:.0f} s)",
                far.sort_values("auroc", ascending=False))


if __name__ == "__main__":
    main()
