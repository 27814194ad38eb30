"""Out-of-fold class probabilities of every row, the input cleanlab needs, at any size: one pipeline for
the classifier's cross-validation (its MLP) and the audit's label check (a softmax probe).

:func:`out_of_fold` splits the rows into K stratified, seeded folds and fits them one after the other
with the caller's model (``fit_fold``); each fold's held-out rows are predicted in batches of
:data:`PREDICT_ROWS` and written straight into one float32 (N, C) array, on disk (a memory-mapped
``probabilities.npy`` in ``folder``) when a folder is given. A fold that is done leaves a marker
beside it, so a killed run resumes at the first fold not done; markers of other data or settings
(their ``key`` differs) are ignored and the folds are fitted again.

:func:`softmax_probe` is the audit's model: a softmax classifier on L2-normalised, standardised rows
(normalised batch by batch, so no normalised copy of the features is made; each fold's own training
rows give the mean and deviation), trained with minibatch Adam and a cosine learning rate on the GPU
when there is one. Without a hidden layer it is multinomial logistic regression (a linear probe);
with one (``hidden`` units, ReLU, dropout; :func:`embedlens.networks.build_mlp`) it draws the curved
class boundaries a linear probe cannot, and ``ensemble`` members (other seeds: other initial weights
and batch orders) average their probabilities, which tempers each one's confident mistakes. Every
member trains on every row of the other folds. Its L2 penalty is scikit-learn's
``LogisticRegression(C)`` one, ``||W||^2 / (2 C n)`` on the mean loss over n rows (summed over the
layers' weights), so ``C`` means what it meant for the scikit-learn probe this replaces.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold
from torch import nn

from embedlens.atomic import write_text_atomic
from embedlens.networks import build_mlp

PREDICT_ROWS = 8192  # held-out rows predicted per batch
PROBABILITIES_FILE = "probabilities.npy"

# fit_fold(fold, train_rows) -> (predict, details): predict(rows) gives the (len(rows), C) float32
# probabilities of rows (positions 0..N-1); details is a JSON-friendly dict kept per fold.
FitFold = Callable[[int, np.ndarray], tuple[Callable[[np.ndarray], np.ndarray], dict]]


@dataclass
class OutOfFold:
    """Row ``i``'s probabilities come from the fit of the fold that held it out."""

    probabilities: np.ndarray  # (N, C) float32, memory-mapped from the folder's file when one was given
    folds: np.ndarray          # (N,) int64, 1..K: the fold each row was held out in
    details: list[dict]        # fit_fold's details, per fold
    resumed_folds: int         # folds read back from an earlier, killed run


def _marker(folder: Path, fold: int) -> Path:
    return folder / f"fold-{fold}.json"


