"""The ``cluster:`` section of the config as typed objects (its defaults live in the schema only)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from embedlens.config import settings_values


class ClusterInputError(ValueError):
    """The data cannot support the requested clustering; the message names the setting that would work."""


@dataclass(frozen=True)
class TemiSettings:
    """The ``cluster.temi`` section; see ``embedlens/config.schema.yaml`` for each key."""

    neighbours: int
    neighbours_class_fraction: float | None
    heads: int
    steps: int
    batch_size: int
    learning_rate: float
    min_learning_rate: float
    warmup_fraction: float
    weight_decay: float
    beta: float
    student_temperature: float
    teacher_temperature: float
    teacher_momentum: float
    teacher_momentum_end: float | None
    prior_momentum: float
    hidden_dim: int
    bottleneck_dim: int
    freeze_last_layer_fraction: float
    embed_norm: bool
    warm_start: str
    checkpoint_every: int


@dataclass(frozen=True)
class KmeansSettings:
    """The ``cluster.kmeans`` section."""

    n_init: int
    normalize: bool
    fit_rows: int


@dataclass(frozen=True)
class ClusterSettings:
    """Every key of the schema's ``cluster`` section."""

    enabled: bool
    methods: tuple[str, ...]
    train_split: str
    test_split: str
    clusters: int | None
    seed: int
    device: str
    collapse_fraction: float
    representatives: int
    grid_clusters: int
    map: str
    map_points: int
    temi: TemiSettings
    kmeans: KmeansSettings

    @classmethod
    def from_config(cls, section: Mapping) -> ClusterSettings:
        """Build from a validated config's ``cluster`` section (every key present: validation fills in
        the schema's defaults); :func:`embedlens.config.settings_values` names unknown and missing keys."""
        values = settings_values("cluster", section, cls)
        values["temi"] = TemiSettings(**settings_values("cluster.temi", values["temi"], TemiSettings))
        values["kmeans"] = KmeansSettings(**settings_values("cluster.kmeans", values["kmeans"], KmeansSettings))
        values["methods"] = tuple(values["methods"])
        return cls(**values)

    def as_dict(self) -> dict:
        """JSON-friendly form, for provenance in the stage's outputs."""
        return json.loads(json.dumps(asdict(self)))
