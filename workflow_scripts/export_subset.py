"""Rule export_subset: the overlapping classes as a lossless, ImageFolder-friendly PNG tree."""

import json

from embedlens.atomic import write_text_atomic
from embedlens.datasets import open_dataset
from embedlens.export import dataset_prefix, export_subset
from embedlens.logs import job_logger
from embedlens.manifest import read_manifest
from embedlens.overlap import SIMILARITY_COLUMN, OverlapSettings, load_centroids, read_pairs_csv, subset_rows
from embedlens.store import FeatureStore

log = job_logger("export_subset", snakemake.log[0])
settings = OverlapSettings.from_config(snakemake.params.overlap)
manifest = read_manifest(snakemake.input.manifest)
with open(snakemake.input.classes) as handle:
    classes = [(entry["label"], entry["name"]) for entry in json.load(handle)["classes"]]
refine = settings.refine
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
rows = subset_rows(
    manifest, [label for label, _ in classes], refine=refine, store=store if refine.enabled else None,
    centroids=load_centroids(snakemake.input.centroids) if refine.enabled else None,
    pairs=read_pairs_csv(snakemake.input.pairs) if refine.enabled else None,
)
if not classes:
    log.warning("the overlap set is empty: writing an empty subset (folders and metadata headers only)")
elif refine.enabled:
    log.info("refinement %s kept %d of %d images of %d classes", refine.mode, len(rows),
             int(manifest["label"].isin([label for label, _ in classes]).sum()), len(classes))

dataset = open_dataset(snakemake.params.dataset)
summary = export_subset(
    dataset, rows, snakemake.output.subset, classes=classes, prefix=dataset_prefix(dataset.kind, dataset.name),
    splits=list(dict.fromkeys(manifest["split"])), similarity_column=SIMILARITY_COLUMN if refine.enabled else None,
    workers=snakemake.threads, log=log.info,
)
for split, count in summary["images"].items():
    log.info("%s: %d images in %d class folders", split, count, summary["num_classes"])
write_text_atomic(snakemake.output.manifest,
                  json.dumps({"dataset": dataset.name, "refine": settings.as_dict()["refine"], **summary}, indent=2))
