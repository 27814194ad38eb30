"""Rule merge_features: stream the shard files of a dataset x backbone into its HDF5 feature store,
refusing shards made with another feature recipe; write the stage's summary and skipped images."""

import json
from pathlib import Path

from embedlens.logs import exit_on, job_logger
from embedlens.manifest import write_table
from embedlens.recipe import file_digest
from embedlens.shards import NonFiniteFeatures, features_summary, merge_shards
from embedlens.store import FeatureStore

log = job_logger("merge_features", snakemake.log[0])
output = snakemake.output
with open(snakemake.input.info) as handle:
    info = json.load(handle)
expected = {**snakemake.params.recipe, "manifest_digest": file_digest(snakemake.input.manifest)}
with exit_on(log, NonFiniteFeatures):
    extraction = merge_shards(snakemake.input.shards, snakemake.input.manifest, output.store, expected=expected,
                              attrs={"dataset": info["name"], "dataset_kind": info["kind"],
                                     "class_names": info["class_names"]})
store = FeatureStore(output.store)
write_table(store.skipped(), output.skipped)
features_summary(store, Path(output.skipped).name).write(output.summary)
log.info("merged %d shards into %s: %d images, %d failed to decode, %.1f images/s per job (%s, %s)",
         extraction["shards"], output.store, extraction["images"], extraction["skipped"],
         extraction["images_per_second"] or 0.0, extraction["device"], extraction["precision"])
