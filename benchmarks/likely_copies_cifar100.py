"""The audit's likely-copies list on genuine CIFAR-100: its weights chosen on one half of known copies,
its recall measured on the other half.

Copies that people find between CIFAR-100's test and train splits are mostly not pixel-identical: the
same photograph re-shot, re-cropped, recoloured or re-encoded. The benchmark measures on either of two
sets of such copies:

- ``--judged CSV``: the copies people judged. Barz & Denzler (2020) looked at every CIFAR-100 test
  image with a close train image and judged each pair an exact duplicate (0), a near-duplicate, the
  same camera shot edited (1), or very similar but a different photograph (2); their list is
  ``meta/duplicates_cifar100.csv`` of the ciFAIR repository (github.com/cvjena/cifair; columns TestID,
  TrainID, Distance, Judgment). Judgments 0 and 1 are copies. The genuine test split is ranked as it
  is, and the copies are split at random into two halves.
- otherwise, planted copies: ``--planted`` train images (seeded) each edited with a random re-crop
  (70-100% of the area, aspect 0.9 to 1.1, back to 32 x 32), colour changes (brightness, contrast and
  saturation each by a factor in 0.8-1.2, hue by up to 0.02 of the circle), a mirror half of the time
  and a JPEG re-encoding at quality 50-95, harsher than most copies on the judged list. (Stronger
  edits, down to 40% of the area, move EfficientNet-Lite0's features of a 32-pixel image so far that
  the source is the nearest train image of only a quarter of them.) The copies are embedded with the
  store's own backbone and preprocessing, as extraction did, and added to the test split: each half
  is ranked among the 10,000 genuine test images without the other half, so the planted copies compete
  for the list with the genuine test images' own copies of train images, as they would in a real
  audit.

On the first (validation) half of the copies the benchmark chooses the audit's
``likely_copies_gap_weight`` and ``likely_copies_pixel_weight`` from a grid: the pair whose top
``--listed`` query images hold the most copies (ties: the most in the top 300, then the smaller
weights). On the second (held-out) half it reports, once, the share of the copies that land in the
top 300 and the top ``--listed`` of:

- the strict verdicts (exact or near at the audit's defaults; a set, not a ranking);
- a plain nearest-neighbour ranking (cosine to the nearest train image);
- the likely-copies list with the schema's weights, and with the weights chosen on this run's first half.

    python benchmarks/likely_copies_cifar100.py --store STORE --root ROOT [--judged CSV | --planted 600]
        [--listed 1000] [--neighbours 5]

``STORE``: a whole-dataset CIFAR-100 store (the workflow's ``results/cifar100/BACKBONE/features.h5``);
``ROOT``: the folder that holds ``cifar-100-python/``; ``--manifest`` defaults to the one the workflow
wrote beside the store.
"""

from __future__ import annotations

import argparse
import io
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms import v2

from embedlens.audit.duplicates import image_reader
from embedlens.audit.likely import rank_likely
from embedlens.audit.pixels import PixelChecker
from embedlens.audit.results import COPIES, RANKED_VERDICTS
from embedlens.audit.settings import AuditSettings
from embedlens.backbones import load_backbone
from embedlens.config import section_defaults
from embedlens.datasets import open_dataset
from embedlens.extract import embed_images
from embedlens.knn import cosine_topk
from embedlens.manifest import read_manifest
from embedlens.roles import SplitRoles, stage_defaults
from embedlens.store import FeatureStore

GAP_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0)
PIXEL_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
SHORT_LIST = 300
JUDGED_COPIES = (0, 1)
JUDGMENTS = {0: "exact", 1: "near-duplicate", 2: "very similar", None: "not on the list"}


@dataclass
class Queries:
    """What the benchmark ranks: the query ``features`` (rows), ``image(row)`` (RGB uint8), the rows that
    are ``copies`` in each half (validation, held-out), each copy's source row in the train split and
    the rows ``ranked`` when measuring each half; with a judged list, every judged row's judgment."""

    features: np.ndarray
    image: Callable[[int], np.ndarray]
    copies: dict[str, np.ndarray]
    sources: dict[int, int]
    ranked: dict[str, np.ndarray]
    judgments: dict[int, int] = field(default_factory=dict)


