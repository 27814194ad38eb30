"""The ``audit:`` section of the config as a typed object (its defaults live in the schema only)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from embedlens.config import settings_values

from embedlens.probe import ProbeSettings

SELECTIONS = ("threshold", "top_n")
VERDICTS = ("exact", "near", "similar")


@dataclass(frozen=True)
class AuditSettings:
    """Every key of the schema's ``audit`` section; see ``embedlens/config.schema.yaml`` for each one."""

    enabled: bool
    query_split: str
    reference_split: str
    within_query: bool
    neighbours: int
    selection: str
    threshold: float
    top_n: int
    near_threshold: float
    remove: tuple[str, ...]
    likely_copies: int
    likely_copies_gap_weight: float
    likely_copies_pixel_weight: float
    label_issue_fraction: float
    label_splits: tuple[str, ...] | None
    folds: int
    regularization: float
    probe_epochs: int
    probe_min_steps: int
    probe_batch_size: int
    probe_learning_rate: float
    probe_hidden: int
    probe_dropout: float
    probe_ensemble: int
    device: str
    seed: int
    pairs_shown: int
    issues_shown: int

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise ValueError(f"audit.selection is {self.selection!r}; allowed values: {', '.join(SELECTIONS)}")
        unknown = sorted(set(self.remove) - set(VERDICTS))
        if unknown:
            raise ValueError(f"audit.remove lists {unknown}; allowed verdicts: {', '.join(VERDICTS)}")

    @property
    def one_split(self) -> bool:
        """Whether query and reference are one split (a dataset with one split): there is no leakage
        between splits to search, and the search within it runs whatever within_query says."""
        return self.query_split == self.reference_split

    @classmethod
    def from_config(cls, section: Mapping) -> AuditSettings:
        """Build from a validated config's ``audit`` section (every key present: validation fills in
        the schema's defaults); :func:`embedlens.config.settings_values` names unknown and missing keys."""
        values = settings_values("audit", section, cls)
        values["remove"] = tuple(values["remove"])
        if values["label_splits"] is not None:
            values["label_splits"] = tuple(values["label_splits"])
        return cls(**values)

    def probe(self) -> ProbeSettings:
        """The label check's softmax probe (:func:`embedlens.probe.softmax_probe`)."""
        return ProbeSettings(self.regularization, self.probe_epochs, self.probe_min_steps, self.probe_batch_size,
                             self.probe_learning_rate, self.seed, self.probe_hidden, self.probe_dropout,
                             self.probe_ensemble)

    def probe_key(self) -> dict:
        """What decides the label check's probabilities: a killed check resumes only when this matches."""
        return {"folds": self.folds, **asdict(self.probe())}

    def as_dict(self) -> dict:
        """JSON-friendly form, for provenance in the stage's outputs."""
        values = asdict(self)
        values["remove"] = list(self.remove)
        values["label_splits"] = None if self.label_splits is None else list(self.label_splits)
        return values


def probe_description(settings: Mapping) -> str:
    """The label check's model in words, from the ``audit`` settings (a section or :meth:`AuditSettings.as_dict`):
    "linear probe", "MLP probe (1024 hidden units)", or that with ", 3 seeds averaged"."""
    model = "linear probe" if settings["probe_hidden"] == 0 else f"MLP probe ({settings['probe_hidden']} hidden units)"
    return model + (f", {settings['probe_ensemble']} seeds averaged" if settings["probe_ensemble"] > 1 else "")
