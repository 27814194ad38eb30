"""The report page: one self-contained HTML file (pictures embedded, no network needed to view it) that
renders, for every dataset x backbone, the dataset, every stage's ``summary.json``, the subset and a
link to the explore page; then, with several backbones, one table comparing them; then the config and
the software versions.

The report knows the stages by name only to order them and to say in one line what is absent: a stage
that is not part of this version yet, or that the config disables (``<stage>.enabled: false``). Any
other summary it is given is rendered too, in the same generic way, so a stage added later only writes
its summary (:mod:`embedlens.summary`).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from embedlens.atomic import write_text_atomic
from embedlens.report.media import embed_figure
from embedlens.report.render import render
from embedlens.summary import SKIPPED, STAGE_TITLES, StageSummary

# (stage, section title) in the order the report shows them
STAGES = tuple(STAGE_TITLES.items())
# The comparison of backbones: (stage, headline key, column). Stages name their headline figures so.
COMPARED = (
    ("features", "dim", "dimension"),
    ("features", "images_per_second", "images/s"),
    ("overlap", "pairs", "overlap pairs"),
    ("classify", "accuracy", "classifier accuracy"),
    ("classify", "clean_accuracy", "classifier accuracy, clean test"),
    ("cluster", "acc", "clustering ACC"),
    ("cluster", "clean_acc", "clustering ACC, clean test"),
    ("cluster", "nmi", "clustering NMI"),
    ("cluster", "ari", "clustering ARI"),
    ("novelty", "auroc", "novelty AUROC"),
    ("audit", "duplicates", "duplicates found"),
    ("audit", "label_issues", "label issues found"),
    ("distill", "accuracy", "distilled accuracy"),
)
VERSIONED = ("embedlens", "snakemake", "torch", "torchvision", "timm", "transformers", "numpy", "scipy",
             "scikit-learn", "pandas", "h5py", "pillow", "matplotlib", "umap-learn", "plotly", "jinja2")
MAX_TABLE_ROWS = 500   # rows of a CSV shown in the page; the link leads to the whole file
MAX_SKIPPED_ROWS = 200


@dataclass
class DatasetFiles:
    """What the manifest rule wrote for one dataset."""

    info: Path      # dataset.json
    skipped: Path   # skipped.csv


@dataclass
class PairFiles:
    """What the stages wrote for one dataset x backbone; ``subset`` is None when overlap.export is off."""

    dataset: str
    backbone: str
    summaries: list[Path] = field(default_factory=list)
    subset: Path | None = None
    explore: Path | None = None


def slug(*parts: str) -> str:
    """An HTML id from ``parts``."""
    return "-".join(re.sub(r"[^A-Za-z0-9_]+", "-", str(part)).strip("-") for part in parts)


def relative(path: Path, start: Path) -> str:
    """``path`` as a link from a page in the folder ``start`` (POSIX separators)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def read_table(path: Path, limit: int = MAX_TABLE_ROWS) -> dict:
    """A CSV as the template shows it: columns, up to ``limit`` rows of text (floats to 4 significant
    digits), the total row count. The error names the file."""
    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as error:
        raise ValueError(f"{path}: cannot read this table for the report ({error})") from None
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    shown = frame.head(limit)
    rows = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in shown.itertuples(index=False)]
    return {"columns": [str(c) for c in frame.columns], "rows": rows, "total": len(frame)}


def stage_absence(stage: str, config: Mapping, dataset: str) -> str:
    """Why a known stage has no summary for ``dataset``: disabled in the config, the dataset is only
    scored against another's results (``<stage>.score_datasets``), or not part of this version yet."""
    section = config.get(stage)
    if isinstance(section, Mapping) and section.get("enabled") is False:
        return f"disabled in the config ({stage}.enabled: false)."
    if isinstance(section, Mapping) and dataset in (section.get("score_datasets") or ()):
        return (f"this dataset's images are scored against the other datasets' models ({stage}.score_datasets); "
                f"its scores are in their {stage} sections.")
    return "not part of this version of embedlens yet."


def stage_view(summary: StageSummary, folder: Path, page_folder: Path) -> dict:
    """What the template needs of one stage: its summary with figures embedded and tables read."""
    def existing(path: str, kind: str) -> Path:
        target = folder / path
        if not target.is_file():
            raise ValueError(f"{folder / 'summary.json'}: {kind} {path!r} does not exist ({target})")
        return target

    if summary.status == SKIPPED:
        return {"stage": summary.stage, "title": summary.title, "headline": None,
                "absent": f"skipped for this dataset: {summary.reason}."}
    return {
        "stage": summary.stage, "title": summary.title, "absent": None, "headline": summary.headline,
        "notes": summary.notes,
        "settings": yaml.safe_dump(summary.settings, sort_keys=False).strip() if summary.settings else "",
        "figures": [{"image": embed_figure(existing(f.path, "figure")), "caption": f.caption, "path": f.path}
                    for f in summary.figures],
        "tables": [{"table": read_table(existing(t.path, "table")), "caption": t.caption, "path": t.path,
                    "link": relative(folder / t.path, page_folder)} for t in summary.tables],
    }


