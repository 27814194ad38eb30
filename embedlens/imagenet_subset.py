"""ImageNet class subsets as one NPZ, built by streaming: bounded memory whatever the subset size.

Given an ImageNet copy (see :mod:`embedlens.datasets.imagenet` for the layouts it reads) and a WNID
list, :func:`build_imagenet_subset` writes:

``{name}.npz``
    ``X_train`` uint8 (N, size, size, 3), ``y_train`` int32 (N,), ``train_id`` int32 (N,), and the same
    three for val. Each image is converted to RGB, resized so its shorter side is ``resize`` (default
    256; bilinear with PIL's antialiasing, longer side ``int(resize * long / short)`` as torchvision's
    ``Resize(int)``), then centre-cropped to ``size`` (default 224; offsets ``round((side - size) / 2)``
    as torchvision's ``CenterCrop``). Labels are the line order of the WNID list. A split not built
    (``splits`` without it) has empty arrays, so the six keys are always there. Plain ``np.load``
    reads the file (members are stored uncompressed, ZIP64).
``{name}_cls_metadata.csv``
    ``subset_label, original_id, WNID, human_label``, one row per class in label order;
    ``original_id`` is the standard ImageNet class index: the WNID's position (0-999) in the sorted
    WNIDs of ``LOC_synset_mapping.txt``; ``human_label`` is the synset's first name (``_<wnid>``
    appended for the names two synsets share, e.g. ``crane_n02012849``).
``{name}_skipped.csv``
    ``split, id, source, reason`` for every file that could not be decoded (corrupt, truncated,
    missing); those ids are absent from the arrays.
``{name}_files.csv``
    ``split, id, label, wnid, source``: row i of a split describes row i of its arrays (``source`` is
    the file relative to the root), so ids stay traceable even if the copy changes later.

**Ids** (``train_id``, ``val_id``; the same numbers as the ``imagenet`` dataset kind's
``index_in_split``):

- ``train_id = original_id * 100000 + k``: ``k`` is the file's position (0-based) among the image
  files of ``train/<wnid>/`` sorted by name; decode with ``wnid = sorted_wnids[id // 100000]``,
  ``file = sorted(files of train/<wnid>/)[id % 100000]``;
- ``val_id``: the position (0-based) of the image in the sorted list of all val ImageIds of
  ``LOC_val_solution.csv``; for ILSVRC-2012, ``ILSVRC2012_val_{val_id + 1:08d}.JPEG``.

:func:`embedlens.datasets.imagenet.id_to_source` does the decoding.

**Streaming.** Worker processes decode and resize chunks of images; the main process writes each
chunk's pixels straight into the NPZ (a zip of ``.npy`` files, stored uncompressed, ZIP64) as the
next rows of ``X_train`` / ``X_val``, with a bounded number of chunks in flight
(:func:`embedlens.parallel.ordered_map`). Since unreadable images are only found on the way, each
``X_*.npy`` member starts with a header for every candidate image and is corrected in place when the
split is done (:class:`NpyMemberWriter`). Train folders are listed one class at a time as the
decoding reaches them; per image only two int32 (label, id) stay in memory, and its row of
``{name}_files.csv`` is written at once. Peak memory (PSS of the process tree) is about 150 MB with 2
workers and 210 MB with 8, whatever the number of images; disk use is the NPZ itself. The NPZ is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import itertools
import logging
import os
import struct
import time
import zipfile
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from embedlens.atomic import atomic_path
from embedlens.datasets.imagenet import (
    EXIF_ORIENTATION, Candidate, count_train_images, iter_train_candidates, locate, original_ids,
    read_synset_mapping, read_wnid_list, resolve_wnid_list, unique_class_names, val_candidates,
)
from embedlens.images import failure_reason, open_rgb
from embedlens.manifest import write_table
from embedlens.parallel import WorkerDied, available_cores, ordered_map

METADATA_COLUMNS = ["subset_label", "original_id", "WNID", "human_label"]
SKIPPED_COLUMNS = ["split", "id", "source", "reason"]
FILES_COLUMNS = ["split", "id", "label", "wnid", "source"]
SPLITS = ("train", "val")


def output_paths(npz: str | os.PathLike) -> dict[str, Path]:
    """The four files of a subset, from its NPZ path ``.../{name}.npz``."""
    npz = Path(npz)
    stem = npz.with_suffix("")
    return {"npz": npz, "metadata": Path(f"{stem}_cls_metadata.csv"),
            "skipped": Path(f"{stem}_skipped.csv"), "files": Path(f"{stem}_files.csv")}


def subset_names(section: dict | None) -> list[str]:
    """The subset names of the config's ``imagenet_subsets`` section (none without it), after checking
    that they are unique and that size <= resize."""
    if not section:
        return []
    names = [subset["name"] for subset in section.get("subsets", [])]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"imagenet_subsets.subsets: names must be unique; repeated: {', '.join(repeated)}")
    if section.get("size", 224) > section.get("resize", 256):
        raise ValueError(f"imagenet_subsets: size {section['size']} is larger than resize {section['resize']}")
    return names


def subset_list_file(section: dict, name: str) -> Path:
    """The WNID list file of subset ``name``: its ``list`` (a shipped list name or a path), else its name."""
    subset = next(s for s in section["subsets"] if s["name"] == name)
    try:
        return resolve_wnid_list(subset.get("list", subset["name"]))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"imagenet_subsets, subset {name!r}: {error}") from None


def resize_crop(image: Image.Image, size: int, resize: int) -> np.ndarray:
    """Shorter side to ``resize`` (bilinear, antialiased), centre crop ``size``: uint8 (size, size, C)."""
    width, height = image.size
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _reuse_pil_blocks(blocks: int = 8) -> None:
    """Let PIL keep up to ``blocks`` freed image-memory blocks for reuse (it keeps none by default), so
    decoding image after image does not map and zero fresh pages each time: about 40% fewer page faults
    and 10-20% less time per image here. At most ``blocks`` x 16 MiB stay mapped per process. A larger
    PILLOW_BLOCKS_MAX set in the environment wins."""
    core = Image.core
    if hasattr(core, "set_blocks_max") and core.get_blocks_max() < blocks:
        core.set_blocks_max(blocks)


def decode_chunk(paths: Sequence[str], size: int, resize: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode to RGB (:func:`embedlens.images.open_rgb`, as the ``imagenet`` kind reads a file),
    resize and crop ``paths``: the stacked pixels of the readable ones (uint8, (k, size, size, 3)) and
    ``(position in paths, reason)`` for the others (reasons as :func:`embedlens.images.failure_reason`
    words them)."""
    _reuse_pil_blocks()
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    kept, failed = 0, []
    for position, path in enumerate(paths):
        try:
            out[kept] = resize_crop(open_rgb(path, exif_orientation=EXIF_ORIENTATION), size, resize)
            kept += 1
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
            failed.append((position, failure_reason(error, path)))
    return out[:kept], failed


