"""A tiny ILSVRC CLS-LOC tree for tests: the awkward files ImageNet has, a few pixels each.

Layout (Kaggle style, so the layout search is exercised)::

    root/LOC_synset_mapping.txt, root/LOC_val_solution.csv
    root/ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<k>.JPEG
    root/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_<N>.JPEG
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Two "crane"s and two "maillot"s, as in the real mapping; the WNIDs are the real ones.
SYNSETS = {
    "n01440764": "tench, Tinca tinca",
    "n01443537": "goldfish, Carassius auratus",
    "n02012849": "crane",
    "n03126707": "crane",
    "n03710637": "maillot",
    "n03710721": "maillot, tank suit",
    "n04592741": "wing",
}
NO_TRAIN_FOLDER = "n04592741"           # in the mapping, but without images
TRAIN_SIZES = [(40, 30), (30, 50), (10, 7), (64, 64)]
VAL_PER_CLASS = 2


def _pixels(rng, width, height, channels=3):
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _save(image: Image.Image, path: Path, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, quality=95)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_tree(root: Path, seed: int = 0) -> dict:
    """Write the tree; return what a test needs to know about it.

    Returned keys: ``root``, ``images`` (folder with train/ and val/), ``wnids`` (those with train
    folders, sorted), ``bad`` ({relative path: kind} of files that do not decode: "truncated" ones
    have whole headers, so only decoding finds them; "empty" and "missing" ones), ``special``
    ({kind: relative path} of the awkward but readable files), ``val_labels`` ({ImageId: wnid}).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images = root / "ILSVRC" / "Data" / "CLS-LOC"
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{wnid} {names}\n" for wnid, names in SYNSETS.items()))
    wnids = [w for w in sorted(SYNSETS) if w != NO_TRAIN_FOLDER]
    bad, special = {}, {}
    for c, wnid in enumerate(wnids):
        folder = images / "train" / wnid
        for k, (width, height) in enumerate(TRAIN_SIZES):
            # file numbers out of numeric order, so sorting by name matters
            path = folder / f"{wnid}_{(k * 7919) % 10007 + 1}.JPEG"
            _save(Image.fromarray(_pixels(rng, width, height)), path)
        (folder / "readme.txt").write_text("not an image")
        (folder / ".hidden.JPEG").write_bytes(b"")
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    # the awkward readable ones
    gray = images / "train" / wnids[0] / f"{wnids[0]}_90001.JPEG"
    _save(Image.fromarray(_pixels(rng, 45, 33, 1), mode="L"), gray)
    cmyk = images / "train" / wnids[1] / f"{wnids[1]}_90002.JPEG"
    _save(Image.fromarray(_pixels(rng, 37, 52, 4), mode="CMYK"), cmyk)
    png = images / "train" / wnids[2] / f"{wnids[2]}_90003.JPEG"
    _save(Image.fromarray(_pixels(rng, 50, 40)), png, fmt="PNG")
    special.update(gray=rel(gray), cmyk=rel(cmyk), png=rel(png))
    # the unreadable ones
    truncated = images / "train" / wnids[3] / f"{wnids[3]}_90004.JPEG"
    _save(Image.fromarray(_pixels(rng, 300, 200)), truncated)
    _truncate(truncated)
    empty = images / "train" / wnids[4] / f"{wnids[4]}_90005.JPEG"
    empty.write_bytes(b"")
    bad[rel(truncated)] = "truncated"
    bad[rel(empty)] = "empty"
    # val: flat folder, labels in the CSV; one listed file is missing, one is truncated
    val_labels = {}
    number = 0
    for wnid in wnids + [NO_TRAIN_FOLDER]:
        for _ in range(VAL_PER_CLASS):
            number += 1
            image_id = f"ILSVRC2012_val_{number:08d}"
            val_labels[image_id] = wnid
            width, height = TRAIN_SIZES[number % len(TRAIN_SIZES)]
            _save(Image.fromarray(_pixels(rng, width, height)), images / "val" / f"{image_id}.JPEG")
    missing_id, truncated_id = "ILSVRC2012_val_00000003", "ILSVRC2012_val_00000006"
    (images / "val" / f"{missing_id}.JPEG").unlink()
    big = images / "val" / f"{truncated_id}.JPEG"
    _save(Image.fromarray(_pixels(rng, 300, 200)), big)
    _truncate(big)
    bad[rel(images / "val" / f"{missing_id}.JPEG")] = "missing"
    bad[rel(big)] = "truncated"
    # an unlabelled stray file in val/ is ignored
    _save(Image.fromarray(_pixels(rng, 20, 20)), images / "val" / "ILSVRC2012_val_99999999.JPEG")
    lines = ["ImageId,PredictionString"]
    for image_id, wnid in reversed(val_labels.items()):  # the CSV is not sorted in the real thing either
        lines.append(f"{image_id},{wnid} 10 20 100 200 {wnid} 5 5 50 50")
    (root / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    return {"root": root, "images": images, "wnids": wnids, "bad": bad, "special": special,
            "val_labels": dict(sorted(val_labels.items()))}
