"""Rule extract_shard: embed one shard of the manifest with one backbone."""

import torch

from embedlens.backbones import load_backbone
from embedlens.datasets import open_dataset
from embedlens.devices import acquire_device
from embedlens.extract import Progress, extract_features, shard_rows, write_shard
from embedlens.logs import job_logger
from embedlens.manifest import read_manifest

shard = snakemake.wildcards.scatteritem
settings = snakemake.params.extract
log = job_logger("extract", snakemake.log[0])
torch.set_num_threads(snakemake.threads)

manifest = read_manifest(snakemake.input.manifest)
rows = shard_rows(len(manifest), shard)
device, gpu = acquire_device(settings["device"])
backbone = load_backbone(snakemake.params.backbone)
log.info("shard %s of %s x %s: %d images on %s (%s, %d-d, %d threads)", shard, snakemake.wildcards.dataset,
         backbone.name, len(rows), device, backbone.model_id, backbone.dim, snakemake.threads)

features = extract_features(
    backbone, open_dataset(snakemake.params.dataset), manifest.iloc[rows], device=device,
    batch_size=settings["batch_size"], num_workers=settings["num_workers"], amp=settings["amp"],
    progress=Progress(len(rows), log, label=f"shard {shard}: "),
)
write_shard(snakemake.output[0], rows, features, backbone.describe())
