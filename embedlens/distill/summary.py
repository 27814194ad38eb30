"""The distillation stage's ``distill.json`` (what the evaluation found and what it chose on what) and
its ``summary.json``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from embedlens.distill.evaluation import beats_random
from embedlens.distill.matching import Distilled
from embedlens.distill.settings import DistillSettings
from embedlens.summary import Artifact, StageSummary, blank_images_note


def choice_note(choices: pd.DataFrame, validation_images: int, settings: DistillSettings) -> str:
    """One sentence: what each set's learning rate and epochs were chosen on, and what was chosen."""
    chosen = choices[choices["chosen"]]
    picked = "; ".join(f"{row.set} lr {row.learning_rate:.4g}, {row.epochs} epochs"
                       + (f" (validation accuracy {row.validation_accuracy:.4f} of "
                          f"{int((choices['set'] == row.set).sum())} candidates)"
                          if np.isfinite(row.validation_accuracy) else " (its only candidate)")
                       for row in chosen.itertuples())
    if not validation_images and (choices.groupby("set").size() > 1).any():
        return (f"Nothing could be chosen: the validation part is empty (distill.val_fraction "
                f"{settings.val_fraction:g} of classes too small to split), so each set took its first candidate: {picked}. The test split "
                "was used once.")
    return (f"Learning rates and epochs were chosen on a validation part of {validation_images} train images "
            f"(distill.val_fraction {settings.val_fraction:g} of each class, seeded, stratified; never the test "
            f"split), by the validation accuracy of one training per candidate: {picked}. The test split was used "
            "once, with these choices.")


def distill_document(distilled: Distilled, table: pd.DataFrame, choices: pd.DataFrame, settings: DistillSettings, *,
                     train_images: int, validation_images: int, classes: int, label_source: str,
                     evaluation_seconds: float) -> dict:
    """What ``distill.json`` records: the settings, the label source, each set's test accuracy (mean,
    std, seeds) with the learning rate and epochs chosen for it and their validation accuracy, what was
    chosen on (``choice``), the compression ratio (fit rows of the train split per distilled vector),
    the share of the full fit's accuracy the distilled set keeps, whether it beats the random subset,
    and the run times."""
    by_set = table.set_index("set")
    full = by_set.loc["full", "accuracy_mean"]
    chosen = choices[choices["chosen"]].set_index("set")
    return {"label_source": label_source, "classes": classes, "per_class": settings.per_class,
            "vectors": int(len(distilled.labels)), "train_images": int(train_images),
            "validation_images": int(validation_images),
            "compression_ratio": round(train_images / len(distilled.labels), 2),
            "learned_lr": distilled.learned_lr,
            "accuracy": {name: {"description": row["description"], "mean": row["accuracy_mean"],
                                "std": row["accuracy_std"], "seeds": int(row["seeds"]), "vectors": int(row["vectors"]),
                                "learning_rate": row["learning_rate"], "epochs": int(row["epochs"]),
                                "validation_accuracy": (None if np.isnan(chosen.loc[name, "validation_accuracy"])
                                                        else round(float(chosen.loc[name, "validation_accuracy"]), 4)),
                                "candidates": int((choices["set"] == name).sum())}
                         for name, row in by_set.iterrows()},
            "choice": choice_note(choices, validation_images, settings),
            "accuracy_kept": round(float(by_set.loc["distilled", "accuracy_mean"] / full), 4) if full > 0 else None,
            "beats_random": beats_random(table),
            "seconds": {"distillation": round(distilled.seconds, 1), "evaluation": round(evaluation_seconds, 1)},
            "settings": settings.as_dict()}


