"""TEMI (Adaloglou et al., BMVC 2023, arXiv 2303.17896) as its official code runs it on precomputed
embeddings: cluster heads trained on frozen embeddings with pairs of nearest neighbours.

- **Pairs.** The ``neighbours`` nearest neighbours of every image are mined once, by cosine similarity
  (on L2-normalised embeddings, the image itself excluded; :func:`embedlens.knn.cosine_topk`). Every
  epoch each image is paired with one of its neighbours drawn at random. The heads see the raw
  embeddings, not the normalised ones, or with ``embed_norm`` (the official ``--embed_norm``) the
  embeddings standardised per dimension with the train split's mean and standard deviation.
  k is lowered where it would exceed ``neighbours_class_fraction`` of the typical class size, the
  train images over K (:func:`neighbour_count`): k = 50 is 10% of a 500-image CIFAR-100 class.
- **Heads.** Each head is ``Linear -> GELU -> Linear`` (hidden 512, bottleneck 256, weights from a
  truncated normal with std 0.02, biases 0), L2 normalisation, then a bias-free weight-normalised last
  layer (``g * v / ||v||``, ``g`` = 1 at the start) to the K cluster logits. ``heads`` heads (16) are
  trained together; they are computed side by side as batched matrix products, which is the same
  arithmetic as a list of separate heads, only faster.
- **Teacher.** An exponential moving average of the student heads with momentum ``teacher_momentum``
  (0.996), constant as in the official command (``--max_momentum_teacher=0.996``); with
  ``teacher_momentum_end`` the momentum follows a cosine to that value instead (DINO's ramp to 1).
- **Loss.** For an image x and its partner x', with student probabilities ``q_s`` (temperature 0.1)
  and teacher probabilities ``q_t`` (temperature 0.1), per head h::

      L_h = -w(x, x') * log sum_k (q_s^h(k|x) * q_t^h(k|x'))**beta / p_h(k)   (and x, x' swapped; averaged)
      w(x, x') = (1/H) sum_h sum_k q_t^h(k|x) * q_t^h(k|x')

  with ``beta`` = 0.6 and ``p_h`` head h's cluster prior: an EMA (``prior_momentum``) of its teacher's
  batch-mean probabilities, updated with each batch before its loss. The weight w is the teacher's
  pair agreement averaged over all H heads (the ensemble in TEMI's name), one weight for every head.
  The heads' losses are averaged.
- **Schedule.** The training is ``steps`` optimiser steps long (4,800: the official 100 epochs of 48
  full batches of 1,024 out of CIFAR's 50,000 images), whatever the number of images; the epochs follow
  from the steps and the split's size (:class:`TemiSchedule`; the last epoch may stop early). AdamW,
  weight decay on the weights only; the learning rate (per 256 images, scaled by the batch size) rises
  linearly from 0 over the first ``warmup_fraction`` of the steps and then follows a cosine to
  ``min_learning_rate``; the last layer is frozen during the first ``freeze_last_layer_fraction`` of
  the steps (the official one epoch of 100); the teacher's momentum schedule spans all the steps.
- **Clusters.** The teacher's head with the lowest mean loss over the last epoch assigns each image
  to its most probable cluster.

Two failure modes are detected (:func:`diagnose`): the *uniform solution*, where every head gives
every image nearly the same probability for all clusters (the loss then sits near its value for
uniform probabilities, ``-(1/K) * log K**(2 - 2*beta)``: the PMI term ``-log K**(2 - 2*beta)`` times
the weight ``1/K``), and *collapse*, where the images fall into few clusters.

:func:`run_temi` chains the whole method (neighbours, their label agreement, the warm start, training,
the heads' probabilities, statistics and diagnosis) for the workflow and the benchmark alike. It
checkpoints atomically: the neighbours and the warm start as soon as they are computed, the training
at the end of the epoch that passes every ``checkpoint_every`` steps. Run again on the same data and
settings it resumes: neighbours and warm start are read, not recomputed; heads, teacher, optimiser,
prior, random state and history are restored, so a resumed run ends with the same heads as an
uninterrupted one (on the CPU).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from embedlens.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from embedlens.cluster.kmeans import fit_kmeans
from embedlens.cluster.metrics import neighbour_agreement
from embedlens.cluster.settings import ClusterInputError, KmeansSettings, TemiSettings
from embedlens.distill import Standardizer
from embedlens.knn import cosine_topk
from embedlens.store import SplitFeatures

HISTORY_COLUMNS = ["epoch", "step", "loss_mean", "loss_best", "best_head", "learning_rate", "teacher_momentum"]
PREDICT_BATCH = 8192        # rows per forward pass when only predicting
# A head whose mean per-image entropy passes this share of log K is near-uniform: that entropy is an image
# spread evenly over K**0.9 of the K clusters (63 of 100, 8 of 10), i.e. no cluster. Only diagnose's warning reads it.
UNIFORM_ENTROPY = 0.9
REFERENCE_BATCH = 256       # the learning rate is given per this many images
LOG_LINES = 20              # run_temi logs about this many epochs of a training
LOG = logging.getLogger("embedlens.cluster.temi")


class ClusterHeads(nn.Module):
    """``heads`` TEMI heads over ``dim``-wide embeddings, each giving ``clusters`` logits.

    ``forward`` maps (B, dim) embeddings to (heads, B, clusters) logits. The first layer of all heads
    is one (dim, heads * hidden) matrix, so a batch goes through it in one product.
    """

    def __init__(self, dim: int, clusters: int, heads: int, hidden: int, bottleneck: int):
        super().__init__()
        self.heads, self.hidden = heads, hidden
        self.hidden_weight = nn.Parameter(torch.empty(dim, heads * hidden))
        self.hidden_bias = nn.Parameter(torch.zeros(heads * hidden))
        self.bottleneck_weight = nn.Parameter(torch.empty(heads, hidden, bottleneck))
        self.bottleneck_bias = nn.Parameter(torch.zeros(heads, 1, bottleneck))
        self.last_direction = nn.Parameter(torch.empty(heads, bottleneck, clusters))
        self.last_gain = nn.Parameter(torch.ones(heads, 1, clusters))
        for weight in (self.hidden_weight, self.bottleneck_weight):
            nn.init.trunc_normal_(weight, std=0.02, a=-2.0, b=2.0)
        bound = 1.0 / math.sqrt(bottleneck)  # nn.Linear's default initialisation of the last layer's v
        nn.init.uniform_(self.last_direction, -bound, bound)

    def last_layer(self) -> list[nn.Parameter]:
        """The weight-normalised last layer's parameters (frozen during the first epochs)."""
        return [self.last_direction, self.last_gain]

    def bottleneck(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck of every head, (heads, B, bottleneck)."""
        rows = len(embeddings)
        hidden = F.gelu(torch.addmm(self.hidden_bias, embeddings, self.hidden_weight))
        hidden = hidden.view(rows, self.heads, self.hidden).transpose(0, 1)
        return F.normalize(torch.baddbmm(self.bottleneck_bias, hidden, self.bottleneck_weight), dim=-1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        weight = self.last_gain * self.last_direction / self.last_direction.norm(dim=1, keepdim=True)
        return torch.bmm(self.bottleneck(embeddings), weight)

    @torch.no_grad()
    def warm_start(self, embeddings: torch.Tensor, clusters: torch.Tensor) -> None:
        """Point the last layer of every head at given clusters (e.g. k-means'): cluster c's direction
        becomes the normalised mean bottleneck of the rows in c, so each head starts by assigning a row
        to the cluster whose members' bottlenecks are nearest its own. Empty clusters keep their random
        direction; the gain g stays 1."""
        sums = torch.zeros(self.heads, self.last_direction.shape[2], self.last_direction.shape[1],
                           device=embeddings.device)
        for start in range(0, len(embeddings), PREDICT_BATCH):
            sums.index_add_(1, clusters[start:start + PREDICT_BATCH],
                            self.bottleneck(embeddings[start:start + PREDICT_BATCH]))
        present = torch.bincount(clusters, minlength=sums.shape[1]) > 0
        directions = F.normalize(sums, dim=-1).transpose(1, 2)  # (heads, bottleneck, clusters)
        self.last_direction[:, :, present] = directions[:, :, present]


def temi_head_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, prior: torch.Tensor,
                     settings: TemiSettings) -> torch.Tensor:
    """The TEMI loss of each head, (heads,), for logits (heads, 2B, K) whose first B rows are the
    images and last B rows their partners; ``prior`` (heads, K) is each head's cluster prior to divide
    by. Every head's pair losses are weighted by :func:`ensemble_weight` of all heads' teachers."""
    half = student_logits.shape[1] // 2
    student = torch.log_softmax(student_logits / settings.student_temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits / settings.teacher_temperature, dim=-1).detach()
    weight = ensemble_weight(teacher)
    log_prior = prior.log()[:, None, :]

    # log sum_k (q_s * q_t)**beta / p(k), computed from log-probabilities: the same value, but a
    # probability that underflows to 0 (large gains g) cannot turn the gradient of x**beta into NaN
    def pmi(student_part: torch.Tensor, teacher_part: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(settings.beta * (student_part + teacher_part) - log_prior, dim=-1)

    pair_loss = -(pmi(student[:, :half], teacher[:, half:]) + pmi(student[:, half:], teacher[:, :half])) / 2
    return (weight * pair_loss).mean(dim=1)


def ensemble_weight(teacher_log_probabilities: torch.Tensor) -> torch.Tensor:
    """TEMI's instance weight of each pair, (B,), from the teacher's log-probabilities (heads, 2B, K)
    (images first, partners last): ``(1/H) sum_h sum_k q_t^h(k|x) q_t^h(k|x')``, the pair's agreement
    averaged over all heads, as the official loss computes it."""
    half = teacher_log_probabilities.shape[1] // 2
    pair = teacher_log_probabilities[:, :half] + teacher_log_probabilities[:, half:]
    return pair.exp().sum(dim=-1).mean(dim=0)


def uniform_loss(clusters: int, beta: float) -> float:
    """The TEMI loss when every probability is 1/K: ``-(1/K) * log K**(2 - 2*beta)``."""
    return -(2.0 - 2.0 * beta) * math.log(clusters) / clusters


def cosine_schedule(start: float, end: float, steps: int, warmup_steps: int = 0) -> np.ndarray:
    """One value per step: a linear rise from 0 to ``start`` over ``warmup_steps``, then a cosine from
    ``start`` towards ``end`` (the official code's, DINO's, schedule)."""
    warmup_steps = min(warmup_steps, steps)
    rest = np.arange(steps - warmup_steps)
    decay = end + 0.5 * (start - end) * (1 + np.cos(np.pi * rest / max(len(rest), 1)))
    return np.concatenate([np.linspace(0.0, start, warmup_steps), decay])


@dataclass(frozen=True)
class TemiSchedule:
    """A training's length in optimiser steps and what follows from it on a split of ``rows`` images:
    the batch (at most the split), the full batches per epoch (the last, incomplete one is dropped, as
    in the official code), the epochs (the last may stop early), the warm-up and frozen steps."""

    steps: int
    batch_size: int
    steps_per_epoch: int
    epochs: int
    warmup_steps: int
    frozen_steps: int  # the last layer is not updated during these first steps

    @classmethod
    def plan(cls, rows: int, settings: TemiSettings) -> TemiSchedule:
        batch_size = min(settings.batch_size, rows)
        per_epoch = rows // batch_size
        return cls(settings.steps, batch_size, per_epoch, math.ceil(settings.steps / per_epoch),
                   round(settings.warmup_fraction * settings.steps),
                   round(settings.freeze_last_layer_fraction * settings.steps))

    def learning_rates(self, settings: TemiSettings) -> np.ndarray:
        """AdamW's learning rate at every step: scaled by batch / 256, warm-up, then a cosine."""
        scale = self.batch_size / REFERENCE_BATCH
        return cosine_schedule(settings.learning_rate * scale, settings.min_learning_rate * scale, self.steps,
                               self.warmup_steps)

    def momenta(self, settings: TemiSettings) -> np.ndarray:
        """The teacher's momentum at every step: constant, or a cosine to ``teacher_momentum_end``."""
        end = settings.teacher_momentum if settings.teacher_momentum_end is None else settings.teacher_momentum_end
        return cosine_schedule(settings.teacher_momentum, end, self.steps)


def neighbour_count(settings: TemiSettings, rows: int, clusters: int) -> tuple[int, list[str]]:
    """k for ``rows`` train images in ``clusters`` clusters, and a note for each time it was lowered:
    ``neighbours``, at most ``neighbours_class_fraction`` of the typical class size rows / clusters
    (without labels, K gives the class size; at least 1), and at most rows - 1."""
    k, notes = settings.neighbours, []
    fraction = settings.neighbours_class_fraction
    if fraction is not None and k > (cap := max(1, int(fraction * rows / clusters))):
        notes.append(f"cluster.temi.neighbours = {k} lowered to {cap}: at most cluster.temi.neighbours_class_fraction "
                     f"= {fraction} of the typical class size ({rows} train images / {clusters} clusters = "
                     f"{rows / clusters:.0f})")
        k = cap
    if k >= rows:  # few images: every other image is a neighbour
        notes.append(f"cluster.temi.neighbours = {k} lowered to {rows - 1}: only {rows} train images")
        k = rows - 1
    return k, notes


@dataclass
class TemiFit:
    """A finished training: the teacher heads (state dict on the CPU), the chosen head and the history."""

    teacher: dict[str, torch.Tensor]
    best_head: int
    history: pd.DataFrame     # HISTORY_COLUMNS, one row per epoch
    head_losses: np.ndarray   # (epochs, heads) mean loss of each head per epoch
    schedule: TemiSchedule
    resumed_at_epoch: int     # 0 for a fresh start, else the epoch the checkpoint held


def build_heads(dim: int, clusters: int, settings: TemiSettings) -> ClusterHeads:
    return ClusterHeads(dim, clusters, settings.heads, settings.hidden_dim, settings.bottleneck_dim)


def train_temi(features: np.ndarray, neighbours: np.ndarray, clusters: int, settings: TemiSettings, seed: int,
               device: torch.device, *, warm_start: np.ndarray | None = None, checkpoint: str | Path | None = None,
               progress: Callable[[dict], None] | None = None, log: logging.Logger = LOG) -> TemiFit:
    """Train TEMI heads on ``features`` (N, D, the embeddings the heads see) with ``neighbours`` (N, k:
    row numbers of each image's nearest neighbours) into ``clusters`` clusters for ``settings.steps``
    steps (see the module docstring).

    ``warm_start``: a cluster (0..K-1) per row, e.g. k-means', that the heads' last layers are pointed
    at before training (:meth:`ClusterHeads.warm_start`); None: the published cold start.

    ``checkpoint``: a file to checkpoint to and resume from (``log`` says so when it resumes); a
    checkpoint of other data or settings is ignored and overwritten; a finished training leaves a
    checkpoint from which a second call returns at once. ``progress`` is called with each epoch's
    history row after its checkpoint is written.
    """
    count = len(features)
    if count < 2 or clusters > count:
        raise ClusterInputError(f"{count} images cannot be clustered into {clusters} clusters; lower cluster.clusters "
                                "or add images")
    schedule = TemiSchedule.plan(count, settings)
    learning_rates, momenta = schedule.learning_rates(settings), schedule.momenta(settings)
    digest = fingerprint([asdict(settings), clusters, seed], features, neighbours,
                         *([] if warm_start is None else [np.asarray(warm_start, np.int64)]))

    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32, device=device)
    student = build_heads(features.shape[1], clusters, settings).to(device)
    if warm_start is not None:
        student.warm_start(x, torch.as_tensor(warm_start, dtype=torch.int64, device=device))
    teacher = build_heads(features.shape[1], clusters, settings).to(device)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    decayed = [p for name, p in student.named_parameters() if "bias" not in name]
    plain = [p for name, p in student.named_parameters() if "bias" in name]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": settings.weight_decay},
                                   {"params": plain, "weight_decay": 0.0}], lr=float(learning_rates[0]))
    draws = torch.Generator().manual_seed(seed)
    state = {"epoch": 0, "step": 0, "history": [], "head_losses": [],
             "prior": torch.full((settings.heads, clusters), 1.0 / clusters)}

    resumed_at = 0
    if (saved := load_checkpoint(checkpoint, digest, device)) is not None:
        student.load_state_dict(saved["student"])
        teacher.load_state_dict(saved["teacher"])
        optimizer.load_state_dict(saved["optimizer"])
        draws.set_state(saved["draws"])
        state = saved["state"]
        resumed_at = state["epoch"]
        log.info("resumed from epoch %d of %d (step %d of %d), checkpoint %s", resumed_at, schedule.epochs,
                 state["step"], schedule.steps, checkpoint)

    partners_of = torch.as_tensor(neighbours, dtype=torch.int64)
    prior = state["prior"].to(device)
    while state["step"] < schedule.steps:
        epoch, first = state["epoch"], state["step"]
        order = torch.randperm(count, generator=draws)
        choice = torch.randint(partners_of.shape[1], (count,), generator=draws)
        partners = partners_of[torch.arange(count), choice]
        steps = min(schedule.steps_per_epoch, schedule.steps - first)
        epoch_losses = torch.zeros(settings.heads, device=device)
        for step in range(steps):
            at = first + step
            for group in optimizer.param_groups:
                group["lr"] = float(learning_rates[at])
            rows = order[step * schedule.batch_size:(step + 1) * schedule.batch_size]
            batch = x[torch.cat([rows, partners[rows]]).to(device)]
            student_logits = student(batch)
            with torch.no_grad():
                teacher_logits = teacher(batch)
                teacher_mean = torch.softmax(teacher_logits / settings.teacher_temperature, dim=-1).mean(dim=1)
                prior = settings.prior_momentum * prior + (1 - settings.prior_momentum) * teacher_mean
            head_losses = temi_head_losses(student_logits, teacher_logits, prior, settings)
            loss = head_losses.mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"TEMI loss is {float(loss)} at epoch {epoch + 1}, step {at + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if at < schedule.frozen_steps:
                for parameter in student.last_layer():
                    parameter.grad = None
            optimizer.step()
            with torch.no_grad():
                momentum = float(momenta[at])
                for teacher_parameter, student_parameter in zip(teacher.parameters(), student.parameters()):
                    teacher_parameter.mul_(momentum).add_(student_parameter.detach(), alpha=1 - momentum)
            epoch_losses += head_losses.detach()
        epoch_losses = (epoch_losses / steps).cpu().numpy().astype(np.float64)
        best = int(np.argmin(epoch_losses))
        row = {"epoch": epoch + 1, "step": first + steps, "loss_mean": float(epoch_losses.mean()),
               "loss_best": float(epoch_losses[best]), "best_head": best, "learning_rate": float(learning_rates[at]),
               "teacher_momentum": momentum}
        state["history"].append(row)
        state["head_losses"].append(epoch_losses.tolist())
        state["epoch"], state["step"] = epoch + 1, first + steps
        state["prior"] = prior.cpu()
        passed = state["step"] // settings.checkpoint_every > first // settings.checkpoint_every
        if checkpoint is not None and (passed or state["step"] == schedule.steps):
            save_checkpoint(checkpoint, digest, device, student=student.state_dict(), teacher=teacher.state_dict(),
                            optimizer=optimizer.state_dict(), draws=draws.get_state(), state=state)
        if progress is not None:
            progress(row)
    history = pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)
    return TemiFit({key: value.detach().cpu().clone() for key, value in teacher.state_dict().items()},
                   int(history["best_head"].iloc[-1]), history, np.asarray(state["head_losses"]), schedule,
                   resumed_at)


