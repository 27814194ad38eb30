"""Rule imagenet_subset: one ImageNet class subset as {name}.npz plus its metadata, skipped and files CSVs."""

from embedlens.imagenet_subset import build_imagenet_subset
from embedlens.logs import job_logger

log = job_logger("imagenet_subset", snakemake.log[0])
params = snakemake.params
build_imagenet_subset(
    params.root,
    snakemake.input.wnids,
    snakemake.output.npz,
    metadata_path=snakemake.output.metadata,
    skipped_path=snakemake.output.skipped,
    files_path=snakemake.output.files,
    size=params.size,
    resize=params.resize,
    splits=params.splits,
    workers=snakemake.threads,
    chunk_size=params.chunk_size,
    logger=log,
)
