"""Rule manifest: scan a dataset into manifest.csv, skipped.csv and dataset.json."""

import json

from embedlens.atomic import write_text_atomic
from embedlens.datasets import open_dataset
from embedlens.logs import job_logger
from embedlens.manifest import write_table

log = job_logger("manifest", snakemake.log[0])
dataset = open_dataset(snakemake.params.spec)
dataset.scan_workers = snakemake.threads
log.info("scanning dataset %r (kind %s)", dataset.name, dataset.kind)
scan = dataset.scan()
summary = scan.summary(dataset)
for split, count in summary["images"].items():
    log.info("%s: %d images", split, count)
if summary["skipped"]:
    log.warning("skipped %d unreadable images, listed in %s", summary["skipped"], snakemake.output.skipped)
write_table(scan.manifest, snakemake.output.manifest)
write_table(scan.skipped, snakemake.output.skipped)
write_text_atomic(snakemake.output.info, json.dumps(summary, indent=2))
