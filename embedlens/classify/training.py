"""The overlap classifier's model and its training, as in the replaced classifier notebook.

An MLP on frozen features: ``D -> h1 -> ReLU -> Dropout -> h2 -> ReLU -> Dropout -> C`` with the hidden
widths a fraction of the feature dimension (384-256-128 on DINO ViT-S/16). Adam, cross-entropy,
ReduceLROnPlateau on the validation loss, early stopping. The notebook kept a reference to the state
dict it meant to save, so it evaluated the last epoch; here the weights of the epoch with the lowest
validation loss are copied and returned.

A training checkpoints itself atomically at the end of an epoch once ``checkpoint_seconds`` passed
since the last checkpoint, and resumes from it when run again on the same data with the same
training settings: model, optimiser, scheduler, best weights, history and every random state are
restored, so an interrupted run ends with the same weights as an uninterrupted one (on the CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from embedlens.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from embedlens.classify.settings import ClassifySettings
from embedlens.networks import build_mlp
from embedlens.probe import out_of_fold

HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"]
EVAL_BATCH = 4096  # rows per forward pass when only predicting


def hidden_sizes(dim: int, fractions: tuple[float, ...] | list[float]) -> list[int]:
    """Hidden layer widths: each fraction of the feature dimension ``dim``, rounded, at least 1."""
    return [max(1, round(dim * fraction)) for fraction in fractions]


@dataclass
class FitResult:
    """A finished training: the best epoch's weights (on the CPU) and the per-epoch history."""

    state_dict: dict[str, torch.Tensor]
    history: pd.DataFrame  # HISTORY_COLUMNS, one row per epoch run
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_at_epoch: int  # 0 for a fresh start, else the last epoch the checkpoint held


