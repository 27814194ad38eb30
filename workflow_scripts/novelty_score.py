"""Rule novelty_score: the images of another dataset scored against a saved novelty model, without
refitting: its scores table, its most novel images and score.json for the summary."""

import json

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from embedlens.atomic import write_text_atomic
from embedlens.datasets import open_dataset
from embedlens.devices import acquire_device
from embedlens.logs import exit_on, job_logger
from embedlens.manifest import read_manifest, write_table
from embedlens.novelty.model import NoveltyModel
from embedlens.novelty.results import (check_model_matches, figure_images, flag_counts, most_novel_images, read_images,
                                       scores_table)
from embedlens.novelty.settings import NoveltyInputError, NoveltySettings
from embedlens.plots import image_grid
from embedlens.store import FeatureStore

log = job_logger("novelty_score", snakemake.log[0])
new, fitted = snakemake.wildcards.new, snakemake.wildcards.dataset
settings = NoveltySettings.from_config(snakemake.params.novelty)
torch.set_num_threads(snakemake.threads)
threadpool_limits(snakemake.threads)  # scikit-learn's k-means takes every core otherwise
device, gpu_claim = acquire_device(settings.device, "novelty.device")  # the claim holds the GPU until the job ends
store = FeatureStore(snakemake.input.features)
store.check(dataset=new, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
model = NoveltyModel.load(snakemake.input.model)
dataset = open_dataset(snakemake.params.dataset)
with exit_on(log, NoveltyInputError):
    check_model_matches(model, store)
    features, rows = read_images(store, read_manifest(snakemake.input.manifest), dataset)
table = scores_table(rows, model.score(features, device=device))
write_table(table, snakemake.output.scores)
reader = figure_images(dataset, f"score/{new}/novel.png", log.warning)
images, captions = most_novel_images(reader, table, settings.top_images)
image_grid(images, captions, snakemake.output.novel,
           title=f"{new} scored against {fitted} x {snakemake.wildcards.backbone}: most novel images (kNN distance)")
counts = flag_counts(table)
unreadable = len(pd.read_csv(snakemake.input.skipped)) + len(store.skipped())
write_text_atomic(snakemake.output.document, json.dumps({"dataset": new, "flags": counts, "unreadable": unreadable,
                                                        "blank_images": reader.unreadable}, indent=2) + "\n")
log.info("%s against the model of %s: %s; %d images could not be read", new, fitted, counts, unreadable)
