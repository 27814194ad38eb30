"""Split roles and per-dataset stage settings: which split a stage fits on, which it reports on, and
whether it can run on a dataset at all.

Every dataset has a *fit* split and, when it has more than one split, an *evaluation* split
(:func:`split_roles`): its ``fit_split`` / ``eval_split`` when the entry names them, else ``train``
(or the first split) and the first of ``test``, ``val``, ``validation`` (or the split listed after
the fit split). A stage's settings for one dataset (:func:`stage_settings`) are looked up in this
order: the dataset entry's own section for the stage (``datasets[i].audit: {query_split: val}``), the
stage's section of the config, and, for a split setting left null there, the dataset's role.

A dataset without an evaluation split still runs every stage: the classifier and distillation test on
a seeded, stratified hold-out of the fit split (:func:`stratified_holdout`, the dataset's
``holdout_fraction``), the clustering is scored on the fit split itself (it sees no labels), and the
audit searches for repeats within the one split.

Whether a stage can run on a dataset is decided before any job, from the images per split and class
that the manifest job records in ``dataset.json`` (:func:`skip_reason`): a stage that cannot run
writes its ``summary.json`` with ``status: skipped`` and that one sentence; a setting the user wrote
that can never work for the data stops the run (:class:`SettingError`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# The analysis stages whose settings a dataset entry may override, each a section of the config.
STAGES = ("overlap", "classify", "cluster", "novelty", "audit", "distill")
# Settings that name one split, with the role that fills them when they are null.
SPLIT_ROLES = {
    "classify": {"train_split": "fit", "test_split": "evaluation"},
    "cluster": {"train_split": "fit", "test_split": "evaluation"},
    "distill": {"train_split": "fit", "test_split": "evaluation"},
    "audit": {"reference_split": "fit", "query_split": "evaluation"},
}
# Stages that test a supervised model and so carve a hold-out when their test split is their train split.
HOLDOUT_STAGES = ("classify", "distill")
EVALUATION_NAMES = ("test", "val", "validation")
FIT_NAME = "train"
# Dataset keys that only the stages read: changing them never rescans or re-embeds a dataset.
ROLE_KEYS = ("fit_split", "eval_split", "holdout_fraction")


class SettingError(ValueError):
    """A setting the user wrote can never work for the data; the message names the key."""


@dataclass(frozen=True)
class SplitRoles:
    """The split a dataset's stages fit on, and the one they report on (None: the dataset has one split)."""

    fit: str
    evaluation: str | None


def split_roles(dataset: Mapping, splits: Sequence[str]) -> SplitRoles:
    """The roles of ``splits`` (the dataset's splits, in order) for the dataset entry ``dataset``."""
    name = dataset["name"]
    for key in ("fit_split", "eval_split"):
        if dataset.get(key) is not None and dataset[key] not in splits:
            raise SettingError(f"datasets[{name}].{key}: {dataset[key]!r} is not a split of dataset {name!r}; "
                               f"its splits: {', '.join(splits) or 'none'}")
    fit = dataset.get("fit_split") or (FIT_NAME if FIT_NAME in splits else splits[0])
    evaluation = dataset.get("eval_split")
    if evaluation is None:
        named = [split for split in EVALUATION_NAMES if split in splits and split != fit]
        after = list(splits)[list(splits).index(fit) + 1:]
        evaluation = named[0] if named else (after[0] if after else None)
    if evaluation == fit:
        raise SettingError(f"datasets[{name}]: fit_split and eval_split are both {fit!r}; leave eval_split out "
                           f"to hold out holdout_fraction of {fit!r} instead")
    return SplitRoles(fit, evaluation)


def image_keys(dataset: Mapping) -> dict:
    """The dataset entry less its split roles and stage settings: what its scan and features depend on."""
    return {key: value for key, value in dataset.items() if key not in ROLE_KEYS and key not in STAGES}


def merged(base: Mapping, override: Mapping) -> dict:
    """``base`` with ``override`` merged in key by key (nested mappings too), as new dicts."""
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def with_roles(stage: str, section: Mapping, roles: SplitRoles, holdout_fraction: float) -> dict:
    """The stage's ``section`` with every null split setting set from ``roles``: an evaluation split
    that the dataset lacks becomes the fit split (a hold-out, for the stages that test a model), the
    overlap centroids default to the fit split. The classifier and distillation also get the
    dataset's ``holdout_fraction``."""
    settings = copy.deepcopy(dict(section))
    for key, role in SPLIT_ROLES.get(stage, {}).items():
        if settings.get(key) is None:
            settings[key] = roles.fit if role == "fit" else (roles.evaluation or roles.fit)
    if stage == "overlap" and settings.get("splits") is None:
        settings["splits"] = [roles.fit]
    if stage in HOLDOUT_STAGES:
        settings["holdout_fraction"] = holdout_fraction
    return settings


def stage_defaults(stage: str, roles: SplitRoles) -> dict:
    """The schema's defaults of the stage's section for a dataset whose splits have ``roles`` (and the
    schema's hold-out fraction): the settings code outside the workflow (benchmarks, notebooks) starts from."""
    from embedlens.config import load_schema, section_defaults

    holdout = load_schema()["properties"]["datasets"]["items"]["properties"]["holdout_fraction"]["default"]
    return with_roles(stage, section_defaults(stage), roles, holdout)