def distill_summary(document: Mapping, neighbours: Mapping, *, dataset: str, backbone: str) -> StageSummary:
    """The stage's ``summary.json`` from ``distill.json`` (:func:`distill_document`) and the nearest-image
    figures (``neighbours``: ``{"k", "same_class", "vectors_drawn", "blank_images"}``)."""
    accuracy_of = document["accuracy"]
    distilled, random = accuracy_of["distilled"], accuracy_of["random"]
    centroids, full = accuracy_of["centroids"], accuracy_of["full"]
    headline = {"per_class": document["per_class"], "vectors": document["vectors"],
                "compression_ratio": document["compression_ratio"], "accuracy": round(distilled["mean"], 4),
                "random_accuracy": round(random["mean"], 4), "centroid_accuracy": round(centroids["mean"], 4),
                "full_accuracy": round(full["mean"], 4), "accuracy_kept": document["accuracy_kept"],
                "beats_random": document["beats_random"]}

    def figure(entry: Mapping) -> str:
        return f"{entry['mean']:.4f} ± {entry['std']:.4f}"

    margin = distilled["mean"] - random["mean"]
    verdict = ("beats the random real subset beyond the seeds' spread, so the distilled set is worth using"
               if document["beats_random"] else
               "does NOT beat the random real subset beyond the seeds' spread (mean ± std overlap or lie below), "
               "so at these settings a random real subset of the same size serves as well")
    notes = [
        *document.get("notes", []),
        f"Labels: {document['label_source']}. {document['per_class']} synthetic vector(s) per class for "
        f"{document['classes']} classes ({document['vectors']} vectors) stand for {document['train_images']} "
        f"real train images (the train split less its validation part): {document['compression_ratio']:g}x "
        "compression.",
        f"Test accuracy over {distilled['seeds']} seeds (mean ± std): distilled {figure(distilled)}, random real "
        f"subset of the same size {figure(random)}, class centroids {figure(centroids)}, every fit row "
        f"{figure(full)}.",
        f"The distilled set {verdict} (difference of the means {margin:+.4f}).",
        f"It keeps {document['accuracy_kept']:.1%} of the accuracy of every fit row (the replaced repo claimed "
        "50-100x compression with 80-95% of the accuracy kept, without evidence)." if document["accuracy_kept"]
        is not None else "The accuracy of every fit row is 0, so no share of it is kept.",
        f"The distilled set was trained at its learned learning rate {document['learned_lr']:.4g}. "
        + document["choice"],
        f"Of each synthetic vector's {neighbours['k']} nearest real train images, {neighbours['same_class']:.1%} "
        "have the vector's class as their true label.",
        f"Distillation took {document['seconds']['distillation']:.0f} s, the evaluation "
        f"{document['seconds']['evaluation']:.0f} s.",
    ]
    blank = blank_images_note("neighbours.png", neighbours["blank_images"])
    if blank:
        notes.append(blank)
    tables = [
        Artifact("evaluation.csv", "Test accuracy of the classifier trained from scratch on each set, mean and std "
                 "over seeds: (a) the distilled set, (b) a random real subset with as many vectors per class, (c) "
                 "the class centroids, (d) every fit row of the train split; with each set's size and the learning "
                 "rate and epochs chosen for it on the validation part."),
        Artifact("evaluation_seeds.csv", "The same per seed."),
        Artifact("validation.csv", "Every candidate learning rate and epoch count of each set with its validation "
                 "accuracy (one training, seed distill.seed); chosen marks the one each set was tested with."),
        Artifact("neighbours.csv", f"The {neighbours['k']} nearest real train images of every synthetic vector "
                 "(cosine in the store's feature space), with their true class and whether it is the vector's."),
    ]
    figures = [
        Artifact("neighbours.png", f"{neighbours['vectors_drawn']} synthetic vectors (one per class first) and "
                 f"their {neighbours['k']} nearest real train images: what each class was compressed to."),
        Artifact("matching_loss.png", "The trajectory-matching loss per iteration (parameter distance after the "
                 "synthetic steps over the expert's own distance; below 1 the synthetic steps get closer to the "
                 "expert than standing still)."),
    ]
    return StageSummary(stage="distill", title="Distillation", dataset=dataset, backbone=backbone,
                        headline=headline, tables=tables, figures=figures, notes=notes, settings=document["settings"])
