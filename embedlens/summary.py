"""The one shape in which every stage tells the report what it found: ``summary.json``.

Every stage (features, overlap, and each analysis stage) writes one summary beside its outputs::

    {
      "stage": "overlap",                    # the stage's name, as in rules/<stage>.smk
      "title": "Overlapping classes",        # the report's section title
      "dataset": "cifar100", "backbone": "dino_vits16",
      "headline": {"pairs": 70, "classes": 54},          # the few figures a reader wants first
      "tables": [{"path": "pairs.csv", "caption": "..."}],    # CSVs, paths relative to the summary
      "figures": [{"path": "similarity.png", "caption": "..."}],
      "notes": ["one sentence a reader should know", ...],
      "settings": {...},                     # the config section that produced the results
      "status": "ok",                        # or "skipped": the stage could not run on this dataset
      "reason": null                         # with status skipped, why, in one sentence naming the setting
    }

Paths are relative to the folder of ``summary.json`` so a results tree can be moved as a whole. The
report renders every stage from this file alone, so a stage added later only writes its summary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from embedlens.atomic import write_text_atomic


# Every stage's report title, by the stage's name.
STAGE_TITLES = {
    "features": "Feature extraction",
    "overlap": "Overlapping classes",
    "classify": "Classifier",
    "cluster": "Clustering",
    "novelty": "Novelty",
    "audit": "Dataset audit",
    "distill": "Distillation",
}
SKIPPED = "skipped"


@dataclass(frozen=True)
class Artifact:
    """A table (CSV) or a figure (PNG) of a stage, with a caption that says how to read it."""

    path: str
    caption: str


@dataclass
class StageSummary:
    """What one stage found for one dataset x backbone; see the module docstring for the JSON."""

    stage: str
    title: str
    dataset: str
    backbone: str | None = None
    headline: dict = field(default_factory=dict)
    tables: list[Artifact] = field(default_factory=list)
    figures: list[Artifact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None

    @classmethod
    def skipped(cls, stage: str, reason: str, *, dataset: str, backbone: str | None,
                settings: Mapping | None = None) -> StageSummary:
        """The summary of a stage that cannot run on this dataset: ``status: skipped`` and ``reason``."""
        return cls(stage=stage, title=STAGE_TITLES.get(stage, stage), dataset=dataset, backbone=backbone,
                   notes=[f"Skipped: {reason}."], settings=dict(settings or {}), status=SKIPPED, reason=reason)

    def write(self, path: str | Path) -> None:
        """Write as JSON, atomically. Artifact paths must lie in the summary's folder or below it."""
        folder = Path(path).resolve().parent
        for artifact in [*self.tables, *self.figures]:
            if Path(artifact.path).is_absolute() or ".." in Path(artifact.path).parts:
                raise ValueError(f"summary of stage {self.stage!r}: artifact path {artifact.path!r} must be "
                                 f"relative to {folder}")
        write_text_atomic(path, json.dumps(asdict(self), indent=2, default=_plain) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> StageSummary:
        """Read a ``summary.json``; the error names the file and the missing keys."""
        data = read_json(path)
        missing = [key for key in ("stage", "title", "dataset") if key not in data]
        if missing:
            raise ValueError(f"{path}: not a stage summary; missing key(s) {', '.join(missing)}")
        return cls(**{**data,
                      "tables": _artifacts(data.get("tables", ())),
                      "figures": _artifacts(data.get("figures", ()))})


def read_json(path: str | Path):
    """The JSON document at ``path``: a rule's ``.json`` output (a fit, its results, a summary)."""
    with open(path) as handle:
        return json.load(handle)


def blank_images_note(figure: str, unreadable: Mapping[str, str] | Sequence[str]) -> str | None:
    """The note a summary carries when images of ``figure`` could not be read and were drawn blank
    (``unreadable``: their names, e.g. :attr:`embedlens.images.FigureImages.unreadable`); None when none."""
    names = list(unreadable)
    if not names:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{len(names)} image(s) of {figure} could not be read and are drawn blank ({shown}); the job's log gives "
            "the reasons.")


def _artifacts(items: Sequence[Mapping]) -> list[Artifact]:
    return [Artifact(str(item["path"]), str(item.get("caption", ""))) for item in items]


def _plain(value):
    """JSON for numpy scalars and arrays that end up in headline figures or settings."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
