"""TEMI from a split's embeddings to its clusters (:func:`run_temi`), for the workflow and the benchmark
alike: the neighbours and their label agreement, the k-means warm start, the standardisation, the
training (:func:`embedlens.cluster.temi.train_temi`), the heads' outputs, their statistics and the
diagnosis.

The heads' outputs are streamed (:func:`head_outputs`): every head's probabilities are computed
batch by batch and only running statistics and argmaxes are kept, never heads x N x K probabilities,
so the memory is the features plus a few integers per row at any size.

Two failure modes are detected (:func:`diagnose`): the *uniform solution*, where every head gives
every image nearly the same probability for all clusters (the loss then sits near its value for
uniform probabilities, ``-(1/K) * log K**(2 - 2*beta)``: the PMI term ``-log K**(2 - 2*beta)`` times
the weight ``1/K``), and *collapse*, where the images fall into few clusters.

:func:`run_temi` checkpoints atomically: the neighbours and the warm start as soon as they are
computed, the training at the end of the epoch that passes every ``checkpoint_every`` steps. Run again
on the same data and settings it resumes: neighbours and warm start are read, not recomputed; heads,
teacher, optimiser, prior, random state and history are restored, so a resumed run ends with the same
heads as an uninterrupted one (on the CPU).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from embedlens.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from embedlens.cluster.kmeans import cluster_kmeans
from embedlens.cluster.metrics import neighbour_agreement
from embedlens.cluster.settings import KmeansSettings, TemiSettings
from embedlens.cluster.temi import (LOG, PREDICT_BATCH, ClusterHeads, TemiFit, TemiSchedule, load_heads,
                                    neighbour_count, train_temi, uniform_loss)
from embedlens.geometry import BLOCK_ROWS, Standardizer, column_statistics
from embedlens.knn import cosine_topk
from embedlens.store import SplitFeatures

# A head whose mean per-image entropy passes this share of log K is near-uniform: that entropy is an image
# spread evenly over K**0.9 of the K clusters (63 of 100, 8 of 10), i.e. no cluster. Only diagnose's warning reads it.
UNIFORM_ENTROPY = 0.9
LOG_LINES = 20              # run_temi logs about this many epochs of a training


@dataclass
class HeadOutputs:
    """What :func:`head_outputs` keeps of the heads' probabilities over a split."""

    clusters: np.ndarray     # (len(kept heads), N) int64: each kept head's most probable cluster per row
    statistics: list[dict]   # per head (all of them): head, entropy (share of log K), active_clusters


def head_outputs(heads: ClusterHeads, features: np.ndarray, settings: TemiSettings, device: torch.device, *,
                 keep: Sequence[int] | None = None, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 batch_rows: int = PREDICT_BATCH) -> HeadOutputs:
    """Every head's teacher-temperature probabilities for every row of ``features``, ``batch_rows``
    rows at a time (``transform`` applied to each batch first), reduced as they come: the mean
    per-image entropy of each head as a share of log K (1: every image uniform over the clusters), the
    clusters some image is assigned to, and the most probable cluster of the heads ``keep`` (default:
    all)."""
    heads.eval()
    count, clusters = heads.heads, heads.last_direction.shape[2]
    kept = list(range(count)) if keep is None else list(keep)
    assigned = np.zeros((len(kept), len(features)), np.int64)
    entropy = torch.zeros(count, dtype=torch.float64, device=device)
    sizes = torch.zeros(count, clusters, dtype=torch.int64, device=device)
    with torch.no_grad():
        for start in range(0, len(features), batch_rows):
            block = features[start:start + batch_rows]
            block = torch.as_tensor(block if transform is None else transform(block), dtype=torch.float32,
                                    device=device)
            log_p = torch.log_softmax(heads(block) / settings.teacher_temperature, dim=-1)
            entropy -= (log_p.exp() * log_p).sum(dim=(1, 2)).double()
            top = log_p.argmax(dim=-1)  # (heads, B)
            sizes.scatter_add_(1, top, torch.ones_like(top))
            assigned[:, start:start + len(block)] = top[kept].cpu().numpy()
    share = (entropy / max(len(features), 1) / math.log(clusters)).cpu().numpy()
    active = (sizes > 0).sum(dim=1).cpu().numpy()
    return HeadOutputs(assigned, [{"head": h, "entropy": float(share[h]), "active_clusters": int(active[h])}
                                  for h in range(count)])


