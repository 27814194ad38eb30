"""Trajectory matching: the experts' trajectories on the real features, the synthetic vectors and
learning rate matched to them (checkpointed and resumed), the back-off when it diverges, and the
distilled set saved as plain HDF5."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from torch import nn

from embedlens.atomic import atomic_path
from embedlens.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from embedlens.distill.settings import DISTILL_KEYS, EXPERT_KEYS, DistillInputError, DistillSettings
from embedlens.distill.training import FlatClassifier, build_classifier, initial_positions, sgd_train
from embedlens.geometry import Standardizer

HISTORY_COLUMNS = ["iteration", "matching_loss", "learning_rate"]
DISTILLED_FORMAT = 1


@dataclass
class Distilled:
    """A distilled set: ``features`` (K, D) in the store's feature space, their ``labels`` (K,), the
    learned learning rate, the standardisation the classifier applies, the matching loss per iteration
    and the seconds it took (experts and matching)."""

    features: np.ndarray
    labels: np.ndarray
    learned_lr: float
    standardizer: Standardizer
    history: pd.DataFrame
    seconds: float
    resumed_at_iteration: int = 0

    def save(self, path: str | Path, *, class_names: Sequence[str], info: Mapping) -> None:
        """Write as plain HDF5, atomically: ``features`` (K, D) float32, ``labels`` (K,) int64, ``mean``
        and ``std`` (D,) of the standardisation; attrs ``learned_lr``, ``seconds``, ``format`` and, as
        JSON, ``class_names`` and every entry of ``info`` (the settings, the label source, ...)."""
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
            handle.create_dataset("features", data=self.features.astype(np.float32))
            handle.create_dataset("labels", data=self.labels.astype(np.int64))
            handle.create_dataset("mean", data=self.standardizer.mean)
            handle.create_dataset("std", data=self.standardizer.std)
            handle.create_dataset("history/matching_loss", data=self.history["matching_loss"].to_numpy(np.float64))
            handle.create_dataset("history/learning_rate", data=self.history["learning_rate"].to_numpy(np.float64))
            handle.attrs["format"] = DISTILLED_FORMAT
            handle.attrs["learned_lr"] = float(self.learned_lr)
            handle.attrs["seconds"] = float(self.seconds)
            handle.attrs["class_names"] = json.dumps(list(class_names))
            for key, value in info.items():
                handle.attrs[key] = json.dumps(value)

    @classmethod
    def load(cls, path: str | Path) -> tuple[Distilled, dict]:
        """A saved set and its attributes (JSON ones decoded)."""
        with h5py.File(path, "r") as handle:
            attrs = {key: handle.attrs[key] for key in handle.attrs}
            losses = handle["history/matching_loss"][:]
            history = pd.DataFrame({"iteration": np.arange(1, len(losses) + 1), "matching_loss": losses,
                                    "learning_rate": handle["history/learning_rate"][:]}, columns=HISTORY_COLUMNS)
            distilled = cls(handle["features"][:], handle["labels"][:], float(attrs["learned_lr"]),
                            Standardizer(handle["mean"][:], handle["std"][:]), history, float(attrs["seconds"]))
        decoded = {key: json.loads(value) if isinstance(value, str) else value.item() if hasattr(value, "item")
                   else value for key, value in attrs.items()}
        return distilled, decoded


class Diverged(DistillInputError):
    """The matching diverged (a non-finite loss, or the learned learning rate fell to zero or below)."""


# Each retry of a diverged distillation lowers both matching rates this many times; the rates that work
# scale with the data (a few dozen images diverged at the CIFAR-100 defaults, and at a tenth of them).
BACKOFF_FACTOR = 10.0
BACKOFF_TRIES = 4


def distill_backing_off(features: np.ndarray, labels: np.ndarray, num_classes: int, settings: DistillSettings,
                        device: torch.device, *, checkpoint_dir: str | Path | None = None,
                        progress: Callable[[dict], None] | None = None) -> tuple[Distilled, DistillSettings, list[str]]:
    """:func:`distill`, again with ``lr_features`` and ``lr_lr`` :data:`BACKOFF_FACTOR` times lower each
    time it diverges, :data:`BACKOFF_TRIES` tries in all. Returns the set, the settings that worked and a
    note per back-off; raises :class:`Diverged` when every try diverged."""
    notes = []
    for _ in range(BACKOFF_TRIES):
        try:
            return distill(features, labels, num_classes, settings, device, checkpoint_dir=checkpoint_dir,
                           progress=progress), settings, notes
        except Diverged as error:
            lower = replace(settings, lr_features=settings.lr_features / BACKOFF_FACTOR,
                            lr_lr=settings.lr_lr / BACKOFF_FACTOR)
            notes.append(f"{str(error).split(';')[0].capitalize()} at distill.lr_features "
                         f"{settings.lr_features:g} and lr_lr {settings.lr_lr:g}; retried with {lower.lr_features:g} "
                         f"and {lower.lr_lr:g}.")
            settings = lower
    raise Diverged(" ".join(notes) + " Every try diverged; set distill.lr_features and lr_lr lower still")


def train_experts(features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: DistillSettings
                  ) -> torch.Tensor:
    """The experts' trajectories: (experts, expert_epochs + 1, parameters), expert ``e`` seeded by
    ``seed + e``, trained on the standardised real ``features`` (:func:`sgd_train`)."""
    return torch.stack([torch.stack(sgd_train(features, labels, num_classes, settings, lr=settings.expert_lr,
                                              epochs=settings.expert_epochs, seed=settings.seed + expert,
                                              record=True)[1])
                        for expert in range(settings.experts)])


def distill(features: np.ndarray, labels: np.ndarray, num_classes: int, settings: DistillSettings,
            device: torch.device, *, checkpoint_dir: str | Path | None = None,
            progress: Callable[[dict], None] | None = None) -> Distilled:
    """Distil ``features`` (N, D, the store's space) with ``labels`` (N,) into ``per_class`` vectors of
    every class present (see the module docstring). ``checkpoint_dir``: where the experts'
    trajectories (``experts.pt``, once) and the matching state (``matching.pt``, every
    ``checkpoint_seconds``) are saved and resumed from, so a killed run ends as an uninterrupted one
    (on the CPU). ``progress`` gets each iteration's history row (plus ``phase``), and one row when the
    experts are done."""
    started = time.monotonic()
    labels = np.asarray(labels, dtype=np.int64)
    standardizer = Standardizer.fit(features)
    x_real = torch.as_tensor(standardizer.forward(features), device=device)
    y_real = torch.as_tensor(labels, device=device)
    classes = np.unique(labels)
    rng = np.random.default_rng(settings.seed)
    start_rows = initial_positions(labels, classes, settings.per_class, rng)
    experts_key = fingerprint([settings.key(EXPERT_KEYS), num_classes], features, labels)
    key = fingerprint([settings.key(DISTILL_KEYS), num_classes], features, labels)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    experts_file = checkpoint_dir / "experts.pt" if checkpoint_dir is not None else None
    saved = load_checkpoint(experts_file, experts_key, device)
    if saved is not None:
        trajectories, expert_seconds = saved["trajectories"].to(device), saved["seconds"]
    else:
        trajectories = train_experts(x_real, y_real, num_classes, settings)
        expert_seconds = time.monotonic() - started
        if experts_file is not None:
            save_checkpoint(experts_file, experts_key, device, trajectories=trajectories.cpu(), seconds=expert_seconds)
    if progress is not None:
        progress({"phase": "experts", "experts": settings.experts, "seconds": expert_seconds})

    torch.manual_seed(settings.seed)
    synthetic = x_real[torch.as_tensor(start_rows, device=device)].clone().requires_grad_(True)
    synthetic_labels = torch.as_tensor(labels[start_rows], device=device)
    lr = torch.tensor(settings.expert_lr, device=device, requires_grad=True)
    optimize_features = torch.optim.SGD([synthetic], lr=settings.lr_features, momentum=0.5)
    optimize_lr = torch.optim.SGD([lr], lr=settings.lr_lr, momentum=0.5)
    draws = torch.Generator().manual_seed(settings.seed)
    state = {"iteration": 0, "history": [], "seconds": expert_seconds}
    matching_file = checkpoint_dir / "matching.pt" if checkpoint_dir is not None else None
    saved = load_checkpoint(matching_file, key, device)
    if saved is not None:
        with torch.no_grad():
            synthetic.copy_(saved["synthetic"].to(device))
            lr.copy_(saved["lr"].to(device))
        optimize_features.load_state_dict(saved["optimize_features"])
        optimize_lr.load_state_dict(saved["optimize_lr"])
        draws.set_state(saved["draws"])
        state = saved["state"]
    resumed_at = state["iteration"]
    flat = FlatClassifier(build_classifier(x_real.shape[1], num_classes, settings).to(device))
    last_checkpoint, resumed_clock = time.monotonic(), time.monotonic() - state["seconds"]
    while state["iteration"] < settings.iterations:
        expert = int(torch.randint(settings.experts, (1,), generator=draws))
        epoch = int(torch.randint(settings.max_start_epoch + 1, (1,), generator=draws))
        start = trajectories[expert, epoch]
        target = trajectories[expert, epoch + settings.expert_epochs_to_match]
        parameters = start.clone().requires_grad_(True)
        for _ in range(settings.syn_steps):
            batch = torch.randperm(len(synthetic_labels), generator=draws)[:settings.syn_batch].to(device)
            loss = nn.functional.cross_entropy(flat(parameters, synthetic[batch]), synthetic_labels[batch])
            gradient, = torch.autograd.grad(loss, parameters, create_graph=True)
            parameters = parameters - lr * gradient
        matching = ((parameters - target) ** 2).sum() / ((start - target) ** 2).sum()
        optimize_features.zero_grad(set_to_none=True)
        optimize_lr.zero_grad(set_to_none=True)
        matching.backward()
        optimize_features.step()
        optimize_lr.step()
        state["iteration"] += 1
        row = {"iteration": state["iteration"], "matching_loss": float(matching.detach()), "learning_rate": float(lr.detach())}
        state["history"].append(row)
        state["seconds"] = time.monotonic() - resumed_clock
        if not np.isfinite(row["matching_loss"]) or row["learning_rate"] <= 0:
            raise Diverged(
                f"the distillation diverged at iteration {state['iteration']} (matching loss {row['matching_loss']:.4g}, "
                f"learning rate {row['learning_rate']:.4g}); lower distill.lr_features or distill.lr_lr")
        if matching_file is not None and (state["iteration"] == settings.iterations or
                                          time.monotonic() - last_checkpoint >= settings.checkpoint_seconds):
            save_checkpoint(matching_file, key, device, synthetic=synthetic.detach().cpu(), lr=lr.detach().cpu(),
                            optimize_features=optimize_features.state_dict(), optimize_lr=optimize_lr.state_dict(),
                            draws=draws.get_state(), state=state)
            last_checkpoint = time.monotonic()
        if progress is not None:
            progress({"phase": "matching", **row})
    return Distilled(standardizer.inverse(synthetic.detach().cpu().numpy()), labels[start_rows], float(lr.detach()),
                     standardizer, pd.DataFrame(state["history"], columns=HISTORY_COLUMNS), state["seconds"],
                     resumed_at)
