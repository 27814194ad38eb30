"""The small classifier of the distillation (its experts and every evaluation): built, trained from
scratch with plain minibatch SGD, evaluated as a function of one flat parameter vector (so the unrolled
steps of trajectory matching stay differentiable), and the seeded real samples per class that start the
synthetic vectors and make the random-subset baseline."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from embedlens.distill.settings import DistillSettings
from embedlens.networks import build_mlp


def build_classifier(dim: int, num_classes: int, settings: DistillSettings) -> nn.Sequential:
    """The small classifier: a linear layer, or ``Linear -> ReLU -> Linear`` with ``hidden`` units
    (:func:`embedlens.networks.build_mlp` without dropout, which would make trajectories random)."""
    return build_mlp(dim, [settings.hidden] if settings.classifier == "mlp" else [], num_classes, 0.0)


class FlatClassifier:
    """A classifier evaluated as a function of one flat parameter vector, so that training steps on
    it stay differentiable (the unrolled steps of trajectory matching)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = [name for name, _ in module.named_parameters()]
        self.shapes = [parameter.shape for _, parameter in module.named_parameters()]
        self.sizes = [parameter.numel() for _, parameter in module.named_parameters()]

    def flat(self) -> torch.Tensor:
        """The module's current parameters as one vector (a detached copy)."""
        return torch.cat([parameter.detach().reshape(-1) for parameter in self.module.parameters()]).clone()

    def __call__(self, flat: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, self.sizes)
        parameters = {name: part.view(shape) for name, part, shape in zip(self.names, parts, self.shapes)}
        return torch.func.functional_call(self.module, parameters, (features,))


def sgd_train(features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: DistillSettings, *,
              lr: float, epochs: int, seed: int, record: bool = False) -> tuple[nn.Module, list[torch.Tensor]]:
    """The classifier trained from scratch (initialisation and shuffling seeded by ``seed``) with plain
    minibatch SGD (``settings.batch_size``, no momentum or weight decay) on standardised ``features``.
    With ``record``, the flat parameters after each epoch (epoch 0 = the initialisation) are returned too."""
    torch.manual_seed(seed)
    model = build_classifier(features.shape[1], num_classes, settings).to(features.device)
    flat = FlatClassifier(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    trajectory = [flat.flat()] if record else []
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=shuffle).to(features.device)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            loss = nn.functional.cross_entropy(model(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if record:
            trajectory.append(flat.flat())
    return model, trajectory


def accuracy(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose highest logit is their label."""
    model.eval()
    with torch.no_grad():
        return float((model(features).argmax(dim=1) == labels).float().mean())


def initial_positions(labels: np.ndarray, classes: np.ndarray, per_class: int, rng: np.random.Generator
                      ) -> np.ndarray:
    """``per_class`` random rows of each class of ``classes`` (class by class, seeded by ``rng``):
    without replacement, or with it for a class that has fewer rows."""
    chosen = []
    for label in classes.tolist():
        rows = np.flatnonzero(labels == label)
        chosen.append(rng.choice(rows, per_class, replace=len(rows) < per_class))
    return np.concatenate(chosen)
