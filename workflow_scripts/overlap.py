"""Rule overlap: class centroids, cosine matrix (CSV + clustered heatmap), overlapping pairs, class union."""

from embedlens.logs import job_logger
from embedlens.manifest import read_manifest
from embedlens.overlap import (OverlapSettings, check_store_dataset, check_store_matches_manifest, classes_document,
                               compute_overlap, describe_result, overlap_summary, save_centroids, write_classes_json,
                               write_pairs_csv, write_similarity_csv)
from embedlens.plots import similarity_heatmap
from embedlens.store import read_attrs, read_split, store_splits

log = job_logger("overlap", snakemake.log[0])
dataset, backbone = snakemake.params.dataset["name"], snakemake.params.backbone["name"]
store = snakemake.input.features
settings = OverlapSettings.from_config(snakemake.params.overlap)
manifest = read_manifest(snakemake.input.manifest)
attrs = read_attrs(store)
check_store_dataset(attrs, dataset, store)
splits = {split: read_split(store, split) for split in store_splits(store)}
check_store_matches_manifest(splits, manifest, store)
result = compute_overlap(splits, attrs["class_names"], settings)

log.info("%s x %s: centroids of %d classes from %s (%s)", dataset, backbone, len(result.centroids),
         "+".join(result.splits), settings.centroid)
log.info("%s", describe_result(result))
write_similarity_csv(result.similarity, result.centroids.names, snakemake.output.similarity)
write_pairs_csv(result.pairs, snakemake.output.pairs)
save_centroids(result.centroids, snakemake.output.centroids)
similarity_heatmap(result.similarity, result.centroids.names, snakemake.output.heatmap,
                   title=f"{dataset} x {backbone}: cosine similarity of class centroids")
write_classes_json(classes_document(result, dataset=dataset, backbone=backbone, model=attrs.get("model"),
                                    summary=describe_result(result)), snakemake.output.classes)
overlap_summary(result, dataset=dataset, backbone=backbone).write(snakemake.output.summary)
