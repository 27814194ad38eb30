"""The ``novelty:`` section of the config as typed objects (its defaults live in the schema only)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from embedlens.config import settings_values

# Keys of the section that decide which jobs exist, not what a job computes; the rules leave them out.
WORKFLOW_KEYS = ("enabled", "score_datasets")


class NoveltyInputError(ValueError):
    """The data cannot support the requested fit (too few images, classes or clusters); the message
    says what there is and which setting would work."""


@dataclass(frozen=True)
class QualitySettings:
    """The ``novelty.quality`` section: ``draws`` random draws of ``unseen_fraction`` of the classes (at
    least one, at most all but two); ``draws: 0`` switches the measurement off."""

    unseen_fraction: float
    draws: int


@dataclass(frozen=True)
class NoveltySettings:
    """Every key of the schema's ``novelty`` section but :data:`WORKFLOW_KEYS`; see
    ``embedlens/config.schema.yaml`` for each one."""

    splits: tuple[str, ...] | None
    seed: int
    fit_fraction: float
    normalize: bool
    k: int | None
    k_min: int
    k_max: int
    search_sample: int
    fit_rows: int
    knee_sensitivity: float
    n_init: int
    novelty_threshold: float
    surprise_threshold: float | None
    knn_k: int
    flag_quantile: float
    calibration_sample: int
    top_images: int
    scatter_points: int
    device: str
    quality: QualitySettings

    @classmethod
    def from_config(cls, section: Mapping) -> NoveltySettings:
        """Build from a validated config's ``novelty`` section (every key present but ``splits``:
        validation fills in the schema's defaults; :func:`embedlens.config.section_defaults` gives them
        outside the workflow; :data:`WORKFLOW_KEYS` may be there or not). The error names unknown and
        missing keys, as every stage's settings do."""
        values = {key: value for key, value in section.items() if key not in WORKFLOW_KEYS}
        values.setdefault("splits", None)
        values = settings_values("novelty", values, cls)
        values["quality"] = QualitySettings(**settings_values("novelty.quality", values["quality"], QualitySettings))
        if values["splits"] is not None:
            values["splits"] = tuple(values["splits"])
        return cls(**values)

    def as_dict(self) -> dict:
        """JSON-friendly form, for provenance in the stage's outputs."""
        return json.loads(json.dumps(asdict(self)))
