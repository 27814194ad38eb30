"""Manifest scan: reading each file's header (the scan now) against decoding every file (the scan before).

Generates a tree of photo-sized JPEGs (500x375 and the like, 80-100 KB each, as ImageNet's) with
the generator of ``imagenet_subset_streaming.py``, then scans its ``train/`` folder (one class folder
per WNID) as a ``folder`` dataset, in one run:

- full decode (the baseline, the scan before): the folder kind's scan with its check swapped for a
  full decode of every file to RGB (:func:`embedlens.images.decode_file`, what the check did);
- header: the folder kind's scan as it is (:func:`embedlens.images.check_headers`);
- header, 1 process: the same in this process alone, to see whether worker processes still pay for
  a header read.

The first two use the same ``--workers`` processes. Each scan runs ``--repeats`` times; the fastest
run counts. Both must find every file (the manifests are compared). The files were just written, so
they sit in the page cache: this measures the CPU work. From a cold disk the header scan reads a few
KB of each file where the full decode reads all of it, so the gap there is wider still.

    python benchmarks/manifest_scan.py                  # 3,000 JPEGs; about a minute on 2 cores
    python benchmarks/manifest_scan.py --per-class 50   # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

from imagenet_subset_streaming import make_tree  # also puts this checkout on sys.path

import embedlens.datasets.folder as folder
from embedlens.datasets.base import DatasetScan
from embedlens.images import check_in_chunks, decode_file, failure_reason


def _decode_reasons(paths: Sequence[str]) -> list[str | None]:
    reasons: list[str | None] = []
    for path in paths:
        try:
            decode_file(path)
            reasons.append(None)
        except Exception as error:  # as the old check: anything the decoder raises skips the file
            reasons.append(failure_reason(error, path))
    return reasons


def check_by_decoding(paths: Sequence[str], workers: int | None = None, chunk_size: int | None = None
                      ) -> list[str | None]:
    """The old scan's check: every file fully decoded, in the same chunks over the same workers."""
    return check_in_chunks(_decode_reasons, paths, workers, chunk_size, what="files")


def timed_scan(root: Path, workers: int, repeats: int, check: Callable | None = None
               ) -> tuple[float, DatasetScan]:
    """The fastest of ``repeats`` folder scans of ``root`` with ``workers`` processes (seconds), and
    its result; ``check`` replaces the folder kind's check (:func:`embedlens.images.check_headers`)."""
    dataset = folder.FolderDataset({"name": "bench", "kind": "folder", "root": str(root)})
    dataset.scan_workers = workers
    best, scan = float("inf"), None
    with mock.patch.object(folder, "check_headers", check) if check else contextlib.nullcontext():
        for _ in range(repeats):
            start = time.perf_counter()
            scan = dataset.scan()
            best = min(best, time.perf_counter() - start)
    return best, scan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=15, help="class folders in the tree")
    parser.add_argument("--per-class", type=int, default=200, help="images per class")
    parser.add_argument("--workers", type=int, default=2, help="processes of the scans and the generator")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each scan; the fastest counts")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the tree (a temp folder)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="embedlens-scan-bench-", dir=args.workdir))
    try:
        start = time.monotonic()
        make_tree(workdir / "imagenet", args.classes, args.per_class, 0, args.workers)
        root = workdir / "imagenet" / "train"
        files = sorted(root.rglob("*.JPEG"))
        print(f"generated {len(files)} JPEGs in {time.monotonic() - start:.0f} s "
              f"({sum(p.stat().st_size for p in files) / len(files) / 1024:.0f} KB each)")

        workers = args.workers
        baseline, header, serial = (f"full decode, {workers} workers", f"header, {workers} workers",
                                    "header, 1 process")
        runs = {baseline: (workers, check_by_decoding), header: (workers, None), serial: (1, None)}
        seconds, scans = {}, {}
        for label, (processes, check) in runs.items():
            seconds[label], scans[label] = timed_scan(root, processes, args.repeats, check)
            print(f"{label:24s}: {seconds[label]:7.3f} s = {len(files) / seconds[label]:7.0f} images/s",
                  flush=True)

        complete = all(len(s.manifest) == len(files) and s.skipped.empty for s in scans.values())
        same = all(scan.manifest.equals(scans[baseline].manifest) for scan in scans.values())
        print(f"every file in every manifest: {complete}; manifests identical: {same}")
        print(f"header / full decode speed ({workers} workers each): "
              f"{seconds[baseline] / seconds[header]:.1f}x")
        print(f"header, {workers} workers / 1 process speed: {seconds[serial] / seconds[header]:.2f}x")
        return 0 if complete and same and seconds[header] < seconds[baseline] else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
