"""Rule cluster_summary: every method's metrics side by side (metrics.csv), the stage's summary.json and
each image's cluster per method for the explore map (map_columns.csv)."""

import json

from embedlens.cluster.results import cluster_summary, load_predictions, map_columns, metrics_table
from embedlens.cluster.settings import ClusterSettings
from embedlens.logs import job_logger
from embedlens.manifest import write_table
from embedlens.summary import StageSummary, read_json

log = job_logger("cluster_summary", snakemake.log[0])
settings = ClusterSettings.from_config(snakemake.params.settings)
dataset, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
skip = snakemake.params.skip
documents = [read_json(path) for path in ([] if skip else snakemake.input.results)]
predictions = {}
for path in [] if skip else snakemake.input.predictions:
    method, _, assignments, _ = load_predictions(path)
    predictions[method] = assignments
write_table(metrics_table(documents), snakemake.output.metrics)
write_table(map_columns(predictions), snakemake.output.map_columns)
if skip:
    log.warning("clustering skipped: %s", skip)
summary = (StageSummary.skipped("cluster", skip, dataset=dataset, backbone=backbone, settings=settings.as_dict())
           if skip else cluster_summary(documents, settings, dataset=dataset, backbone=backbone))
summary.write(snakemake.output.summary)
log.info("%s", json.dumps(summary.headline))