def planted_edit(seed: int) -> v2.Compose:
    """The random edit of one planted copy (see the module docstring), drawn from ``seed``."""
    torch.manual_seed(seed)  # torchvision's random transforms draw from the global generator
    quality = int(torch.randint(50, 96, (1,)))
    mirror = bool(torch.rand(1) < 0.5)

    def reencode(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert("RGB")

    return v2.Compose([v2.RandomResizedCrop(32, scale=(0.7, 1.0), ratio=(0.9, 1 / 0.9), antialias=True),
                       v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
                       v2.RandomHorizontalFlip(1.0 if mirror else 0.0), reencode])


def plant(image: np.ndarray, seed: int) -> np.ndarray:
    """An edited copy of the RGB uint8 ``image`` (32 x 32 x 3)."""
    edit = planted_edit(seed)
    return np.asarray(edit(Image.fromarray(image)))


def recall(ranked: np.ndarray, planted: np.ndarray, top: int) -> float:
    """Share of the ``planted`` query rows among the first ``top`` of ``ranked``."""
    return float(np.isin(planted, ranked[:top]).mean())


def planted_queries(args, store: FeatureStore, read) -> Queries:
    """The genuine test images plus ``args.planted`` edited copies of train images, embedded as the
    store was; each half of the copies is ranked among the genuine images without the other half."""
    train_index, test_index = store.index("train"), store.index("test")
    started = time.perf_counter()
    sources = np.random.default_rng(args.seed).choice(len(train_index), args.planted, replace=False)
    copies = [plant(read(("train", int(train_index[row]))), args.seed * 1_000_003 + int(row)) for row in sources]
    planted_features = embed_images(load_backbone(store.recipe["backbone"]), copies,
                                    store.recipe["extract"]["preprocess"])
    print(f"{args.planted} planted copies embedded in {time.perf_counter() - started:.0f} s")
    genuine = len(test_index)
    planted_rows = genuine + np.arange(args.planted)
    halves = {"validation": planted_rows[: args.planted // 2], "held-out": planted_rows[args.planted // 2:]}

    def image(row: int) -> np.ndarray:
        return copies[row - genuine] if row >= genuine else read(("test", int(test_index[row])))

    return Queries(features=np.concatenate([store.features("test"), planted_features]), image=image,
                   copies=halves, sources=dict(zip(planted_rows.tolist(), sources.tolist())),
                   ranked={half: np.concatenate([np.arange(genuine), rows]) for half, rows in halves.items()})


def judged_queries(args, store: FeatureStore, read) -> Queries:
    """The genuine test images, with the copies people judged between CIFAR-100's test and train splits
    (``args.judged``: Barz & Denzler's list; judgment 0 exact, 1 near-duplicate, 2 very similar but a
    different photograph, not a copy) split at random into two halves; both halves rank every test image."""
    train_row = {int(index): row for row, index in enumerate(store.index("train"))}
    test_index = store.index("test")
    test_row = {int(index): row for row, index in enumerate(test_index)}
    every_judged = pd.read_csv(args.judged)
    missing = {"TestID", "TrainID", "Judgment"} - set(every_judged.columns)
    unknown = sorted(set(every_judged.get("TestID", [])) - set(test_row)) if not missing else []
    if missing or unknown:
        raise SystemExit(f"{args.judged}: " + (f"missing column(s) {', '.join(sorted(missing))}; ciFAIR's "
                         "meta/duplicates_cifar100.csv has TestID, TrainID, Distance, Judgment" if missing else
                         f"{len(unknown)} TestID(s) not in the store's test split, the first {unknown[0]}"))
    judgments = {test_row[int(index)]: int(judgment)
                 for index, judgment in zip(every_judged["TestID"], every_judged["Judgment"])}
    judged = every_judged[every_judged["Judgment"].isin(JUDGED_COPIES)]
    rows = np.array([test_row[int(index)] for index in judged["TestID"]])
    sources = {test_row[int(test)]: train_row[int(train)] for test, train in zip(judged["TestID"], judged["TrainID"])}
    shuffled = np.random.default_rng(args.seed).permutation(rows)
    halves = {"validation": np.sort(shuffled[: len(rows) // 2]), "held-out": np.sort(shuffled[len(rows) // 2:])}
    print(f"{len(rows)} test images judged copies of a train image (exact or near-duplicate) in {args.judged}")
    return Queries(features=store.features("test"), image=lambda row: read(("test", int(test_index[row]))),
                   copies=halves, sources=sources, ranked={half: np.arange(len(test_index)) for half in halves},
                   judgments=judgments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a whole-dataset CIFAR-100 feature store")
    parser.add_argument("--root", default="resources/cifar100", help="the folder holding cifar-100-python/")
    parser.add_argument("--manifest", help="the dataset's manifest.csv (default: beside the store's folder)")
    parser.add_argument("--judged", help="measure on this list of judged copies (ciFAIR's "
                                         "meta/duplicates_cifar100.csv) instead of planted ones")
    parser.add_argument("--planted", type=int, default=600, help="planted copies, half to choose, half to measure")
    defaults = section_defaults("audit")
    parser.add_argument("--listed", type=int, default=defaults["likely_copies"],
                        help="the list's length (the schema's default)")
    parser.add_argument("--neighbours", type=int, default=defaults["neighbours"],
                        help="nearest train images searched per query image (the schema's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = AuditSettings.from_config(stage_defaults("audit", SplitRoles("train", "test")))
    store = FeatureStore(args.store)
    manifest = read_manifest(args.manifest or Path(args.store).resolve().parents[1] / "manifest.csv")
    read = image_reader(open_dataset({"name": "cifar100", "kind": "cifar100", "root": args.root, "download": False}),
                        manifest)
    train_index = store.index("train")
    print(f"store {args.store}: train {len(train_index)}, test {len(store.index('test'))}, {store.dim}-d")
    queries = (judged_queries if args.judged else planted_queries)(args, store, read)

    started = time.perf_counter()
    with store.open_features("train") as reference:
        neighbours = cosine_topk(queries.features, reference, k=args.neighbours, device="cpu")
    print(f"nearest {args.neighbours} train images of {len(queries.features)} query images in "
          f"{time.perf_counter() - started:.0f} s")
    copy_rows = np.concatenate(list(queries.copies.values()))
    found_source = neighbours.indices[copy_rows] == np.array([queries.sources[row] for row in copy_rows])[:, None]
    print(f"copies whose nearest train image is their source: {found_source[:, 0].mean():.1%}; "
          f"among the {args.neighbours} nearest: {found_source.any(axis=1).mean():.1%}")

    checker = PixelChecker(lambda key: queries.image(key[1]) if key[0] == "query" else read(key),
                           settings.near_threshold)
    pixel_cache: dict[tuple[int, int], tuple[str, float]] = {}

    def pixel_of(row: int, column: int) -> tuple[str, float]:
        if (row, column) not in pixel_cache:
            partner = int(train_index[neighbours.indices[row, column]])
            pixel_cache[(row, column)] = checker.check(("query", row), ("train", partner))
        return pixel_cache[(row, column)]

    def ranking(half: str, gap_weight: float, pixel_weight: float) -> np.ndarray:
        """The query rows the audit lists when ranking ``queries.ranked[half]``, most likely first
        (embedlens.audit.likely.rank_likely, as the stage ranks them)."""
        rows = queries.ranked[half]

        def pixel_of_rows(local: np.ndarray) -> np.ndarray:
            return np.array([[pixel_of(int(rows[i]), j)[1] for j in range(args.neighbours)] for i in local])

        listed, *_ = rank_likely(neighbours.similarities[rows], pixel_of_rows, args.listed, gap_weight, pixel_weight)
        return rows[listed]

    started = time.perf_counter()
    validation = queries.copies["validation"]
    grid = []
    for gap_weight, pixel_weight in itertools.product(GAP_WEIGHTS, PIXEL_WEIGHTS):
        ranked = ranking("validation", gap_weight, pixel_weight)
        grid.append({"gap_weight": gap_weight, "pixel_weight": pixel_weight,
                     f"recall@{SHORT_LIST}": recall(ranked, validation, SHORT_LIST),
                     f"recall@{args.listed}": recall(ranked, validation, args.listed)})
    grid = pd.DataFrame(grid)
    chosen = grid.sort_values([f"recall@{args.listed}", f"recall@{SHORT_LIST}", "gap_weight", "pixel_weight"],
                              ascending=[False, False, True, True], kind="stable").iloc[0]
    print(f"\nvalidation half ({len(validation)} copies among {len(queries.ranked['validation'])} query images), "
          f"{len(pixel_cache)} pixel checks, {time.perf_counter() - started:.0f} s:")
    print(grid.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    print(f"chosen on validation: gap_weight {chosen['gap_weight']:g}, pixel_weight {chosen['pixel_weight']:g}")

    held_out = queries.copies["held-out"]
    ranked = ranking("held-out", chosen["gap_weight"], chosen["pixel_weight"])
    defaults_ranked = ranking("held-out", defaults["likely_copies_gap_weight"], defaults["likely_copies_pixel_weight"])
    plain = ranking("held-out", 0.0, 0.0)
    strict = [row for row in held_out if any(pixel_of(int(row), j)[0] in COPIES for j in range(args.neighbours)
                                             if neighbours.similarities[row, j] >= settings.threshold)]
    print(f"\nheld-out half ({len(held_out)} copies among {len(queries.ranked['held-out'])} query images), "
          f"reported once:")
    print(pd.DataFrame([
        {"ranking": f"strict verdicts (exact or near, cosine >= threshold): {len(strict)} copies found",
         "flagged": "a set", "recall": len(strict) / len(held_out)},
        *[{"ranking": name, "flagged": top_n, "recall": recall(order, held_out, top_n)}
          for name, order in (("nearest-neighbour cosine", plain),
                              ("likely-copies list, the schema's weights", defaults_ranked),
                              ("likely-copies list, chosen weights", ranked))
          for top_n in (SHORT_LIST, args.listed)],
    ]).to_string(index=False, float_format=lambda value: f"{value:.3f}"))
    top = ranked[:args.listed]
    genuine = len(store.index("test"))
    verdicts = pd.Series([min((pixel_of(int(row), j)[0] for j in range(args.neighbours)), key=RANKED_VERDICTS.index)
                          for row in top[top < genuine]]).value_counts().to_dict()
    print(f"genuine test images in the list's top {args.listed}: {int((top < genuine).sum())}, strict verdicts "
          f"{verdicts}")
    if queries.judgments:
        judged = pd.Series([JUDGMENTS[queries.judgments.get(int(row))] for row in top]).value_counts().to_dict()
        print(f"the list's top {args.listed} by judgment: {judged}")


if __name__ == "__main__":
    main()
