"""The ``distill:`` section of the config as a typed object (its defaults live in the schema only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from embedlens.config import settings_values
from embedlens.pseudo_labels import PSEUDO

CLASSIFIERS = ("linear", "mlp")
# The settings that change what the distillation computes; a checkpoint made with other values is not resumed.
EXPERT_KEYS = ("classifier", "hidden", "seed", "experts", "expert_epochs", "expert_lr", "batch_size")
DISTILL_KEYS = (*EXPERT_KEYS, "per_class", "syn_batch", "syn_steps", "expert_epochs_to_match", "max_start_epoch",
                "iterations", "lr_features", "lr_lr")
# Evaluation settings that take one value or a list of candidates, chosen on the validation part.
CANDIDATE_KEYS = ("eval_lr", "eval_epochs", "full_lr", "full_epochs")


class DistillInputError(ValueError):
    """The data or settings cannot support a distillation; the message names the file or key and what would work."""


@dataclass(frozen=True)
class DistillSettings:
    """Every key of the schema's ``distill`` section but ``enabled`` (which only the workflow reads); see
    ``embedlens/config.schema.yaml`` for each one. :data:`CANDIDATE_KEYS` hold their candidates as
    tuples (one value in the config is a tuple of one)."""

    labels: bool | str
    cluster_method: str
    train_split: str
    test_split: str
    holdout_fraction: float
    val_fraction: float
    per_class: int
    classifier: str
    hidden: int
    seed: int
    device: str
    experts: int
    expert_epochs: int
    expert_lr: float
    batch_size: int
    syn_batch: int
    syn_steps: int
    expert_epochs_to_match: int
    max_start_epoch: int
    iterations: int
    lr_features: float
    lr_lr: float
    eval_seeds: int
    eval_epochs: tuple[int, ...]
    eval_lr: tuple[float, ...]
    full_epochs: tuple[int, ...]
    full_lr: tuple[float, ...]
    checkpoint_seconds: float
    neighbours: int
    grid_rows: int

    def __post_init__(self):
        if self.labels is not True and self.labels != PSEUDO:
            raise ValueError(f"distill.labels is {self.labels!r}; allowed values: true (the dataset's labels), "
                             f"{PSEUDO} (the clustering stage's pseudo labels)")
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"distill.classifier is {self.classifier!r}; allowed values: {', '.join(CLASSIFIERS)}")
        if self.max_start_epoch + self.expert_epochs_to_match > self.expert_epochs:
            raise ValueError(
                f"distill.max_start_epoch ({self.max_start_epoch}) + distill.expert_epochs_to_match "
                f"({self.expert_epochs_to_match}) exceeds distill.expert_epochs ({self.expert_epochs}): the target "
                f"checkpoint would lie past the experts' last epoch; lower max_start_epoch to at most "
                f"{self.expert_epochs - self.expert_epochs_to_match}")

    @classmethod
    def from_config(cls, section: Mapping) -> DistillSettings:
        """Build from a validated config's ``distill`` section (every key present: validation fills in
        the schema's defaults; :func:`embedlens.config.section_defaults` gives them outside the
        workflow; ``enabled`` may be there or not). The error names unknown and missing keys."""
        values = settings_values("distill", {key: value for key, value in section.items() if key != "enabled"}, cls)
        for key in CANDIDATE_KEYS:
            values[key] = tuple(values[key]) if isinstance(values[key], (list, tuple)) else (values[key],)
        return cls(**values)

    def as_dict(self) -> dict:
        """JSON-friendly form, for provenance in the stage's outputs."""
        values = asdict(self)
        return {key: list(value) if key in CANDIDATE_KEYS else value for key, value in values.items()}

    def key(self, names: Sequence[str]) -> dict:
        """The values of the settings ``names`` (:data:`EXPERT_KEYS`: what decides the experts,
        :data:`DISTILL_KEYS`: what decides the distilled set)."""
        values = self.as_dict()
        return {name: values[name] for name in names}
