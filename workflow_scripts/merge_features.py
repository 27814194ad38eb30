"""Rule merge_features: join the shard files of a dataset x backbone into its HDF5 feature store."""

import json

from embedlens.extract import merge_shards
from embedlens.logs import job_logger
from embedlens.manifest import read_manifest

log = job_logger("merge_features", snakemake.log[0])
manifest = read_manifest(snakemake.input.manifest)
with open(snakemake.input.info) as handle:
    info = json.load(handle)
merge_shards(snakemake.input.shards, manifest, snakemake.output[0],
             {"dataset": info["name"], "dataset_kind": info["kind"], "class_names": info["class_names"]})
log.info("merged %d shards, %d images, into %s", len(snakemake.input.shards), len(manifest), snakemake.output[0])
