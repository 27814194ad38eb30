"""TEMI as published (Adaloglou et al., BMVC 2023, arXiv 2303.17896; the official code's choices where the
paper is silent): cluster heads trained on frozen embeddings with pairs of nearest neighbours.

- **Pairs.** The ``neighbours`` nearest neighbours of every image are mined once, by cosine similarity
  (on L2-normalised embeddings, the image itself excluded; :func:`embedlens.knn.cosine_topk`). Every
  epoch each image is paired with one of its neighbours drawn at random. The heads see the raw
  embeddings, not the normalised ones.
- **Heads.** Each head is ``Linear -> GELU -> Linear`` (hidden 512, bottleneck 256, weights from a
  truncated normal with std 0.02, biases 0), L2 normalisation, then a bias-free weight-normalised last
  layer (``g * v / ||v||``, ``g`` = 1 at the start) to the K cluster logits. ``heads`` heads (16) are
  trained together; they are computed side by side as batched matrix products, which is the same
  arithmetic as a list of separate heads, only faster.
- **Teacher.** An exponential moving average of the student heads, its momentum rising on a cosine
  from ``teacher_momentum`` (0.996) to ``teacher_momentum_end`` (1) over the training.
- **Loss.** For an image x and its partner x', with student probabilities ``q_s`` (temperature 0.1)
  and teacher probabilities ``q_t`` (temperature 0.1), per head::

      L = -w(x, x') * log sum_k (q_s(k|x) * q_t(k|x'))**beta / p(k)      (and x, x' swapped; averaged)
      w(x, x') = sum_k q_t(k|x) * q_t(k|x')

  with ``beta`` = 0.6 and ``p`` the cluster prior: an EMA (``prior_momentum``) of the teacher's
  batch-mean probabilities, updated with each batch before its loss. The heads' losses are averaged.
- **Optimisation.** AdamW, weight decay on the weights only; the learning rate (per 256 images, scaled
  by the batch size) rises linearly from 0 during ``warmup_epochs`` and then follows a cosine to
  ``min_learning_rate``. The last layer is frozen during the first ``freeze_last_layer_epochs``.
- **Clusters.** The teacher's head with the lowest mean loss over the last epoch assigns each image
  to its most probable cluster.

Two failure modes are detected (:func:`diagnose`): the *uniform solution*, where every head gives
every image nearly the same probability for all clusters (the loss then sits near its value for
uniform probabilities, ``-(1/K) * log K**(2 - 2*beta)``: the PMI term ``-log K**(2 - 2*beta)`` times
the weight ``1/K``), and *collapse*, where the images fall into few clusters.

Training checkpoints itself atomically every ``checkpoint_every`` epochs and resumes from the last
checkpoint when run again on the same data and settings: heads, teacher, optimiser, prior, random
state and history are restored, so a resumed run ends with the same heads as an uninterrupted one
(on the CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from embedlens.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from embedlens.cluster.settings import ClusterInputError, TemiSettings

HISTORY_COLUMNS = ["epoch", "loss_mean", "loss_best", "best_head", "learning_rate", "teacher_momentum"]
PREDICT_BATCH = 8192        # rows per forward pass when only predicting
UNIFORM_ENTROPY = 0.9       # a head whose mean per-image entropy is above this share of log K is near-uniform
REFERENCE_BATCH = 256       # the learning rate is given per this many images


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
    images and last B rows their partners; ``prior`` (heads, K) is the cluster prior to divide by."""
    half = student_logits.shape[1] // 2
    student = torch.log_softmax(student_logits / settings.student_temperature, dim=-1)
    teacher = torch.log_softmax(teacher_logits / settings.teacher_temperature, dim=-1).detach()
    weight = (teacher[:, :half] + teacher[:, half:]).exp().sum(dim=-1)
    log_prior = prior.log()[:, None, :]

    # log sum_k (q_s * q_t)**beta / p(k), computed from log-probabilities: the same value, but a
    # probability that underflows to 0 (large gains g) cannot turn the gradient of x**beta into NaN
    def pmi(student_part: torch.Tensor, teacher_part: torch.Tensor) -> torch.Tensor:
        return torch.logsumexp(settings.beta * (student_part + teacher_part) - log_prior, dim=-1)

    pair_loss = -(pmi(student[:, :half], teacher[:, half:]) + pmi(student[:, half:], teacher[:, :half])) / 2
    return (weight * pair_loss).mean(dim=1)


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


@dataclass
class TemiFit:
    """A finished training: the teacher heads (state dict on the CPU), the chosen head and the history."""

    teacher: dict[str, torch.Tensor]
    best_head: int
    history: pd.DataFrame     # HISTORY_COLUMNS, one row per epoch
    head_losses: np.ndarray   # (epochs, heads) mean loss of each head per epoch
    batch_size: int
    steps_per_epoch: int
    resumed_at_epoch: int     # 0 for a fresh start, else the epoch the checkpoint held


