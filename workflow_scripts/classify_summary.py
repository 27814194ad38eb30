"""Rule classify_summary: the classifier stage's summary.json for the report."""

import json

from embedlens.classify.results import stage_summary
from embedlens.logs import job_logger

log = job_logger("classify_summary", snakemake.log[0])
documents = {}
for key in ("training", "analysis", "listing"):
    with open(snakemake.input[key]) as handle:
        documents[key] = json.load(handle)
summary = stage_summary(dataset=snakemake.wildcards.dataset, backbone=snakemake.wildcards.backbone,
                        training=documents["training"],
                        analysis=documents["analysis"], pair_figures=documents["listing"],
                        settings=snakemake.params.settings)
summary.write(snakemake.output.summary)
log.info("%s", json.dumps(summary.headline))
