"""Rule distill_summary: the distillation stage's summary.json from distill.json and neighbours.json."""

import json

from embedlens.distill.summary import distill_summary
from embedlens.logs import job_logger
from embedlens.summary import StageSummary, read_json


log = job_logger("distill_summary", snakemake.log[0])
dataset, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
if snakemake.params.skip:
    log.warning("distillation skipped: %s", snakemake.params.skip)
    StageSummary.skipped("distill", snakemake.params.skip, dataset=dataset, backbone=backbone,
                         settings=snakemake.params.settings).write(snakemake.output[0])
    raise SystemExit(0)
summary = distill_summary(read_json(snakemake.input.document), read_json(snakemake.input.neighbours),
                          dataset=dataset, backbone=backbone)
summary.write(snakemake.output[0])
log.info("%s", json.dumps(summary.headline))
