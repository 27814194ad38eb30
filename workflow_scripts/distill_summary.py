"""Rule distill_summary: the distillation stage's summary.json from distill.json and neighbours.json."""

import json

from embedlens.distill import distill_summary
from embedlens.logs import job_logger


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


log = job_logger("distill_summary", snakemake.log[0])
summary = distill_summary(read_json(snakemake.input.document), read_json(snakemake.input.neighbours),
                          dataset=snakemake.wildcards.dataset, backbone=snakemake.wildcards.backbone)
summary.write(snakemake.output[0])
log.info("%s", json.dumps(summary.headline))
