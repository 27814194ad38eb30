"""Rule overlap: class centroids, cosine matrix (CSV + clustered heatmap), overlapping pairs, class union."""

from dataclasses import replace

from embedlens.logs import job_logger
from embedlens.overlap import (OverlapSettings, classes_document, compute_overlap, describe_result, overlap_summary,
                               save_centroids, write_classes_json, write_pairs_csv, write_similarity_csv)
from embedlens.plots import similarity_heatmap
from embedlens.store import FeatureStore
from embedlens.summary import StageSummary

log = job_logger("overlap", snakemake.log[0])
dataset, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
settings = OverlapSettings.from_config(snakemake.params.overlap)
skip = snakemake.params.skip
store = FeatureStore(snakemake.input.features)
store.check(dataset=dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
if skip:  # the files still describe what there is (every split's classes), for the stages that read them
    log.warning("overlap skipped: %s", skip)
    settings = replace(settings, splits=None)
result = compute_overlap(store, settings)

log.info("%s x %s: centroids of %d classes from %s (%s)", dataset, backbone, len(result.centroids),
         "+".join(result.splits), settings.centroid)
log.info("%s", describe_result(result))
write_similarity_csv(result.similarity, result.centroids.names, snakemake.output.similarity)
write_pairs_csv(result.pairs, snakemake.output.pairs)
save_centroids(result.centroids, snakemake.output.centroids)
similarity_heatmap(result.similarity, result.centroids.names, snakemake.output.heatmap,
                   title=f"{dataset} x {backbone}: cosine similarity of class centroids")
write_classes_json(classes_document(result, dataset=dataset, backbone=backbone, model=store.attrs.get("model"),
                                    summary=describe_result(result)), snakemake.output.classes)
summary = (StageSummary.skipped("overlap", skip, dataset=dataset, backbone=backbone, settings=settings.as_dict())
           if skip else overlap_summary(result, dataset=dataset, backbone=backbone))
summary.write(snakemake.output.summary)
