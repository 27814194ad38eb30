"""The ``classify:`` section of the config as a typed object (its defaults live in the schema only)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from embedlens.config import settings_values

CLASS_MODES = ("overlap", "all")

# The settings that change what a training computes; a checkpoint made with other values of these is
# not resumed (figure and report settings may change freely between runs).
TRAINING_KEYS = ("val_fraction", "hidden_fractions", "dropout", "learning_rate", "weight_decay", "batch_size",
                 "max_epochs", "lr_factor", "lr_patience", "early_stopping_patience", "seed", "folds")


@dataclass(frozen=True)
class ClassifySettings:
    """Every key of the schema's ``classify`` section; see ``embedlens/config.schema.yaml`` for each one."""

    enabled: bool
    classes: str
    train_split: str
    test_split: str
    holdout_fraction: float
    val_fraction: float
    hidden_fractions: tuple[float, ...]
    dropout: float
    learning_rate: float
    weight_decay: float
    batch_size: int
    max_epochs: int
    lr_factor: float
    lr_patience: int
    early_stopping_patience: int
    seed: int
    device: str
    checkpoint_seconds: float
    pairs_k: float
    pairs_max_threshold: float
    folds: int
    pair_figures: int
    samples_per_class: int
    misclassified_samples: int
    disagreements: int

    def __post_init__(self):
        if self.classes not in CLASS_MODES:
            raise ValueError(f"classify.classes is {self.classes!r}; allowed values: {', '.join(CLASS_MODES)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"classify.val_fraction is {self.val_fraction!r}; it must lie in (0, 1)")
        if self.folds < 2:
            raise ValueError(f"classify.folds is {self.folds!r}; cross-validation needs at least 2 folds")

    @classmethod
    def from_config(cls, section: Mapping) -> ClassifySettings:
        """Build from a validated config's ``classify`` section (every key present: validation fills
        in the schema's defaults); :func:`embedlens.config.settings_values` names unknown and missing keys."""
        values = settings_values("classify", section, cls)
        values["hidden_fractions"] = tuple(float(f) for f in values["hidden_fractions"])
        return cls(**values)

    def as_dict(self) -> dict:
        """JSON-friendly form, for provenance in the stage's outputs."""
        values = asdict(self)
        values["hidden_fractions"] = list(self.hidden_fractions)
        return values

    def training_key(self) -> dict:
        """The settings that decide a training's result (:data:`TRAINING_KEYS`)."""
        values = self.as_dict()
        return {key: values[key] for key in TRAINING_KEYS}