def diagnose(statistics: list[dict], last_losses: np.ndarray, clusters: int, beta: float) -> list[str]:
    """Warnings about the uniform solution: every head near-uniform (mean entropy above
    :data:`UNIFORM_ENTROPY` of log K), the loss then near :func:`uniform_loss`. Collapse is judged
    from the chosen head's clusters with the other methods' (:func:`embedlens.cluster.results.collapse_warning`)."""
    if not statistics or min(s["entropy"] for s in statistics) < UNIFORM_ENTROPY:
        return []
    return [f"uniform solution: every head gives near-uniform probabilities (mean entropy at least "
            f"{min(s['entropy'] for s in statistics):.2f} of log K); the last epoch's loss, best head "
            f"{float(np.min(last_losses)):.4f}, against {uniform_loss(clusters, beta):.4f} for uniform probabilities "
            "(-(1/K) log K^(2-2beta)). The heads have hardly left the uniform solution; train longer or with a higher "
            "learning rate, or try cluster.temi.warm_start: kmeans."]


def standardize(features: np.ndarray, standardizer: Standardizer) -> np.ndarray:
    """``features`` standardised with ``standardizer``'s statistics into one float32 array, block by block."""
    result = np.empty(features.shape, dtype=np.float32)
    for start in range(0, len(features), BLOCK_ROWS):
        block = np.asarray(features[start:start + BLOCK_ROWS], dtype=np.float32)
        np.divide(block - standardizer.mean, standardizer.std, out=result[start:start + len(block)])
    return result


@dataclass
class TemiRun:
    """What :func:`run_temi` found: the training, the clusters of both splits, the heads' statistics."""

    fit: TemiFit
    clusters: int
    neighbours: int                       # k as mined (see neighbour_count)
    neighbour_agreement: float | None     # share of mined pairs with one label; None without labels
    standardizer: Standardizer | None     # the train split's per-dimension statistics with embed_norm
    train_clusters: np.ndarray            # (N_train,) the best head's cluster of every train image
    test_head_clusters: np.ndarray        # (heads, N_test) every head's cluster of every test image
    statistics: list[dict]                # head_outputs' statistics of the train split
    warnings: list[str]
    notes: list[str]
    seconds: float

    @property
    def test_clusters(self) -> np.ndarray:
        return self.test_head_clusters[self.fit.best_head]

    def document(self, settings: TemiSettings) -> dict:
        """The fit's details for ``fit.json``: the effective k, steps and epochs among them."""
        fit, schedule = self.fit, self.fit.schedule
        return {"method": "temi", "status": "fitted", "clusters": self.clusters, "seconds": round(self.seconds, 1),
                "train_images": len(self.train_clusters), "test_images": self.test_head_clusters.shape[1],
                "neighbours": self.neighbours, "neighbour_agreement": self.neighbour_agreement,
                "heads": settings.heads, "steps": schedule.steps, "epochs": schedule.epochs,
                "steps_per_epoch": schedule.steps_per_epoch, "batch_size": schedule.batch_size,
                "warmup_steps": schedule.warmup_steps, "frozen_steps": schedule.frozen_steps,
                "teacher_momentum": [settings.teacher_momentum, float(fit.history["teacher_momentum"].iloc[-1])],
                "embed_norm": settings.embed_norm, "warm_start": settings.warm_start, "best_head": fit.best_head,
                "final_loss": float(fit.head_losses[-1][fit.best_head]),
                "uniform_loss": uniform_loss(self.clusters, settings.beta), "head_statistics": self.statistics,
                "resumed_at_epoch": fit.resumed_at_epoch, "notes": self.notes, "warnings": self.warnings}