def stage_settings(config: Mapping, stage: str, dataset: Mapping, splits: Sequence[str]) -> dict:
    """The ``stage``'s settings for one dataset entry of a validated ``config`` whose splits are
    ``splits``: the entry's own section over the config's, null split settings from the roles."""
    section = merged(config[stage], dataset.get(stage) or {})
    return with_roles(stage, section, split_roles(dataset, splits), dataset["holdout_fraction"])


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """A seeded, stratified hold-out of ``fraction`` of every class: a boolean mask over ``labels``
    (True: held out) and a note per class too small to split (fewer than 2 images, or a fraction
    that rounds to none of them: such classes stay whole in the fit part). Unlabelled rows (< 0) are
    never held out."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    whole = []
    for label in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == label)
        count = int(math.floor(fraction * len(rows) + 0.5))
        if len(rows) < 2 or count < 1 or count >= len(rows):
            whole.append(int(label))
            continue
        held[rng.choice(rows, size=count, replace=False)] = True
    notes = [f"{len(whole)} class(es) too small to hold out {fraction:g} of stay whole in the fit part "
             f"(labels {', '.join(map(str, whole[:10]))}{', …' if len(whole) > 10 else ''})"] if whole else []
    return held, notes


def holdout_note(split: str, fraction: float, held: int, kept: int) -> str:
    """The sentence a summary carries when a stage tested on a hold-out of its train split."""
    return (f"Tested on a seeded, stratified hold-out of {fraction:g} of split {split!r} ({held} images; "
            f"{kept} left to fit): the dataset has no evaluation split.")


# ---------------------------------------------------------------- what can run on a dataset


def _classes(counts: Mapping[str, Mapping[str, int]], splits: Sequence[str], at_least: int = 1) -> int:
    """Classes with at least ``at_least`` images in ``splits`` together."""
    totals: dict[str, int] = {}
    for split in splits:
        for name, count in counts.get(split, {}).items():
            totals[name] = totals.get(name, 0) + count
    return sum(count >= at_least for count in totals.values())


def _missing_split(stage: str, settings: Mapping, images: Mapping[str, int], dataset: str) -> str | None:
    named = [(key, settings[key]) for key in SPLIT_ROLES.get(stage, {})]
    for key in ("splits", "label_splits"):
        named += [(key, split) for split in settings.get(key) or ()]
    for key, split in named:
        if not images.get(split):
            have = ", ".join(f"{name} ({count})" for name, count in images.items() if count) or "none"
            return (f"{stage}.{key} names split {split!r}, which dataset {dataset!r} does not have (splits with "
                    f"images: {have})")
    return None


def skip_reason(stage: str, settings: Mapping, info: Mapping, dataset: str) -> str | None:
    """Why ``stage`` cannot run on a dataset, in one sentence naming the setting, or None when it can.
    ``settings``: the stage's resolved settings (:func:`stage_settings`); ``info``: the dataset's
    ``images`` per split and ``class_counts`` per split and class (``dataset.json``)."""
    images, counts = info["images"], info.get("class_counts", {})
    missing = _missing_split(stage, settings, images, dataset)
    if missing:
        return missing
    if stage in ("classify", "cluster", "distill"):
        fit = settings["train_split"]
    elif stage == "audit":
        fit = settings["query_split"]
    else:
        fit = None
    if stage == "overlap" and _classes(counts, settings["splits"]) < 2:
        return (f"overlap needs at least two classes with images in overlap.splits ({', '.join(settings['splits'])}); "
                f"dataset {dataset!r} has {_classes(counts, settings['splits'])}")
    if stage in ("classify", "distill") and _classes(counts, [fit], 2) < 2:
        return (f"{stage} needs at least two classes with two or more images in {stage}.train_split ({fit!r}); "
                f"dataset {dataset!r} has {_classes(counts, [fit], 2)}")
    if stage == "cluster":
        clusters = settings["clusters"] or _classes(counts, [fit])
        if clusters < 2:
            return (f"clustering needs cluster.clusters >= 2, or two classes in cluster.train_split ({fit!r}) to "
                    f"count them; dataset {dataset!r} has {_classes(counts, [fit])}")
        if images[fit] <= clusters:
            return f"clustering {images[fit]} {fit!r} images into {clusters} clusters needs more images than clusters"
    if stage == "audit" and images[fit] < 2:
        return f"the audit needs at least two images in audit.query_split ({fit!r}); dataset {dataset!r} has {images[fit]}"
    if stage == "novelty":
        pooled = sum(images[split] for split in (settings.get("splits") or images))
        needed = settings["k_min"] + 2
        if math.floor(settings["fit_fraction"] * pooled) < needed:
            return (f"novelty fits k-means on novelty.fit_fraction ({settings['fit_fraction']:g}) of {pooled} images, "
                    f"fewer than the {needed} that novelty.k_min ({settings['k_min']}) needs")
    return None


def check_settings(stage: str, settings: Mapping, info: Mapping, dataset: str) -> None:
    """Raise :class:`SettingError` for a setting the user wrote that can never work for this dataset
    (e.g. ``novelty.k`` at least the images it would cluster), naming the key and what would work."""
    if stage == "novelty" and settings.get("k") is not None:
        images = info["images"]
        fitted = math.floor(settings["fit_fraction"] * sum(images[s] for s in (settings.get("splits") or images)
                                                           if s in images))
        if settings["k"] >= fitted:
            raise SettingError(f"novelty.k is {settings['k']}, but dataset {dataset!r} gives k-means only {fitted} "
                               f"images to fit (novelty.fit_fraction of its images); set novelty.k below {fitted}, "
                               "or leave it null to find k at the elbow")
