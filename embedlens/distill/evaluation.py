"""The distilled set measured against honest baselines: the classifier trained from scratch on (a) the
distilled set, (b) a random real subset of the same size, (c) the class centroids and (d) every fit row.

Every choice is made on the validation part, never on the test split: each set's learning rate and
epochs are chosen among the candidates of ``eval_lr`` x ``eval_epochs`` ((b), (c); (a) trains at its
learned rate, so only its epochs are chosen) and ``full_lr`` x ``full_epochs`` ((d)) by the validation
accuracy of one training (seed ``seed``). Then each set is trained with its choice over ``eval_seeds``
seeds and tested once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from embedlens.distill.data import LabelledFeatures
from embedlens.distill.matching import Distilled
from embedlens.distill.settings import DistillSettings
from embedlens.distill.training import accuracy, initial_positions, sgd_train
from embedlens.geometry import class_centroids

SETS = (("distilled", "(a) distilled"), ("random", "(b) random real subset"), ("centroids", "(c) class centroids"),
        ("full", "(d) every fit row of the train split"))
EVALUATION_COLUMNS = ["set", "seed", "vectors", "learning_rate", "epochs", "accuracy"]
CHOICE_COLUMNS = ["set", "learning_rate", "epochs", "validation_accuracy", "chosen"]


def candidates(distilled: Distilled, settings: DistillSettings) -> dict[str, list[tuple[float, int]]]:
    """The (learning rate, epochs) candidates of each set, in the settings' order."""
    baseline = [(lr, epochs) for lr in settings.eval_lr for epochs in settings.eval_epochs]
    return {"distilled": [(distilled.learned_lr, epochs) for epochs in settings.eval_epochs],
            "random": baseline, "centroids": baseline,
            "full": [(lr, epochs) for lr in settings.full_lr for epochs in settings.full_epochs]}


def training_sets(distilled: Distilled, fit: LabelledFeatures, settings: DistillSettings, offset: int
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Features and labels of each set for seed ``seed + offset`` (which draws the random subset's
    ``per_class`` real vectors of each class)."""
    subset = initial_positions(fit.labels, np.unique(fit.labels), settings.per_class,
                               np.random.default_rng([settings.seed, offset]))
    centroids = class_centroids(fit.features, fit.labels)
    return {"distilled": (distilled.features, distilled.labels), "random": (fit.features[subset], fit.labels[subset]),
            "centroids": (centroids.vectors, centroids.labels), "full": (fit.features, fit.labels)}


def _trained_accuracy(distilled: Distilled, data: tuple[np.ndarray, np.ndarray], rows: LabelledFeatures,
                      num_classes: int, settings: DistillSettings, device: torch.device, *, lr: float, epochs: int,
                      seed: int) -> float:
    standardizer = distilled.standardizer
    features, labels = data
    model, _ = sgd_train(torch.as_tensor(standardizer.forward(features), device=device),
                         torch.as_tensor(labels, dtype=torch.int64, device=device), num_classes, settings,
                         lr=lr, epochs=epochs, seed=seed)
    return accuracy(model, torch.as_tensor(standardizer.forward(rows.features), device=device),
                    torch.as_tensor(rows.labels, dtype=torch.int64, device=device))


def choose_training(distilled: Distilled, fit: LabelledFeatures, validation: LabelledFeatures, num_classes: int,
                    settings: DistillSettings, device: torch.device, *, sets: Sequence[str] = tuple(dict(SETS)),
                    progress: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Each set's learning rate and epochs, chosen on ``validation``: one row per set and candidate
    (:data:`CHOICE_COLUMNS`), the validation accuracy of the classifier trained with it (seed
    ``seed``), and ``chosen`` on the best of each set (the first best, in the settings' order). A set
    with one candidate is not trained here; without validation rows the first candidate is taken and
    the accuracies are NaN (:func:`choice_note` says so)."""
    data = training_sets(distilled, fit, settings, 0)
    rows = []
    for name in sets:
        options = candidates(distilled, settings)[name]
        scores = [float("nan") if len(options) == 1 or not len(validation.labels) else
                  _trained_accuracy(distilled, data[name], validation, num_classes, settings, device, lr=lr,
                                    epochs=epochs, seed=settings.seed) for lr, epochs in options]
        best = int(np.argmax(scores)) if np.isfinite(scores).all() else 0
        for position, ((lr, epochs), score) in enumerate(zip(options, scores)):
            row = {"set": name, "learning_rate": lr, "epochs": epochs, "validation_accuracy": score,
                   "chosen": position == best}
            rows.append(row)
            if progress is not None:
                progress(row)
    return pd.DataFrame(rows, columns=CHOICE_COLUMNS)


def chosen_training(choices: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """``{set: (learning rate, epochs)}`` of the rows :func:`choose_training` chose."""
    chosen = choices[choices["chosen"]]
    return {row.set: (float(row.learning_rate), int(row.epochs)) for row in chosen.itertuples()}


def evaluate(distilled: Distilled, fit: LabelledFeatures, test: LabelledFeatures, num_classes: int,
             settings: DistillSettings, device: torch.device, chosen: Mapping[str, tuple[float, int]], *,
             progress: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Test accuracy of the classifier trained from scratch on each set of ``chosen`` with its chosen
    learning rate and epochs (:func:`chosen_training`), one row per set and seed
    (:data:`EVALUATION_COLUMNS`; ``eval_seeds`` seeds, ``seed + s``). The seed draws the initialisation
    and the shuffling, and for the random subset also which real vectors it holds. ``progress`` gets
    each row."""
    rows = []
    for offset in range(settings.eval_seeds):
        seed = settings.seed + offset
        data = training_sets(distilled, fit, settings, offset)
        for name in [name for name, _ in SETS if name in chosen]:
            lr, epochs = chosen[name]
            row = {"set": name, "seed": seed, "vectors": len(data[name][1]), "learning_rate": lr, "epochs": epochs,
                   "accuracy": _trained_accuracy(distilled, data[name], test, num_classes, settings, device, lr=lr,
                                                 epochs=epochs, seed=seed)}
            rows.append(row)
            if progress is not None:
                progress(row)
    return pd.DataFrame(rows, columns=EVALUATION_COLUMNS)


def summarize_evaluation(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per set (in :data:`SETS` order): ``set, description, vectors, learning_rate, epochs,
    accuracy_mean, accuracy_std`` (ddof 1; 0 for one seed) and ``seeds``."""
    grouped = per_seed.groupby("set", sort=False)
    table = pd.DataFrame({"vectors": grouped["vectors"].first(), "learning_rate": grouped["learning_rate"].first(),
                          "epochs": grouped["epochs"].first(), "accuracy_mean": grouped["accuracy"].mean(),
                          "accuracy_std": grouped["accuracy"].std().fillna(0.0), "seeds": grouped["seed"].nunique()})
    descriptions = dict(SETS)
    table = table.reindex([name for name, _ in SETS if name in table.index])
    table.insert(0, "description", [descriptions[name] for name in table.index])
    return table.rename_axis("set").reset_index()


def beats_random(table: pd.DataFrame) -> bool:
    """Whether the distilled set beats the random real subset beyond the seeds' spread: its mean less
    its std lies above the subset's mean plus its std."""
    by_set = table.set_index("set")
    distilled, random = by_set.loc["distilled"], by_set.loc["random"]
    return bool(distilled["accuracy_mean"] - distilled["accuracy_std"] > random["accuracy_mean"] + random["accuracy_std"])
