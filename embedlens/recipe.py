"""The feature recipe: everything that decides which numbers a feature store holds.

A recipe has two parts:

- what the config asks for (:func:`requested_recipe`): the dataset's name, the backbone's config entry
  and the extraction settings that change the features (``extract.device``, ``extract.amp``,
  ``extract.preprocess``). Rules carry it in ``params``, so Snakemake rebuilds a store whenever any of
  it changes;
- what the extraction job found (:func:`job_recipe`): the manifest's digest, the model, the weights
  file and its digest, the feature dimension, the resolved preprocessing, the device kind, the numeric
  precision, where JPEGs were decoded and the package versions.

Every shard and the merged store record the whole recipe; the merge refuses shards whose recipes
differ, and every later stage refuses a store whose requested part or manifest digest does not match
its own config and manifest (:func:`recipe_differences` names the keys).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

FEATURE_SETTINGS = ("device", "amp", "preprocess")
VERSIONED_PACKAGES = ("embedlens", "torch", "torchvision", "timm", "transformers", "numpy", "h5py", "pillow")


def _plain(value):
    """``value`` as JSON would give it back (tuples become lists, keys become strings)."""
    return json.loads(json.dumps(value))


def requested_recipe(dataset: Mapping, backbone: Mapping, extract: Mapping) -> dict:
    """The config's part of the recipe: ``{dataset, backbone, extract}`` from a validated config's
    dataset entry, backbone entry and ``extract`` section."""
    return _plain({"dataset": dataset["name"], "backbone": dict(backbone),
                   "extract": {key: extract[key] for key in FEATURE_SETTINGS}})


def precision(device_type: str, amp: bool) -> str:
    """The numeric precision the model runs in: bfloat16 under CUDA autocast, else float32."""
    return "bfloat16" if device_type == "cuda" and amp else "float32"


def decodes_jpegs_on_device(device_type: str, preprocess: str) -> bool:
    """Whether extraction decodes baseline JPEGs on the model's device (nvJPEG): on CUDA, with the
    batch preprocessing (``extract.preprocess: device``). Its pixels may differ from the CPU
    decoder's by a grey level here and there, so the recipe records it."""
    return device_type == "cuda" and preprocess == "device"


def file_digest(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """``sha256:<hex>`` of the file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def package_versions(names: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape the features, plus Python's."""
    versions = {"python": sys.version.split()[0]}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def job_recipe(requested: Mapping, *, manifest_digest: str, described: Mapping, device_type: str,
               amp: bool) -> dict:
    """The whole recipe of an extraction job: ``requested`` plus the manifest's digest and what the
    job resolved (``described`` is ``Backbone.describe()``: model, weights, dim, preprocessing)."""
    weights = described["weights"]
    resolved = {
        "model": described["model"],
        "weights": weights,
        "weights_digest": file_digest(weights) if Path(weights).is_file() else None,
        "dim": int(described["dim"]),
        "preprocessing": described["preprocessing"],
        "device": device_type,
        "precision": precision(device_type, amp),
        "jpeg_decoding": "device" if decodes_jpegs_on_device(device_type, requested["extract"]["preprocess"])
                         else "workers",
        "versions": package_versions(),
    }
    return _plain({**requested, "manifest_digest": manifest_digest, "resolved": resolved})


def recipe_differences(found: Mapping, expected: Mapping, keys: Sequence[str] | None = None) -> list[str]:
    """Where ``found`` differs from ``expected``, as ``key.path: <found> here, <expected> expected``
    lines (nested keys joined with dots). ``keys`` limits the comparison to these top-level keys."""
    found, expected = _plain(dict(found)), _plain(dict(expected))
    top = list(keys) if keys is not None else sorted(set(found) | set(expected))
    lines: list[str] = []
    for key in top:
        _differences(found.get(key), expected.get(key), key, lines)
    return lines


def _differences(found, expected, path: str, lines: list[str]) -> None:
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in sorted(set(found) | set(expected)):
            _differences(found.get(key), expected.get(key), f"{path}.{key}", lines)
    elif found != expected:
        lines.append(f"{path}: {json.dumps(found)} here, {json.dumps(expected)} expected")
