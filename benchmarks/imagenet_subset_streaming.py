"""ImageNet subset builder: streaming (embedlens) against the replaced script's in-memory approach.

Generates an ILSVRC-like tree of photo-sized JPEGs (500x375 and 375x500, about 100 KB each, like
ImageNet's) in a temporary folder, then builds the same subsets two ways, each in its own process
tree, with the same number of decoding processes (--workers):

- baseline: what the replaced subset script did ("memory intensive"), given a process pool as a
  multi-worker version of it would have: the workers decode, the main process keeps every image in
  Python lists, then ``np.stack`` and ``np.savez``;
- streaming: :func:`embedlens.imagenet_subset.build_imagenet_subset`: worker processes decode (and
  let PIL reuse freed image memory), the main process writes the pixels straight into the NPZ's
  members as they come.

Both use the same per-image operations (RGB, shorter side -> 256 bilinear antialiased, centre crop
224), so the outputs must be identical (checked). Both hand their (forked) workers 16 images at a
time; with --workers 1 both decode in their main process. Each build runs at two sizes, N and 2N
images (a WNID list with half of the classes, then all of them). Printed per build: images/s and
peak memory, as the peak proportional set size (PSS) of the whole process tree (parent + workers,
shared pages counted once; polled every 0.1 s from /proc/<pid>/smaps_rollup) and the largest
single-process peak RSS (VmHWM of each process of the tree).

With the same workers both builds are bound by decoding, so their speeds are close; where other jobs
share the cores, the wall-clock ratio swings widely between runs (0.71x to 1.36x over four runs of
1,000 and 2,000 images on a busy 2-core machine). The CPU seconds (user + system, workers included)
are steadier (0.93x to 1.10x there): they compare the work each build does.

Pass criteria (exit status 1 otherwise): streaming does no more work than the baseline (CPU seconds
at most 1.2x the baseline's, at N and at 2N: that spread plus a margin), and the streaming peak at
2N is within 10% (+20 MB) of its peak at N.

    python benchmarks/imagenet_subset_streaming.py                  # N = 2000 images, 2N = 4000; ~2-3 min on 2 cores
    python benchmarks/imagenet_subset_streaming.py --per-class 50   # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from multiprocessing import Pool, get_context
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # embedlens from this checkout

WNID_BASE = 1_440_764  # fake but well-formed WNIDs n01440764, n01440765, ...


# --- the ILSVRC-like tree -----------------------------------------------------------------------------

def _photo(task: tuple[str, int, int, int]) -> None:
    """A smooth random 'photo' with sensor-like noise, saved as a quality-90 JPEG (~100 KB at 500x375)."""
    path, width, height, seed = task
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noise = rng.integers(-24, 25, smooth.shape, dtype=np.int16)
    pixels = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def make_tree(root: Path, classes: int, per_class: int, val_per_class: int, workers: int) -> list[str]:
    """Write the tree (train/<wnid>/, flat val/, the two metadata files); return the WNIDs."""
    wnids = [f"n{WNID_BASE + i:08d}" for i in range(classes)]
    root.mkdir(parents=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {i}, thing\n" for i, w in enumerate(wnids)))
    tasks, val_rows, number = [], ["ImageId,PredictionString"], 0
    shapes = [(500, 375), (375, 500), (500, 375), (500, 333)]
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True)
        for k in range(per_class):
            width, height = shapes[k % len(shapes)]
            tasks.append((str(root / "train" / wnid / f"{wnid}_{k + 1}.JPEG"), width, height, c * 100_000 + k))
        for _ in range(val_per_class):
            number += 1
            image_id = f"ILSVRC2012_val_{number:08d}"
            val_rows.append(f"{image_id},{wnid} 1 1 100 100")
            tasks.append((str(root / "val" / f"{image_id}.JPEG"), 500, 375, 10_000_000 + number))
    (root / "val").mkdir()
    (root / "LOC_val_solution.csv").write_text("\n".join(val_rows) + "\n")
    with Pool(workers) as pool:
        pool.map(_photo, tasks, chunksize=32)
    return wnids


# --- the replaced approach --------------------------------------------------------------------------

def _decode_or_none(path: str, size: int, resize: int) -> np.ndarray | None:
    """One image as the replaced script decoded it; None for an unreadable one (it skipped those)."""
    from embedlens.images import open_rgb
    from embedlens.imagenet_subset import resize_crop

    try:
        return resize_crop(open_rgb(path, exif_orientation=False), size, resize)
    except Exception:
        return None


def baseline_build(root: str, list_file: str, out: str, workers: int, size: int = 224, resize: int = 256) -> int:
    """The replaced script with a pool of ``workers`` forked decoding processes: every image is kept in
    Python lists, then np.stack and np.savez.

    Same per-image operations as the streaming builder, so only the approach differs.
    """
    from embedlens.datasets.imagenet import (
        locate, original_ids, read_synset_mapping, read_wnid_list, train_candidates, val_candidates,
    )

    layout = locate(root)
    mapping = read_synset_mapping(layout.synset_mapping)
    wnids = read_wnid_list(list_file, mapping, layout.train)
    label_of = {w: i for i, w in enumerate(wnids)}
    decode = partial(_decode_or_none, size=size, resize=resize)
    arrays = {}
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(get_context("fork").Pool(workers))
            decode_all = partial(pool.imap, decode, chunksize=16)
        else:
            decode_all = partial(map, decode)
        for split, found in (("train", train_candidates(layout, wnids, original_ids(mapping))),
                             ("val", val_candidates(layout, wnids))):
            images, labels, ids = [], [], []
            for candidate, pixels in zip(found, decode_all([c.path for c in found])):
                if pixels is None:
                    continue
                images.append(pixels)
                labels.append(label_of[candidate.wnid])
                ids.append(candidate.id)
            arrays[f"X_{split}"] = np.stack(images)
            arrays[f"y_{split}"] = np.array(labels, dtype=np.int32)
            arrays[f"{split}_id"] = np.array(ids, dtype=np.int32)
    np.savez(out, **{k: arrays[k] for k in ("X_train", "y_train", "train_id", "X_val", "y_val", "val_id")})
    return sum(len(arrays[f"y_{s}"]) for s in ("train", "val"))


def streaming_build(root: str, list_file: str, out: str, workers: int) -> int:
    from embedlens.config import section_defaults
    from embedlens.imagenet_subset import build_imagenet_subset

    settings = section_defaults("imagenet_subsets")
    result = build_imagenet_subset(root, list_file, out, workers=workers, size=settings["size"],
                                   resize=settings["resize"], splits=settings["splits"],
                                   chunk_size=settings["chunk_size"])
    return result.images


# --- measuring ----------------------------------------------------------------------------------------

def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_pss_kb(pid: int, hwm: dict[int, int]) -> int:
    """PSS (kB) of ``pid`` and all its descendants: shared pages are split, not counted twice.

    Also records each process's VmHWM (its own peak RSS) in ``hwm``.
    """
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        hwm[current] = max(hwm.get(current, 0), _status_kb(current, "VmHWM"))
        try:
            with open(f"/proc/{current}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def measure(mode: str, root: Path, list_file: Path, out: Path, workers: int) -> dict:
    """Run one build in a child process; its wall time, images, peak tree PSS and max single RSS."""
    command = [sys.executable, __file__, "--child", mode, str(root), str(list_file), str(out), str(workers)]
    start = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak, hwm = [0], {}
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_pss_kb(child.pid, hwm))
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    poller.join()
    seconds = time.monotonic() - start
    if child.returncode != 0:
        raise RuntimeError(f"{mode} build failed ({child.returncode})")
    report = json.loads(stdout.strip().splitlines()[-1])
    hwm[child.pid] = max(hwm.get(child.pid, 0), report["vm_hwm_kb"])
    # Not ru_maxrss: Linux carries the parent's peak RSS across vfork + exec into the child's.
    return {"mode": mode, "images": report["images"], "seconds": seconds,
            "images_per_s": report["images"] / seconds, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_pss_mb": peak[0] / 1024,
            "max_rss_mb": max(hwm.values()) / 1024, "npz_mb": out.stat().st_size / 2**20}


def child_main(mode: str, root: str, list_file: str, out: str, workers: str) -> None:
    if mode == "baseline":
        images = baseline_build(root, list_file, out, int(workers))
    else:
        images = streaming_build(root, list_file, out, int(workers))
    print(json.dumps({"images": images, "vm_hwm_kb": _status_kb(os.getpid(), "VmHWM")}))


def same_npz(a: Path, b: Path) -> bool:
    with np.load(a) as x, np.load(b) as y:
        return x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=20, help="classes in the tree (N uses half of them)")
    parser.add_argument("--per-class", type=int, default=190, help="train images per class")
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="decoding processes of each build")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the tree (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated tree and outputs")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="embedlens-imagenet-bench-", dir=args.workdir))
    try:
        root = workdir / "imagenet"
        start = time.monotonic()
        wnids = make_tree(root, args.classes, args.per_class, args.val_per_class, args.workers)
        total = args.classes * (args.per_class + args.val_per_class)
        print(f"generated {total} JPEGs in {time.monotonic() - start:.0f} s "
              f"({sum(p.stat().st_size for p in root.rglob('*.JPEG')) / total / 1024:.0f} KB each) in {root}")
        half = workdir / "half.txt"
        half.write_text("\n".join(wnids[: args.classes // 2]) + "\n")
        full = workdir / "full.txt"
        full.write_text("\n".join(wnids) + "\n")
        rows = []
        for label, list_file in (("N", half), ("2N", full)):
            for mode in ("baseline", "streaming"):
                out = workdir / "out" / f"{mode}_{label}.npz"
                out.parent.mkdir(exist_ok=True)
                row = measure(mode, root, list_file, out, args.workers)
                row["size"] = label
                rows.append(row)
                print(f"{mode:9s} {label:2s}: {row['images']:5d} images in {row['seconds']:6.1f} s = "
                      f"{row['images_per_s']:6.1f} images/s (CPU {row['cpu_s']:5.1f} s); "
                      f"peak PSS (process tree) {row['peak_pss_mb']:5.0f} MB, "
                      f"max single-process RSS {row['max_rss_mb']:5.0f} MB; NPZ {row['npz_mb']:.0f} MB", flush=True)
            identical = same_npz(workdir / "out" / f"baseline_{label}.npz", workdir / "out" / f"streaming_{label}.npz")
            print(f"outputs identical at {label}: {identical}")
            if not identical:
                return 1
            for mode in ("baseline", "streaming"):  # keep the disk use down
                (workdir / "out" / f"{mode}_{label}.npz").unlink()
        by = {(r["mode"], r["size"]): r for r in rows}
        speed, work = ([by[("streaming", s)][key] / by[("baseline", s)][key] for s in ("N", "2N")]
                       for key in ("images_per_s", "cpu_s"))
        small, large = by[("streaming", "N")]["peak_pss_mb"], by[("streaming", "2N")]["peak_pss_mb"]
        no_more_work = all(w <= 1.2 for w in work)
        bounded = large <= small * 1.10 + 20
        print(f"streaming / baseline: images/s {speed[0]:.2f}x at N, {speed[1]:.2f}x at 2N (wall clock); "
              f"CPU seconds {work[0]:.2f}x at N, {work[1]:.2f}x at 2N "
              f"({'no more work' if no_more_work else 'MORE WORK'})")
        print(f"streaming peak PSS: {small:.0f} MB at N, {large:.0f} MB at 2N "
              f"({'bounded' if bounded else 'GROWS'}); baseline: {by[('baseline', 'N')]['peak_pss_mb']:.0f} MB "
              f"at N, {by[('baseline', '2N')]['peak_pss_mb']:.0f} MB at 2N")
        return 0 if no_more_work and bounded else 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(*sys.argv[2:7])
    else:
        sys.exit(main())
