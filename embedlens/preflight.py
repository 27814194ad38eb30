"""Every path a validated config names, checked when the workflow starts, before any job runs.

A missing weights file or dataset folder would otherwise surface only inside the job that reads it,
after the jobs before it have run (a manifest job decodes a whole dataset first). Each problem names
the config key (``backbones[1].weights``) and what would be right there. Relative paths start in the
current folder, the workflow's working directory, as they do in its jobs.

What is not a path is left alone: hub ids (``facebook/dinov2-small``, timm names), and a
``cifar100`` root with ``download: true`` (the download rule fills it).
"""

from __future__ import annotations

import glob
from pathlib import Path

from embedlens.datasets.cifar import ARCHIVE_FILES, ARCHIVE_FOLDER, archive_folder
from embedlens.datasets.imagenet import locate, resolve_wnid_list
from embedlens.errors import BackboneLoadError
from embedlens.weights import WEIGHT_SUFFIXES, resolve_weights_file

HF_MODEL_KINDS = ("hf_dinov2", "hf_dinov3", "hf_clip")


def looks_like_path(value: str) -> bool:
    """Whether a ``model`` or ``path`` value is meant as a local path rather than a hub id: it starts
    with ``/``, ``.`` or ``~``, or has more than the one ``/`` of ``owner/name``."""
    return value.startswith(("/", ".", "~")) or value.count("/") > 1 or value.endswith(".parquet")


def path_problems(config: dict) -> list[str]:
    """One line per path in ``config`` (validated, defaults filled in) that is not where it should be."""
    problems: list[str] = []
    for i, dataset in enumerate(config["datasets"]):
        problems += _dataset_problems(dataset, f"datasets[{i}]")
    for i, backbone in enumerate(config["backbones"]):
        problems += _backbone_problems(backbone, f"backbones[{i}]")
    subsets = config.get("imagenet_subsets")
    if subsets:
        problems += _imagenet_root_problem(subsets["root"], "imagenet_subsets.root")
        for i, subset in enumerate(subsets["subsets"]):
            problems += _wnid_list_problem(subset.get("list", subset["name"]),
                                           f"imagenet_subsets.subsets[{i}].list")
    return problems


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _dataset_problems(dataset: dict, key: str) -> list[str]:
    kind = dataset["kind"]
    if kind == "cifar100":
        folder = archive_folder(_path(dataset["root"]))
        missing = [name for name in ARCHIVE_FILES if not (folder / name).is_file()]
        if missing and not dataset["download"]:
            return [f"{key}.root: no CIFAR-100 at {folder} (missing {', '.join(missing)}); set root to the "
                    f"folder that holds {ARCHIVE_FOLDER}/ (e.g. root: ../shared/datasets), or download: true"]
        if _path(dataset["root"]).is_file():
            return [f"{key}.root: {dataset['root']} is a file; give a folder (CIFAR-100 is downloaded into it)"]
        return []
    if kind == "folder":
        root = _path(dataset["root"])
        if not root.is_dir():
            return [f"{key}.root: no folder {root}; give the folder that holds the images, one sub-folder "
                    f"per class"]
        missing = [split for split in dataset.get("splits") or () if not (root / split).is_dir()]
        if missing:
            present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            return [f"{key}.splits: no sub-folder {', '.join(missing)} in {root} (splits name sub-folders of "
                    f"root); its sub-folders are: {', '.join(present) or 'none'}"]
        return []
    if kind == "imagenet":
        problems = _imagenet_root_problem(dataset["root"], f"{key}.root")
        if dataset.get("wnids"):
            problems += _wnid_list_problem(dataset["wnids"], f"{key}.wnids")
        return problems
    if kind == "huggingface":
        problems = []
        path = dataset.get("path")
        if path and looks_like_path(path) and not _path(path).exists():
            problems.append(f"{key}.path: no file or folder {_path(path)}; give a save_to_disk folder, a "
                            f"folder of parquet files or a .parquet file, or a hub id such as ILSVRC/imagenet-1k")
        for split, patterns in (dataset.get("data_files") or {}).items():
            for pattern in [patterns] if isinstance(patterns, str) else patterns:
                if "://" not in pattern and not glob.glob(str(_path(pattern))):
                    problems.append(f"{key}.data_files.{split}: {pattern!r} matches no file (relative paths "
                                    f"start in {Path.cwd()})")
        return problems
    return []


def _backbone_problems(backbone: dict, key: str) -> list[str]:
    weights = backbone.get("weights")
    if weights:
        try:
            resolve_weights_file(weights)
        except FileNotFoundError:
            return [f"{key}.weights: no file {_path(weights).absolute()}; give a weights file "
                    f"({', '.join(WEIGHT_SUFFIXES)}) or package:NAME of an installed Python package that ships one"]
        except BackboneLoadError as error:
            return [f"{key}.weights: {error}"]
    model = backbone["model"]
    if backbone["kind"] in HF_MODEL_KINDS and looks_like_path(model) and not _path(model).is_dir():
        return [f"{key}.model: no folder {_path(model)}; give a folder saved with save_pretrained, or a hub "
                f"id such as facebook/dinov2-small"]
    if backbone["kind"] == "timm" and model.startswith("local-dir:"):
        folder = _path(model.removeprefix("local-dir:"))
        if not folder.is_dir():
            return [f"{key}.model: no folder {folder}; local-dir: takes a folder with timm's config.json "
                    f"and weights"]
    return []


def _imagenet_root_problem(root: str, key: str) -> list[str]:
    if not _path(root).is_dir():
        return [f"{key}: no folder {_path(root)}; give the ImageNet copy, the folder that holds "
                f"LOC_synset_mapping.txt and train/, val/ (or ILSVRC/Data/CLS-LOC/)"]
    try:
        locate(_path(root))
    except FileNotFoundError as error:
        return [f"{key}: {error}"]
    return []


def _wnid_list_problem(value: str, key: str) -> list[str]:
    try:
        resolve_wnid_list(value)
    except FileNotFoundError as error:
        return [f"{key}: {error}"]
    return []