def build_heads(dim: int, clusters: int, settings: TemiSettings) -> ClusterHeads:
    return ClusterHeads(dim, clusters, settings.heads, settings.hidden_dim, settings.bottleneck_dim)


def train_temi(features: np.ndarray, neighbours: np.ndarray, clusters: int, settings: TemiSettings, seed: int,
               device: torch.device, *, warm_start: np.ndarray | None = None, checkpoint: str | Path | None = None,
               progress: Callable[[dict], None] | None = None) -> TemiFit:
    """Train TEMI heads on ``features`` (N, D, raw embeddings) with ``neighbours`` (N, k: row numbers of
    each image's nearest neighbours) into ``clusters`` clusters (see the module docstring).

    ``warm_start``: a cluster (0..K-1) per row, e.g. k-means', that the heads' last layers are pointed
    at before training (:meth:`ClusterHeads.warm_start`); None: the published cold start.

    ``checkpoint``: a file to checkpoint to and resume from; a checkpoint of other data or settings is
    ignored and overwritten; a finished training leaves a checkpoint from which a second call returns
    at once. ``progress`` is called with each epoch's history row after its checkpoint is written.
    """
    count = len(features)
    if count < 2 or clusters > count:
        raise ClusterInputError(f"{count} images cannot be clustered into {clusters} clusters; lower cluster.clusters "
                             "or add images")
    batch_size = min(settings.batch_size, count)
    steps = count // batch_size  # the last, incomplete batch is dropped, as in the official code
    total = steps * settings.epochs
    scale = batch_size / REFERENCE_BATCH
    learning_rates = cosine_schedule(settings.learning_rate * scale, settings.min_learning_rate * scale, total,
                                     settings.warmup_epochs * steps)
    momenta = cosine_schedule(settings.teacher_momentum, settings.teacher_momentum_end, total)
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
    state = {"epoch": 0, "history": [], "head_losses": [],
             "prior": torch.full((settings.heads, clusters), 1.0 / clusters)}

    resumed_at = 0
    if (saved := load_checkpoint(checkpoint, digest, device)) is not None:
        student.load_state_dict(saved["student"])
        teacher.load_state_dict(saved["teacher"])
        optimizer.load_state_dict(saved["optimizer"])
        draws.set_state(saved["draws"])
        state = saved["state"]
        resumed_at = state["epoch"]

    partners_of = torch.as_tensor(neighbours, dtype=torch.int64)
    prior = state["prior"].to(device)
    while state["epoch"] < settings.epochs:
        epoch = state["epoch"]
        order = torch.randperm(count, generator=draws)
        choice = torch.randint(partners_of.shape[1], (count,), generator=draws)
        partners = partners_of[torch.arange(count), choice]
        epoch_losses = torch.zeros(settings.heads, device=device)
        for step in range(steps):
            at = epoch * steps + step
            for group in optimizer.param_groups:
                group["lr"] = float(learning_rates[at])
            rows = order[step * batch_size:(step + 1) * batch_size]
            batch = x[torch.cat([rows, partners[rows]]).to(device)]
            student_logits = student(batch)
            with torch.no_grad():
                teacher_logits = teacher(batch)
                teacher_mean = torch.softmax(teacher_logits / settings.teacher_temperature, dim=-1).mean(dim=1)
                prior = settings.prior_momentum * prior + (1 - settings.prior_momentum) * teacher_mean
            head_losses = temi_head_losses(student_logits, teacher_logits, prior, settings)
            loss = head_losses.mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"TEMI loss is {float(loss)} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if epoch < settings.freeze_last_layer_epochs:
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
        row = {"epoch": epoch + 1, "loss_mean": float(epoch_losses.mean()), "loss_best": float(epoch_losses[best]),
               "best_head": best, "learning_rate": float(learning_rates[at]), "teacher_momentum": momentum}
        state["history"].append(row)
        state["head_losses"].append(epoch_losses.tolist())
        state["epoch"] = epoch + 1
        state["prior"] = prior.cpu()
        if checkpoint is not None and (state["epoch"] % settings.checkpoint_every == 0
                                       or state["epoch"] == settings.epochs):
            save_checkpoint(checkpoint, digest, device, student=student.state_dict(), teacher=teacher.state_dict(),
                            optimizer=optimizer.state_dict(), draws=draws.get_state(), state=state)
        if progress is not None:
            progress(row)
    history = pd.DataFrame(state["history"], columns=HISTORY_COLUMNS)
    return TemiFit({key: value.detach().cpu().clone() for key, value in teacher.state_dict().items()},
                   int(history["best_head"].iloc[-1]), history, np.asarray(state["head_losses"]), batch_size, steps,
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
    return np.concatenate(parts, axis=1) if parts else np.zeros((settings.heads, 0, 0), np.float32)


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
