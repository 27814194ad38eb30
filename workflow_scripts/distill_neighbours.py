"""Rule distill_neighbours: every synthetic vector's nearest real train images (neighbours.csv), a
picture grid of some of them (neighbours.png), and neighbours.json for the summary."""

import json

import torch

from embedlens.atomic import write_text_atomic
from embedlens.datasets import open_dataset
from embedlens.devices import acquire_device
from embedlens.distill.matching import Distilled
from embedlens.distill.pictures import grid_vectors, nearest_real, neighbour_rows
from embedlens.distill.settings import DistillSettings
from embedlens.images import FigureImages
from embedlens.logs import job_logger
from embedlens.manifest import read_manifest, write_table
from embedlens.plots import image_rows
from embedlens.store import FeatureStore

log = job_logger("distill_neighbours", snakemake.log[0])
name, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
settings = DistillSettings.from_config(snakemake.params.settings)
torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device, "distill.device")  # the claim holds the GPU until the job ends
store = FeatureStore(snakemake.input.features)
store.check(dataset=name, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
distilled, _ = Distilled.load(snakemake.input.distilled)
rows = store.join_manifest(settings.train_split, read_manifest(snakemake.input.manifest))
table = nearest_real(distilled, store.features(settings.train_split), rows, store.class_names, settings.neighbours,
                     device=device)
write_table(table, snakemake.output.table)
vectors = grid_vectors(distilled.labels, settings.grid_rows)
dataset = open_dataset(snakemake.params.dataset)
reader = FigureImages(lambda key: dataset.read_image(*key), "neighbours.png", log.warning)
image_rows(neighbour_rows(reader, table, vectors), snakemake.output.grid,
           title=f"{name} x {backbone}: synthetic vectors and their nearest real {settings.train_split} images")
same_class = float(table["same_class"].mean())
write_text_atomic(snakemake.output.document, json.dumps({"k": int(table["rank"].max()), "same_class": same_class,
                                                         "vectors_drawn": len(vectors),
                                                         "blank_images": reader.unreadable}, indent=2) + "\n")
log.info("%d synthetic vectors; %.1f%% of their nearest real images share their class", len(distilled.labels),
         100 * same_class)