def _naming_a_crash(results, pending: collections.deque, layout, chunk_size: int):
    """``results`` of :func:`decode_chunk` as they come; a worker killed by its decoder (a crash in C
    code) becomes an error naming the first file of the first chunk not yet consumed (``pending[0]``)."""
    try:
        yield from results
    except WorkerDied as error:
        first = layout.source(pending[0][0].path) if pending else "?"
        raise RuntimeError(
            f"an image decoder crashed its worker process ({error}) while decoding the images from "
            f"{first} on (chunks of {chunk_size}); re-encode or replace the offending file and build "
            f"again (removing a train file would change the ids of the files after it)") from error


@dataclass
class SplitResult:
    """What one split of a subset came to."""

    candidates: int = 0
    written: int = 0
    skipped: int = 0


@dataclass
class SubsetResult:
    """Counts and timing of a subset build; ``paths`` are the files written."""

    paths: dict[str, Path]
    classes: int
    splits: dict[str, SplitResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images(self) -> int:
        return sum(s.written for s in self.splits.values())


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``a + b`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)`` (zlib's crc32_combine, which
    Python does not expose): multiply by the GF(2) matrix of ``len2`` zero bytes in O(log len2)."""

    def times(matrix: list[int], vector: int) -> int:
        total, row = 0, 0
        while vector:
            if vector & 1:
                total ^= matrix[row]
            vector >>= 1
            row += 1
        return total

    def square(matrix: list[int]) -> list[int]:
        return [times(matrix, matrix[n]) for n in range(32)]

    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = square(odd)                                 # two zero bits
    odd = square(even)                                 # four zero bits
    while True:
        even = square(odd)
        if len2 & 1:
            crc1 = times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = square(even)
        if len2 & 1:
            crc1 = times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def npy_header(shape: Sequence[int], dtype, length: int | None = None) -> bytes:
    """An .npy version 1.0 header for a C-order array, padded with spaces to ``length`` bytes (by
    default the next multiple of 64, as numpy writes it)."""
    text = (f"{{'descr': {np.lib.format.dtype_to_descr(np.dtype(dtype))!r}, 'fortran_order': False, "
            f"'shape': {tuple(int(n) for n in shape)!r}, }}")
    prefix = len(np.lib.format.MAGIC_PREFIX) + 2 + 2   # magic, version, header length
    if length is None:
        length = -(-(prefix + len(text) + 1) // 64) * 64
    padding = length - prefix - len(text) - 1
    if padding < 0 or length - prefix > 0xFFFF:
        raise ValueError(f"an .npy header for shape {tuple(shape)} does not fit in {length} bytes")
    body = (text + " " * padding + "\n").encode("latin1")
    return np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + struct.pack("<H", len(body)) + body


class NpyMemberWriter:
    """Streams the rows of an array whose final length is only known at the end into ``key.npy`` of
    an open (seekable) ZipFile, stored uncompressed. Rows go straight to the file as they come.

    The member starts with a header for ``max_rows`` rows; :meth:`close` rewrites it in place with the
    rows actually written (same length, space padded) and corrects the member's CRC-32 from the
    header's and the data's (:func:`crc32_combine`) in the local header and the central directory.
    """

    def __init__(self, archive: zipfile.ZipFile, key: str, row_shape: Sequence[int], dtype, max_rows: int):
        self.archive, self.row_shape, self.dtype = archive, tuple(row_shape), np.dtype(dtype)
        self.header = npy_header((max_rows, *self.row_shape), self.dtype)
        self.max_rows, self.rows, self.data_crc, self.data_bytes = max_rows, 0, 0, 0
        self.member = archive.open(f"{key}.npy", "w", force_zip64=True)
        self.member.write(self.header)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape or self.rows + len(rows) > self.max_rows:
            raise ValueError(f"rows of shape {rows.shape} do not fit {self.row_shape} x {self.max_rows}")
        if not rows.size:  # e.g. a chunk whose every image was unreadable (memoryview cannot cast it)
            return
        data = memoryview(rows).cast("B")
        self.member.write(data)
        self.data_crc = zlib.crc32(data, self.data_crc)
        self.data_bytes += len(data)
        self.rows += len(rows)

    def close(self) -> None:
        self.member.close()
        header = npy_header((self.rows, *self.row_shape), self.dtype, len(self.header))
        if header == self.header:
            return
        info = self.archive.filelist[-1]
        if info.flag_bits & 0x08:  # a data descriptor: only for unseekable files, which we never write
            raise RuntimeError("cannot rewrite an .npy header in an unseekable zip stream")
        info.CRC = crc32_combine(zlib.crc32(header), self.data_crc, self.data_bytes)
        handle, end = self.archive.fp, self.archive.fp.tell()
        local = info.FileHeader(zip64=True)
        handle.seek(info.header_offset)
        handle.write(local)
        handle.write(header)
        handle.seek(end)


def _write_small_member(archive: zipfile.ZipFile, key: str, array: np.ndarray) -> None:
    with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def build_imagenet_subset(
    root: str | os.PathLike,
    wnid_list: str | os.PathLike,
    npz_path: str | os.PathLike,
    *,
    metadata_path: str | os.PathLike | None = None,
    skipped_path: str | os.PathLike | None = None,
    files_path: str | os.PathLike | None = None,
    size: int,
    resize: int,
    splits: Sequence[str],
    workers: int | None = None,
    chunk_size: int,
    logger: logging.Logger | None = None,
) -> SubsetResult:
    """Build the subset NPZ and its CSVs (see the module docstring) from the ImageNet copy at ``root``.

    ``wnid_list`` is a shipped list name (``imagenet100``) or a file. The list is checked before any
    image is read (unknown WNIDs, duplicates, missing train folders: all reported in one error).
    ``size``, ``resize``, ``splits`` and ``chunk_size`` (images per decoding task) are the
    ``imagenet_subsets`` section's settings (defaults in the schema); ``workers`` decoding processes
    (None: all cores; 1 decodes in this process). The CSV paths default to the names beside the NPZ. Nothing appears under the
    final names unless the whole build succeeds.
    """
    log = logger or logging.getLogger("embedlens.imagenet_subset")
    start = time.monotonic()
    if size > resize:
        raise ValueError(f"size {size} is larger than resize {resize}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits must be among {', '.join(SPLITS)}; got {list(splits)}")
    paths = output_paths(npz_path)
    for key, value in (("metadata", metadata_path), ("skipped", skipped_path), ("files", files_path)):
        if value is not None:
            paths[key] = Path(value)
    workers = available_cores() if workers is None else max(1, int(workers))

    layout = locate(root)
    mapping = read_synset_mapping(layout.synset_mapping)
    list_file = resolve_wnid_list(wnid_list)
    wnids = read_wnid_list(list_file, mapping, layout.train if "train" in splits else None)
    ids = original_ids(mapping)
    names = unique_class_names(mapping)
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    # Train images are listed class by class as the decoding reaches them (counted first, to size the
    # header); val images are at most 50,000.
    val = val_candidates(layout, wnids) if "val" in splits else []
    counts = {"train": count_train_images(layout, wnids) if "train" in splits else 0, "val": len(val)}
    log.info("ImageNet subset %s: %d classes from %s; %s images to read with %d workers; %dx%d from %d",
             paths["npz"].name, len(wnids), list_file,
             ", ".join(f"{counts[s]} {s}" for s in splits), workers, size, size, resize)

    result = SubsetResult(paths, len(wnids))
    skipped_rows = []
    task = partial(decode_chunk, size=size, resize=resize)
    with contextlib.ExitStack() as stack:
        # Entered first, left last: the NPZ appears only after everything else is complete.
        npz_tmp = stack.enter_context(atomic_path(paths["npz"]))
        archive = stack.enter_context(zipfile.ZipFile(npz_tmp, "w", zipfile.ZIP_STORED, allowZip64=True))
        files_tmp = stack.enter_context(atomic_path(paths["files"]))
        files_csv = stack.enter_context(open(files_tmp, "w", newline="", encoding="utf-8"))
        files_writer = csv.writer(files_csv)  # one row per image as it is written: nothing accumulates
        files_writer.writerow(FILES_COLUMNS)
        for split in SPLITS:
            pixels_out = NpyMemberWriter(archive, f"X_{split}", (size, size, 3), np.uint8, counts[split])
            kept_ids, kept_labels = array("i"), array("i")
            if split in splits:
                candidates = iter_train_candidates(layout, wnids, ids) if split == "train" else iter(val)
                split_result = result.splits[split] = SplitResult(candidates=counts[split])
                pending: collections.deque[list[Candidate]] = collections.deque()

                def tasks(candidates=candidates, pending=pending):
                    # Runs ahead of the loop below by at most ordered_map's bound; each chunk waits in
                    # `pending` until its pixels come back.
                    while chunk := list(itertools.islice(candidates, chunk_size)):
                        pending.append(chunk)
                        yield [c.path for c in chunk]

                last_report = time.monotonic()
                decoded = _naming_a_crash(ordered_map(task, tasks(), workers), pending, layout, chunk_size)
                for pixels, failed in decoded:
                    chunk = pending.popleft()
                    pixels_out.write(pixels)
                    bad = dict(failed)
                    for position, candidate in enumerate(chunk):
                        source = layout.source(candidate.path)
                        if position in bad:
                            skipped_rows.append((split, candidate.id, source, bad[position]))
                            log.warning("skipped %s %s: %s", split, source, bad[position])
                            continue
                        label = label_of[candidate.wnid]
                        kept_ids.append(candidate.id)
                        kept_labels.append(label)
                        files_writer.writerow((split, candidate.id, label, candidate.wnid, source))
                    split_result.skipped += len(failed)
                    split_result.written += len(pixels)
                    if time.monotonic() - last_report > 30:
                        last_report = time.monotonic()
                        log.info("%s: %d of %d images", split, split_result.written + split_result.skipped,
                                 counts[split])
                log.info("%s: %d images written, %d skipped", split, split_result.written, split_result.skipped)
            pixels_out.close()
            _write_small_member(archive, f"y_{split}", np.frombuffer(kept_labels, dtype=np.int32))
            _write_small_member(archive, f"{split}_id", np.frombuffer(kept_ids, dtype=np.int32))

        metadata = pd.DataFrame({
            "subset_label": np.arange(len(wnids)),
            "original_id": [ids[w] for w in wnids],
            "WNID": wnids,
            "human_label": [names[w] for w in wnids],
        })
        write_table(metadata, paths["metadata"])
        write_table(pd.DataFrame(skipped_rows, columns=SKIPPED_COLUMNS), paths["skipped"])

    result.seconds = time.monotonic() - start
    skipped = sum(r.skipped for r in result.splits.values())
    log.info("wrote %s: %s; %d skipped (listed in %s); %.1f images/s", paths["npz"],
             ", ".join(f"{r.written} {s}" for s, r in result.splits.items()), skipped, paths["skipped"].name,
             (result.images + skipped) / max(result.seconds, 1e-9))
    return result

__all__ = ["FILES_COLUMNS", "METADATA_COLUMNS", "NpyMemberWriter", "SKIPPED_COLUMNS", "SubsetResult",
           "build_imagenet_subset", "crc32_combine", "decode_chunk", "npy_header", "output_paths", "resize_crop",
           "subset_list_file", "subset_names"]
