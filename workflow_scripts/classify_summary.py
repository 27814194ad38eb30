"""Rule classify_summary: the classifier stage's summary.json for the report."""

import json

from embedlens.classify.results import stage_summary
from embedlens.logs import job_logger
from embedlens.summary import StageSummary, read_json

log = job_logger("classify_summary", snakemake.log[0])
dataset, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
if snakemake.params.skip:
    log.warning("classifier skipped: %s", snakemake.params.skip)
    StageSummary.skipped("classify", snakemake.params.skip, dataset=dataset, backbone=backbone,
                         settings=snakemake.params.settings).write(snakemake.output.summary)
    raise SystemExit(0)
documents = {key: read_json(snakemake.input[key]) for key in ("training", "analysis", "listing")}
if documents["training"].get("status") == "skipped":  # the overlap set's classes cannot support a classifier
    summary = StageSummary.skipped("classify", documents["training"]["reason"], dataset=dataset, backbone=backbone,
                                   settings=snakemake.params.settings)
else:
    summary = stage_summary(dataset=dataset, backbone=backbone,
                            training=documents["training"],
                            analysis=documents["analysis"], pair_figures=documents["listing"],
                            settings=snakemake.params.settings)
summary.write(snakemake.output.summary)
log.info("%s", json.dumps(summary.headline))