def dataset_view(files: DatasetFiles) -> dict:
    """The dataset section: images per split, classes, skipped files grouped by reason and listed."""
    info = json.loads(Path(files.info).read_text())
    skipped = read_table(files.skipped, MAX_SKIPPED_ROWS)
    reasons = {}
    if skipped["total"]:
        frame = pd.read_csv(files.skipped, keep_default_na=False)
        reasons = frame["reason"].value_counts().to_dict()
    extras = {key: value for key, value in info.items()
              if key not in ("name", "kind", "class_names", "images", "class_counts", "skipped")}
    headline = {"classes": len(info["class_names"]),
                **{f"{split} images": count for split, count in info["images"].items()},
                "skipped files": skipped["total"]}
    return {"name": info["name"], "kind": info["kind"], "headline": headline, "classes": info["class_names"],
            "skipped": skipped, "reasons": [[reason, count] for reason, count in reasons.items()], "extras": extras}


def subset_view(path: Path | None) -> dict | None:
    """The subset's counts per split and class (subset.json), or None when there is no subset."""
    if path is None:
        return None
    info = json.loads(Path(path).read_text())
    splits = list(info["images"])
    folders = sorted({folder for counts in info["images_per_class"].values() for folder in counts})
    rows = [[folder, *[str(info["images_per_class"][split].get(folder, 0)) for split in splits]] for folder in folders]
    headline = {"classes": info["num_classes"],
                **{f"{split} images": count for split, count in info["images"].items()},
                "skipped": info.get("skipped", 0)}
    return {"headline": headline, "table": {"columns": ["class folder", *splits], "rows": rows, "total": len(rows)}}


def software_versions() -> dict[str, str]:
    """Python and the versions of the packages the workflow uses, as installed where the report runs."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def comparison(pairs: Sequence[dict]) -> dict:
    """One row per dataset x backbone with the headline figures of :data:`COMPARED` (None: absent)."""
    columns = ["dataset", "backbone", *[name for _, _, name in COMPARED]]
    rows = []
    for pair in pairs:
        by_stage = {view["stage"]: view["headline"] for view in pair["stages"] if view.get("headline") is not None}
        rows.append([pair["dataset"], pair["backbone"],
                     *[by_stage.get(stage, {}).get(key) for stage, key, _ in COMPARED]])
    return {"columns": columns, "rows": rows}


def build_report(datasets: Sequence[DatasetFiles], pairs: Sequence[PairFiles], config: Mapping,
                 output: str | Path) -> None:
    """Render the report page to ``output``. Summaries are matched to their pair by the dataset and
    backbone they name; a summary given for another pair is an error naming its file."""
    output = Path(output)
    page_folder = output.parent
    config_text = yaml.safe_dump(dict(config), sort_keys=False).strip()
    dataset_views = {view["name"]: view for view in map(dataset_view, datasets)}
    known = dict(STAGES)
    pair_views = []
    for files in pairs:
        summaries = {}
        for path in files.summaries:
            summary = StageSummary.read(path)
            if (summary.dataset, summary.backbone) != (files.dataset, files.backbone):
                raise ValueError(f"{path}: a summary of {summary.dataset} x {summary.backbone}, given for "
                                 f"{files.dataset} x {files.backbone}")
            summaries[summary.stage] = stage_view(summary, Path(path).parent, page_folder)
        order = [stage for stage, _ in STAGES] + sorted(set(summaries) - set(known))
        stages = [summaries.get(stage) or {"stage": stage, "title": known[stage], "headline": None,
                                           "absent": stage_absence(stage, config, files.dataset)}
                  for stage in order]
        pair_views.append({
            "dataset": files.dataset, "backbone": files.backbone, "id": slug(files.dataset, files.backbone),
            "stages": stages, "subset": subset_view(files.subset),
            "explore": relative(files.explore, page_folder) if files.explore else None,
        })
    backbones = {pair.backbone for pair in pairs}
    html = render("report.html.j2", datasets=list(dataset_views.values()), pairs=pair_views,
                  comparison=comparison(pair_views) if len(backbones) > 1 else None,
                  config=config_text, versions=software_versions(), slug=slug,
                  generated=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    write_text_atomic(output, html)
