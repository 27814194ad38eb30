"""Rule novelty_summary: the novelty stage's summary.json from the fit, the quality measurement and the
datasets scored against the model."""

import json

from embedlens.logs import job_logger
from embedlens.novelty.summary import novelty_summary
from embedlens.summary import StageSummary, read_json


log = job_logger("novelty_summary", snakemake.log[0])
dataset, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
if snakemake.params.skip:
    log.warning("novelty skipped: %s", snakemake.params.skip)
    StageSummary.skipped("novelty", snakemake.params.skip, dataset=dataset, backbone=backbone,
                         settings=snakemake.params.settings).write(snakemake.output[0])
    raise SystemExit(0)
summary = novelty_summary(read_json(snakemake.input.fit), read_json(snakemake.input.quality),
                          [read_json(path) for path in snakemake.input.scored],
                          dataset=dataset, backbone=backbone)
summary.write(snakemake.output[0])
log.info("%s", json.dumps(summary.headline))
