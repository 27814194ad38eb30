"""Rule overlap: class centroids, cosine matrix (CSV + clustered heatmap), overlapping pairs, class union."""

from embedlens.logs import job_logger
from embedlens.overlap import (OverlapSettings, classes_document, compute_overlap, describe_result, overlap_summary,
                               save_centroids, write_classes_json, write_pairs_csv, write_similarity_csv)
from embedlens.plots import similarity_heatmap
from embedlens.store import FeatureStore

log = job_logger("overlap", snakemake.log[0])
dataset, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
settings = OverlapSettings.from_config(snakemake.params.overlap)
store = FeatureStore(snakemake.input.features)
store.check(dataset=dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
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
overlap_summary(result, dataset=dataset, backbone=backbone).write(snakemake.output.summary)
