"""The block a run prints when it starts: what it will do, and which settings the user did not write.

``snakemake --configfile my.yaml`` merges ``my.yaml`` over the workflow's ``config.yaml`` (mappings
key by key, anything else whole), so a file that lists only a dataset runs with the default
backbone and extraction settings. The plan shows the effective datasets, backbones, stages and
targets, and names every key that came from ``config.yaml`` rather than from the user's files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd


def inherited_keys(default: Mapping, given: Mapping, prefix: str = "") -> list[str]:
    """Dotted keys of ``default`` that ``given`` does not set, as Snakemake merges them: a mapping in
    both is compared key by key, anything else (a list, a value) is taken whole or not at all."""
    keys = []
    for key, value in default.items():
        name = f"{prefix}{key}"
        if key not in given:
            keys.append(name)
        elif isinstance(value, Mapping) and isinstance(given[key], Mapping):
            keys += inherited_keys(value, given[key], f"{name}.")
    return keys


def known_info(dataset: Mapping, results: str | Path) -> dict | None:
    """What the workflow decides with, when known without scanning the dataset: ``images`` per split
    and ``class_counts`` per split and class, from the ``dataset.json`` of an earlier manifest job
    (older ones without class counts do not count), or, for a synthetic dataset without filters,
    from its settings. None when only the manifest job can tell."""
    info = Path(results) / dataset["name"] / "dataset.json"
    if info.is_file():
        known = json.loads(info.read_text())
        return known if "class_counts" in known else None
    if dataset["kind"] == "synthetic" and not dataset.get("classes") and not dataset.get("max_per_class"):
        per_class = dataset["images_per_class"]
        splits = dataset.get("splits") or list(per_class)
        return {"images": {split: dataset["num_classes"] * per_class[split] for split in splits},
                "class_counts": {split: {str(label): per_class[split] for label in range(dataset["num_classes"])}
                                 for split in splits}}
    return None


def read_info(info_path: str | Path, manifest_path: str | Path) -> dict:
    """A manifest job's ``dataset.json``; one written before class counts were recorded gets them from
    the manifest (labelled rows per split and class), and so does a manifest without its dataset.json
    (images per split counted there too)."""
    info = json.loads(Path(info_path).read_text()) if Path(info_path).is_file() else {}
    if "class_counts" not in info:
        frame = pd.read_csv(manifest_path, usecols=["split", "label", "class_name"], keep_default_na=False,
                            dtype={"split": str, "class_name": str})
        info.setdefault("images", {split: int(count) for split, count in frame["split"].value_counts(sort=False).items()})
        sizes = frame[frame["label"] >= 0].groupby(["split", "class_name"]).size()
        info["class_counts"] = {split: {name: int(count) for (s, name), count in sizes.items() if s == split}
                                for split in info["images"]}
    return info


def _dataset_line(dataset: Mapping, images: dict[str, int] | None) -> str:
    where = dataset.get("root") or dataset.get("path") or ""
    counts = (f"{sum(images.values())} images ({', '.join(f'{s} {n}' for s, n in images.items())})"
              if images is not None else "images counted by the manifest job")
    return f"{dataset['name']} ({dataset['kind']}{' ' + where if where else ''}): {counts}"


def _backbone_line(backbone: Mapping) -> str:
    weights = backbone.get("weights") or ("random weights" if not backbone.get("pretrained", True) else
                                          "hub weights" if not Path(backbone["model"]).is_dir() else "local folder")
    return f"{backbone['name']} ({backbone['kind']} {backbone['model']}, {weights})"


def plan_text(config: Mapping, *, stages: Sequence[str], targets: Sequence[str], inherited: Sequence[str],
              default_file: str, user_files: Sequence[str], skipped: Sequence[str] = ()) -> str:
    """The plan block: config files, datasets (with image counts when known), backbones, stages, the
    stages skipped for a dataset (``skipped``: one line each, with the reason), targets, and the keys
    taken from ``default_file`` instead of ``user_files`` (when there are any), with the command that
    runs the user's files on their own."""
    files = " over ".join([*reversed(user_files), default_file]) if inherited else (
        ", ".join(user_files) or default_file)
    lines = [f"embedlens plan (config: {files})",
             *[f"  dataset   {_dataset_line(d, (known_info(d, config['results']) or {}).get('images'))}" for d in config["datasets"]],
             *[f"  backbone  {_backbone_line(b)}" for b in config["backbones"]],
             f"  stages    {', '.join(stages)}",
             *[f"  skipped   {line}" for line in skipped],
             f"  targets   {', '.join(targets)}"]
    if inherited:
        mine = " ".join(f"--configfile {path}" for path in user_files)
        lines += [f"  from {default_file}, not from {', '.join(user_files)}: {', '.join(inherited)}",
                  f"  (to run without {default_file}: make run CONFIG={user_files[-1]}, or snakemake {mine} "
                  f"--replace-workflow-config)"]
    return "\n".join(lines)
