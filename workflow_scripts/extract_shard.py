"""Rule extract_shard: embed one shard of the manifest with one backbone, recording the feature recipe."""

import time

import torch

from embedlens.backbones import load_backbone
from embedlens.datasets import open_dataset
from embedlens.devices import acquire_device
from embedlens.extract import Progress, extract_features
from embedlens.logs import job_logger
from embedlens.manifest import read_manifest
from embedlens.recipe import file_digest, job_recipe
from embedlens.shards import open_shard, shard_rows

shard = snakemake.wildcards.scatteritem
recipe = snakemake.params.recipe
settings = snakemake.config["extract"]  # batch size and workers change speed, never the features
log = job_logger("extract", snakemake.log[0])
torch.set_num_threads(snakemake.threads)

manifest = read_manifest(snakemake.input.manifest)
rows = shard_rows(len(manifest), shard)
device, gpu = acquire_device(recipe["extract"]["device"], "extract.device")
backbone = load_backbone(recipe["backbone"])
amp = recipe["extract"]["amp"]
full_recipe = job_recipe(recipe, manifest_digest=file_digest(snakemake.input.manifest),
                         described=backbone.describe(), device_type=device.type, amp=amp)
log.info("shard %s of %s x %s: %d images on %s (%s, %d-d, %s, %s preprocessing, %s, %d threads)", shard,
         snakemake.wildcards.dataset, backbone.name, len(rows), device, backbone.model_id, backbone.dim,
         full_recipe["resolved"]["precision"], recipe["extract"]["preprocess"],
         "compiled" if settings["compile"] else "not compiled", snakemake.threads)

start = time.monotonic()
with open_shard(snakemake.output[0], rows, backbone.dim, full_recipe) as shard_file:
    _, failed = extract_features(
        backbone, open_dataset(snakemake.params.dataset), manifest.iloc[rows], device=device,
        batch_size=settings["batch_size"], num_workers=settings["num_workers"], amp=amp,
        preprocess=recipe["extract"]["preprocess"], compile=settings["compile"], out=shard_file.features,
        progress=Progress(len(rows), log, label=f"shard {shard}: "),
    )
    shard_file.finish(failed, time.monotonic() - start)
for position, reason in sorted(failed.items()):
    row = manifest.iloc[rows[position]]
    log.warning("skipped %s image %s (%s): %s", row["split"], row["index_in_split"], row["source"], reason)