def head_probabilities(heads: ClusterHeads, features: np.ndarray, settings: TemiSettings, device: torch.device
                       ) -> np.ndarray:
    """The teacher-temperature probabilities of every head for every row, (heads, N, K) float32."""
    heads.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(features), PREDICT_BATCH):
            block = torch.as_tensor(features[start:start + PREDICT_BATCH], dtype=torch.float32, device=device)
            parts.append(torch.softmax(heads(block) / settings.teacher_temperature, dim=-1).cpu().numpy())
    return (np.concatenate(parts, axis=1) if parts
            else np.zeros((settings.heads, 0, heads.last_direction.shape[2]), np.float32))


def load_heads(state: dict[str, torch.Tensor], settings: TemiSettings, device: torch.device) -> ClusterHeads:
    """The heads of a state dict (as :class:`TemiFit` holds the teacher's)."""
    dim = state["hidden_weight"].shape[0]
    clusters = state["last_direction"].shape[2]
    heads = build_heads(dim, clusters, settings)
    heads.load_state_dict(state)
    return heads.to(device)


def head_statistics(probabilities: np.ndarray) -> list[dict]:
    """Per head, from its (N, K) probabilities: the mean per-image entropy as a share of log K (1: every
    image uniform over the clusters) and the clusters that some image is assigned to."""
    heads, _, clusters = probabilities.shape
    entropy = -(probabilities * np.log(np.clip(probabilities, 1e-12, None))).sum(axis=-1).mean(axis=1)
    return [{"head": h, "entropy": float(entropy[h] / math.log(clusters)),
             "active_clusters": int(len(np.unique(probabilities[h].argmax(axis=1))))} for h in range(heads)]


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
    statistics: list[dict]                # head_statistics of the train split
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
    ``kmeans``), the standardisation (``embed_norm``), the training, every head's probabilities, the
    statistics and the diagnosis (:func:`diagnose`).

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
        warm_start = (fit_kmeans(train.features, clusters, kmeans, seed).labels_
                      if settings.warm_start == "kmeans" else None)
        if folder is not None:
            save_checkpoint(folder / "prepared.pt", prepared_key, device, neighbours=neighbours, warm_start=warm_start)
    agreement = neighbour_agreement(neighbours, train.labels)
    log.info("%d train images, %d clusters, %d heads on %s; %d neighbours each (%s share the image's label) in "
             "%.0f s", len(train.features), clusters, settings.heads, device, k,
             "n/a" if agreement is None else f"{agreement:.1%}", time.monotonic() - started)

    standardizer = Standardizer.fit(train.features) if settings.embed_norm else None
    seen = (lambda features: features) if standardizer is None else standardizer.forward
    schedule = TemiSchedule.plan(len(train.features), settings)
    every = max(1, schedule.epochs // LOG_LINES)
    log.info("%d steps: %d epochs of %d batches of %d images", schedule.steps, schedule.epochs,
             schedule.steps_per_epoch, schedule.batch_size)

    def progress(row: dict) -> None:
        if row["epoch"] % every == 0 or row["step"] == schedule.steps:
            log.info("epoch %(epoch)d, step %(step)d: loss %(loss_mean).4f (best head %(best_head)d: %(loss_best).4f), "
                     "lr %(learning_rate).2e", row)

    fit = train_temi(seen(train.features), neighbours, clusters, settings, seed, device, warm_start=warm_start,
                     checkpoint=None if folder is None else folder / "train.pt", progress=progress, log=log)
    heads = load_heads(fit.teacher, settings, device)
    train_probabilities = head_probabilities(heads, seen(train.features), settings, device)
    statistics = head_statistics(train_probabilities)
    warnings = diagnose(statistics, fit.head_losses[-1], clusters, settings.beta)
    for warning in warnings:
        log.warning("%s", warning)
    test_head_clusters = head_probabilities(heads, seen(test.features), settings, device).argmax(axis=-1)
    return TemiRun(fit, clusters, k, agreement, standardizer, train_probabilities[fit.best_head].argmax(axis=1),
                   test_head_clusters, statistics, warnings, notes, time.monotonic() - started)
