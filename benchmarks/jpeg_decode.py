"""JPEG decoding: on the device in batches (nvJPEG on a GPU) against the CPU decoder in the workers.

Generates ``--images`` ImageNet-like 500x375 JPEGs (quality 90, ~100 KB; the generator of
``imagenet_subset_streaming.py``, as the val split of an ILSVRC-like tree), opens them as an
``imagenet`` dataset and decodes all of them twice through extraction's own loader
(:class:`embedlens.extract.ManifestImages`, ``--workers`` DataLoader workers, batches of
``--batch-size``), in one run:

- CPU: the workers decode every file with PIL (extraction's route on the CPU and with
  ``extract.preprocess: pil``);
- device: the workers read the files' bytes and each batch is decoded at once on ``--device``
  (:func:`embedlens.extract.decode_on_device`, extraction's route on CUDA).

Prints images/s of each, their ratio, and how far the device decoder's pixels are from PIL's (grey
levels: maximum, mean, share of values that differ). ``--device cpu`` runs the device route with
libjpeg-turbo on the CPU, a smoke check of the code path where there is no GPU.

    python benchmarks/jpeg_decode.py --device cuda --images 4096 --workers 8
    python benchmarks/jpeg_decode.py --device cpu --images 128          # smoke check, seconds
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from imagenet_subset_streaming import make_tree  # also puts this checkout on sys.path

import numpy as np
import torch
from torch.utils.data import DataLoader

from embedlens.datasets.imagenet import ImageNet
from embedlens.extract import ManifestImages, collate_images, decode_on_device


def decode_all(images: ManifestImages, device: torch.device, batch_size: int, workers: int
               ) -> tuple[list[np.ndarray], float]:
    """Every image of ``images`` decoded, in order (as uint8 arrays back on the CPU, after the clock
    stops), and the seconds the decoding took."""
    loader = DataLoader(images, batch_size=batch_size, num_workers=workers, collate_fn=collate_images,
                        pin_memory=device.type == "cuda")
    decoded: dict[int, torch.Tensor] = {}
    start = time.perf_counter()
    for batch in loader:
        positions, pixels, failed = decode_on_device(batch, images, device)
        if failed:
            raise SystemExit(f"FAIL: files did not decode: {failed}")
        decoded.update(zip(positions, pixels))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return [decoded[i].cpu().numpy() for i in range(len(images))], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of both routes")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"],
                        help="where the device route decodes (cpu: a smoke check without a GPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; run with --device cpu for a smoke check")

    folder = Path(tempfile.mkdtemp(prefix="jpeg_decode_"))
    try:
        classes = 8
        make_tree(folder / "tree", classes, per_class=0, val_per_class=-(-args.images // classes),
                  workers=max(1, args.workers))
        dataset = ImageNet({"name": "jpegs", "kind": "imagenet", "root": str(folder / "tree"), "splits": ["val"]})
        dataset.scan_workers = max(1, args.workers)
        rows = dataset.scan().manifest.head(args.images)
        size = sum((folder / "tree" / source).stat().st_size for source in rows["source"]) / len(rows)
        gpu = f" ({torch.cuda.get_device_name(device)}, torch {torch.__version__})" if device.type == "cuda" else ""
        print(f"{len(rows)} JPEGs of 500x375 ({size / 1024:.0f} KB each); batch {args.batch_size}; "
              f"workers {args.workers}; device {device}{gpu}")

        warmup = rows.head(min(len(rows), args.batch_size))  # nvJPEG's handles, CUDA's context
        decode_all(ManifestImages(dataset, warmup, encoded=True), device, args.batch_size, 0)
        cpu, cpu_seconds = decode_all(ManifestImages(dataset, rows), device, args.batch_size, args.workers)
        ours, ours_seconds = decode_all(ManifestImages(dataset, rows, encoded=True), device, args.batch_size,
                                        args.workers)
        difference = np.concatenate([np.abs(a.astype(np.int16) - b).ravel() for a, b in zip(ours, cpu)])
        print(f"CPU decoding in the workers (PIL): {len(rows) / cpu_seconds:8.1f} images/s")
        print(f"batched decoding on the {device.type.upper()}: {len(rows) / ours_seconds:8.1f} images/s, "
              f"{cpu_seconds / ours_seconds:.2f}x the workers'; pixels against PIL's: max {difference.max()} "
              f"grey levels, mean {difference.mean():.4f}, {100 * np.mean(difference > 0):.2f}% differ")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
