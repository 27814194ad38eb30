"""Rule novelty_summary: the novelty stage's summary.json from the fit, the quality measurement and the
datasets scored against the model."""

import json

from embedlens.logs import job_logger
from embedlens.novelty import novelty_summary


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


log = job_logger("novelty_summary", snakemake.log[0])
summary = novelty_summary(read_json(snakemake.input.fit), read_json(snakemake.input.quality),
                          [read_json(path) for path in snakemake.input.scored],
                          dataset=snakemake.wildcards.dataset, backbone=snakemake.wildcards.backbone)
summary.write(snakemake.output[0])
log.info("%s", json.dumps(summary.headline))
