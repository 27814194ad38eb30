"""Rule explore: the explore page of one dataset x backbone (UMAP of the embeddings, images on hover)."""

from embedlens.datasets import open_dataset
from embedlens.logs import job_logger
from embedlens.manifest import read_manifest
from embedlens.report.explore import build_explore_page, read_map_columns
from embedlens.store import FeatureStore

log = job_logger("explore", snakemake.log[0])
settings = snakemake.params.report
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
drawn = build_explore_page(
    store, read_manifest(snakemake.input.manifest), open_dataset(snakemake.params.dataset),
    snakemake.output[0], backbone=snakemake.wildcards.backbone, max_points=settings["map_points"],
    seed=settings["seed"], thumbnail_size=settings["thumbnail_size"],
    extra_columns=[read_map_columns(path) for path in snakemake.input.columns], workers=snakemake.threads,
    log=log.info,
)
log.info("%d of %d images drawn by %s, thumbnails in %d sheets: %s", drawn["points"], drawn["total"],
         drawn["method"], drawn["sheets"], snakemake.output[0])
