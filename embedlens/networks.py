"""The small classifiers trained on frozen features, shared by the classifier stage (the notebook's MLP)
and the distillation stage (its experts and evaluations)."""

from __future__ import annotations

from torch import nn


def build_mlp(dim: int, hidden: list[int], num_classes: int, dropout: float) -> nn.Sequential:
    """``Linear -> ReLU -> Dropout`` for every hidden width, then a linear layer to the class logits."""
    layers: list[nn.Module] = []
    width = dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