def _probability_file(folder: Path, rows: int, classes: int, key: str, folds: int) -> tuple[np.ndarray, dict]:
    """The folder's probabilities file (reopened when its markers carry ``key``, else made anew) and
    the details of the folds already done."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PROBABILITIES_FILE
    done = {}
    for fold in range(1, folds + 1):
        if _marker(folder, fold).is_file():
            saved = json.loads(_marker(folder, fold).read_text())
            if saved.get("key") == key:
                done[fold] = saved["details"]
    if done and path.is_file():
        probabilities = np.load(path, mmap_mode="r+")
        if probabilities.shape == (rows, classes) and probabilities.dtype == np.float32:
            return probabilities, done
    for fold in range(1, folds + 1):
        _marker(folder, fold).unlink(missing_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, classes)), {}


def out_of_fold(targets: np.ndarray, num_classes: int, folds: int, seed: int, fit_fold: FitFold, *,
                folder: str | Path | None = None, key: str = "",
                progress: Callable[[int, dict], None] | None = None) -> OutOfFold:
    """Out-of-fold probabilities of ``num_classes`` classes for rows with ``targets`` (N,) in
    ``0..C-1`` (every class at least ``folds`` rows): ``folds``-fold stratified K-fold seeded by
    ``seed``, folds fitted one after the other by ``fit_fold``. ``folder``: where the probabilities
    and the fold markers go (see the module docstring), resumed when the markers carry ``key`` (the
    fingerprint of the data and settings); None keeps them in memory. ``progress(fold, details)``
    follows every fold."""
    targets = np.asarray(targets)
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(targets)), targets)
    assignment = np.zeros(len(targets), np.int64)
    if folder is None:
        probabilities, done = np.zeros((len(targets), num_classes), np.float32), {}
    else:
        probabilities, done = _probability_file(Path(folder), len(targets), num_classes, key, folds)
    details = []
    for fold, (train_rows, held_out) in enumerate(splits, start=1):
        assignment[held_out] = fold
        if fold in done:
            details.append(done[fold])
            continue
        predict, detail = fit_fold(fold, train_rows)
        for start in range(0, len(held_out), PREDICT_ROWS):
            part = held_out[start:start + PREDICT_ROWS]
            probabilities[part] = predict(part)
        if folder is not None:
            probabilities.flush()
            write_text_atomic(_marker(Path(folder), fold), json.dumps({"key": key, "details": detail}) + "\n")
        details.append(detail)
        if progress is not None:
            progress(fold, detail)
    return OutOfFold(probabilities, assignment, details, len(done))


@dataclass(frozen=True)
class ProbeSettings:
    """The softmax probe's model and training: L2 penalty as scikit-learn's C, epochs (more when they
    make fewer than ``min_steps`` steps), batch size, peak learning rate (Adam, cosine to 0), seed;
    hidden units (0: a linear probe), their dropout, and how many members (seeds) are averaged."""

    regularization: float
    epochs: int
    min_steps: int    # at least this many optimiser steps: on few rows, more epochs
    batch_size: int
    learning_rate: float
    seed: int
    hidden: int
    dropout: float
    ensemble: int


def softmax_probe(features: np.ndarray, targets: np.ndarray, num_classes: int, settings: ProbeSettings,
                  device: torch.device, *, positions: np.ndarray | None = None) -> FitFold:
    """The ``fit_fold`` of :func:`out_of_fold` for a softmax probe on ``features`` (raw; row
    ``positions[i]`` is row ``i`` of the folds, default the rows themselves) with ``targets``. On a
    CUDA device the rows are moved there once and every batch is gathered there."""
    positions = np.arange(len(targets)) if positions is None else np.asarray(positions, np.int64)
    labels = torch.as_tensor(np.asarray(targets, np.int64), device=device)
    on_device = torch.as_tensor(features, device=device) if device.type == "cuda" else None
    dim = features.shape[1]
    hidden = [settings.hidden] if settings.hidden > 0 else []

    def rows_of(rows: np.ndarray) -> torch.Tensor:
        """Rows ``rows`` of the folds on the device, L2-normalised."""
        if on_device is not None:
            block = on_device[torch.as_tensor(positions[rows], device=device)].float()
        else:
            block = torch.as_tensor(np.asarray(features[positions[rows]], np.float32)).to(device)
        return F.normalize(block, dim=1)

    def standardiser(train_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and deviation (1 where constant) of the normalised training rows, per dimension."""
        total, squares = torch.zeros(dim, dtype=torch.float64, device=device), None
        for start in range(0, len(train_rows), PREDICT_ROWS):
            block = rows_of(train_rows[start:start + PREDICT_ROWS]).double()
            total += block.sum(dim=0)
            squares = block.pow(2).sum(dim=0) + (0 if squares is None else squares)
        mean = total / len(train_rows)
        std = (squares / len(train_rows) - mean.pow(2)).clamp_min(0).sqrt()
        return mean.float(), torch.where(std > 0, std, torch.ones_like(std)).float()

    def train_member(train_rows: np.ndarray, mean: torch.Tensor, std: torch.Tensor, seed: int
                     ) -> tuple[nn.Module, int, float]:
        """One member trained on ``train_rows``: the model, its epochs and its last minibatch loss."""
        torch.manual_seed(seed)
        model = build_mlp(dim, hidden, num_classes, settings.dropout).to(device)
        weights = [layer.weight for layer in model if isinstance(layer, nn.Linear)]
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
        per_epoch = -(-len(train_rows) // settings.batch_size)
        epochs = max(settings.epochs, -(-settings.min_steps // per_epoch))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * per_epoch)
        penalty = 1.0 / (2.0 * settings.regularization * len(train_rows))
        shuffle = torch.Generator().manual_seed(seed)
        loss = torch.zeros(())
        for _ in range(epochs):
            order = train_rows[torch.randperm(len(train_rows), generator=shuffle).numpy()]
            for start in range(0, len(order), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                logits = model((rows_of(batch) - mean) / std)
                loss = F.cross_entropy(logits, labels[batch]) + penalty * sum(w.pow(2).sum() for w in weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
        return model.eval(), epochs, float(loss.detach())

    def fit_fold(fold: int, train_rows: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
        mean, std = standardiser(train_rows)
        # member 0 of fold k has seed seed + k, as the single probe always had; further members step by 1000
        members = [train_member(train_rows, mean, std, settings.seed + fold + 1000 * member)
                   for member in range(settings.ensemble)]

        def predict(rows: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                block = (rows_of(rows) - mean) / std
                return (sum(torch.softmax(model(block), dim=1) for model, _, _ in members) / len(members)).cpu().numpy()

        return predict, {"fold": fold, "train_rows": int(len(train_rows)), "epochs": members[0][1],
                         "last_loss": float(np.mean([loss for _, _, loss in members]))}

    return fit_fold