def run_temi(train: SplitFeatures, test: SplitFeatures, clusters: int, settings: TemiSettings,
             kmeans: KmeansSettings, seed: int, device: torch.device, *, checkpoints: str | Path | None = None,
             log: logging.Logger = LOG) -> TemiRun:
    """TEMI from the train split's embeddings to both splits' clusters: k (:func:`neighbour_count`),
    the neighbours and their label agreement, the k-means warm start (``settings.warm_start``, with
    ``kmeans``), the standardisation (``embed_norm``), the training, every head's outputs
    (:func:`head_outputs`), the statistics and the diagnosis (:func:`diagnose`).

    ``checkpoints``: a folder for ``prepared.pt`` (the neighbours and the warm start, written as soon
    as they are computed) and ``train.pt`` (:func:`train_temi`); a second run on the same data and
    settings reads them instead of computing them again. ``log`` gets about :data:`LOG_LINES` lines
    of progress."""
    started = time.monotonic()
    k, notes = neighbour_count(settings, len(train.features), clusters)
    for note in notes:
        log.info("%s", note)
    folder = None if checkpoints is None else Path(checkpoints)
    prepared_key = fingerprint([k, clusters, seed, settings.warm_start, asdict(kmeans)], train.features)
    prepared = load_checkpoint(None if folder is None else folder / "prepared.pt", prepared_key, device)
    if prepared is not None:
        neighbours, warm_start = prepared["neighbours"], prepared["warm_start"]
        log.info("neighbours and warm start read from the checkpoint %s", folder / "prepared.pt")
    else:
        neighbours = cosine_topk(train.features, k=k, device=device).indices  # self excluded
        warm_start = (cluster_kmeans(train.features, clusters, kmeans, seed).train_clusters
                      if settings.warm_start == "kmeans" else None)
        if folder is not None:
            save_checkpoint(folder / "prepared.pt", prepared_key, device, neighbours=neighbours, warm_start=warm_start)
    agreement = neighbour_agreement(neighbours, train.labels)
    log.info("%d train images, %d clusters, %d heads on %s; %d neighbours each (%s share the image's label) in "
             "%.0f s", len(train.features), clusters, settings.heads, device, k,
             "n/a" if agreement is None else f"{agreement:.1%}", time.monotonic() - started)

    standardizer = Standardizer(*column_statistics(train.features)) if settings.embed_norm else None
    seen = train.features if standardizer is None else standardize(train.features, standardizer)
    schedule = TemiSchedule.plan(len(train.features), settings)
    every = max(1, schedule.epochs // LOG_LINES)
    log.info("%d steps: %d epochs of %d batches of %d images", schedule.steps, schedule.epochs,
             schedule.steps_per_epoch, schedule.batch_size)

    def progress(row: dict) -> None:
        if row["epoch"] % every == 0 or row["step"] == schedule.steps:
            log.debug("epoch %(epoch)d, step %(step)d: loss %(loss_mean).4f (best head %(best_head)d: %(loss_best).4f), "
                      "lr %(learning_rate).2e", row)

    fit = train_temi(seen, neighbours, clusters, settings, seed, device, warm_start=warm_start,
                     checkpoint=None if folder is None else folder / "train.pt", progress=progress, log=log)
    heads = load_heads(fit.teacher, settings, device)
    train_outputs = head_outputs(heads, seen, settings, device, keep=[fit.best_head])
    del seen  # the standardised copy of the train split is not needed any more
    warnings = diagnose(train_outputs.statistics, fit.head_losses[-1], clusters, settings.beta)
    for warning in warnings:
        log.warning("%s", warning)
    test_outputs = head_outputs(heads, test.features, settings, device,
                                transform=None if standardizer is None else lambda rows: standardize(rows, standardizer))
    return TemiRun(fit, clusters, k, agreement, standardizer, train_outputs.clusters[0], test_outputs.clusters,
                   train_outputs.statistics, warnings, notes, time.monotonic() - started)