def train_val_split(targets: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and validation rows: stratified by target, seeded (scikit-learn)."""
    positions = np.arange(len(targets))
    train, val = train_test_split(positions, test_size=val_fraction, stratify=targets, random_state=seed)
    return np.sort(train), np.sort(val)


def data_fingerprint(settings: ClassifySettings, num_classes: int, *arrays: np.ndarray) -> str:
    """SHA-256 of the training settings, the class count and the arrays: a checkpoint is resumed only
    when this matches."""
    return fingerprint([settings.training_key(), num_classes], *arrays)


def _evaluate(model: nn.Module, features: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(targets), EVAL_BATCH):
            logits = model(features[start:start + EVAL_BATCH])
            batch = targets[start:start + EVAL_BATCH]
            loss_sum += float(nn.functional.cross_entropy(logits, batch, reduction="sum"))
            correct += int((logits.argmax(dim=1) == batch).sum())
    count = max(len(targets), 1)
    return loss_sum / count, correct / count


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def fit_mlp(train_features: np.ndarray, train_targets: np.ndarray, val_features: np.ndarray,
            val_targets: np.ndarray, num_classes: int, settings: ClassifySettings, device: torch.device, *,
            checkpoint: str | Path | None = None,
            progress: Callable[[dict], None] | None = None) -> FitResult:
    """Train the MLP with the notebook's recipe and return the lowest-validation-loss weights.

    ``checkpoint``: a file to checkpoint to and resume from (see the module docstring); a checkpoint
    of other data or training settings is ignored and overwritten. A finished training leaves a
    checkpoint marked finished, from which a second call returns at once (the caller deletes it when
    the results are safely written). ``progress`` is called with each epoch's history row, after the
    epoch's checkpoint (if any) is written.
    """
    dim = train_features.shape[1]
    key = data_fingerprint(settings, num_classes, train_features, train_targets, val_features, val_targets)
    torch.manual_seed(settings.seed)
    model = build_mlp(dim, hidden_sizes(dim, settings.hidden_fractions), num_classes, settings.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=settings.lr_factor,
                                                           patience=settings.lr_patience)
    shuffle = torch.Generator().manual_seed(settings.seed)
    state = {"epoch": 0, "history": [], "best_state": _cpu_copy(model.state_dict()), "best_val_loss": float("inf"),
             "best_epoch": 0, "bad_epochs": 0, "finished": False, "stopped_early": False}

    checkpoint = Path(checkpoint) if checkpoint is not None else None
    resumed_at = 0
    saved = load_checkpoint(checkpoint, key, device)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        shuffle.set_state(saved["shuffle_rng"])
        state = saved["state"]
        resumed_at = state["epoch"]

    x_train = torch.as_tensor(train_features, dtype=torch.float32, device=device)
    y_train = torch.as_tensor(train_targets, dtype=torch.int64, device=device)
    x_val = torch.as_tensor(val_features, dtype=torch.float32, device=device)
    y_val = torch.as_tensor(val_targets, dtype=torch.int64, device=device)
    last_checkpoint = time.monotonic()
    while not state["finished"]:
        epoch = state["epoch"] + 1
        model.train()
        order = torch.randperm(len(y_train), generator=shuffle).to(device)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            logits = model(x_train[batch])
            loss = nn.functional.cross_entropy(logits, y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(dim=1) == y_train[batch]).sum())
        val_loss, val_accuracy = _evaluate(model, x_val, y_val)
        row = {"epoch": epoch, "train_loss": loss_sum / len(order), "train_accuracy": correct / len(order),
               "val_loss": val_loss, "val_accuracy": val_accuracy,
               "learning_rate": optimizer.param_groups[0]["lr"]}
        scheduler.step(val_loss)
        if val_loss < state["best_val_loss"]:
            state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0,
                         best_state=_cpu_copy(model.state_dict()))
        else:
            state["bad_epochs"] += 1
        state["history"].append(row)
        state["epoch"] = epoch
        state["stopped_early"] = state["bad_epochs"] >= settings.early_stopping_patience
        state["finished"] = state["stopped_early"] or epoch >= settings.max_epochs
        if checkpoint is not None and (state["finished"] or
                                       time.monotonic() - last_checkpoint >= settings.checkpoint_seconds):
            save_checkpoint(checkpoint, key, device, model=model.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), shuffle_rng=shuffle.get_state(), state=state)
            last_checkpoint = time.monotonic()
        if progress is not None:
            progress(row)
    return FitResult(state["best_state"], pd.DataFrame(state["history"], columns=HISTORY_COLUMNS),
                     state["best_epoch"], state["best_val_loss"], state["stopped_early"], resumed_at)


def predict_proba(state_dict: dict[str, torch.Tensor], features: np.ndarray, hidden: list[int], num_classes: int,
                  dropout: float, device: torch.device) -> np.ndarray:
    """Softmax probabilities (N, C) float32 of the MLP with weights ``state_dict``, in eval mode."""
    model = build_mlp(features.shape[1], hidden, num_classes, dropout).to(device)
    model.load_state_dict(state_dict)
    model.eval()
    out = np.empty((len(features), num_classes), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(features), EVAL_BATCH):
            block = torch.as_tensor(features[start:start + EVAL_BATCH], dtype=torch.float32, device=device)
            out[start:start + len(block)] = torch.softmax(model(block), dim=1).cpu().numpy()
    return out


@dataclass
class CrossValResult:
    """Out-of-sample probabilities of every training row: row ``i`` comes from the model of the
    fold that did not see row ``i``."""

    probabilities: np.ndarray  # float32 (N, C)
    folds: np.ndarray          # int64 (N,), the fold each row was held out in
    best_epochs: list[int]


def out_of_fold_probabilities(features: np.ndarray, targets: np.ndarray, num_classes: int,
                              settings: ClassifySettings, device: torch.device, *,
                              checkpoint_dir: str | Path | None = None,
                              progress: Callable[[int, dict], None] | None = None) -> CrossValResult:
    """``settings.folds``-fold stratified, seeded cross-validation through the shared out-of-fold
    pipeline (:func:`embedlens.probe.out_of_fold`: folds one after the other, float32 probabilities
    written as they come). Each fold trains the MLP exactly as :func:`fit_mlp` does, early-stopped on
    a stratified validation part of its own training rows (never on the held-out fold), and predicts
    the held-out fold with its best weights. Each fold checkpoints to ``checkpoint_dir/fold-<k>.pt``
    and the finished folds' probabilities stay in ``checkpoint_dir``, so a killed run resumes at the
    fold and epoch it reached. ``progress(fold, row)`` follows every epoch."""
    hidden = hidden_sizes(features.shape[1], settings.hidden_fractions)

    def fit_fold(fold: int, train_rows: np.ndarray):
        fit_part, val_part = train_val_split(targets[train_rows], settings.val_fraction, settings.seed)
        fit_rows, val_rows = train_rows[fit_part], train_rows[val_part]
        result = fit_mlp(features[fit_rows], targets[fit_rows], features[val_rows], targets[val_rows], num_classes,
                         settings, device,
                         checkpoint=None if checkpoint_dir is None else Path(checkpoint_dir) / f"fold-{fold}.pt",
                         progress=None if progress is None else (lambda row: progress(fold, row)))
        return (lambda rows: predict_proba(result.state_dict, features[rows], hidden, num_classes, settings.dropout,
                                           device)), {"best_epoch": result.best_epoch}

    found = out_of_fold(targets, num_classes, settings.folds, settings.seed, fit_fold, folder=checkpoint_dir,
                        key=data_fingerprint(settings, num_classes, features, targets))
    return CrossValResult(found.probabilities, found.folds, [detail["best_epoch"] for detail in found.details])
