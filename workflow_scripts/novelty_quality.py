"""Rule novelty_quality: AUROC and FPR at 95% TPR of each score on held-out classes (mean and std over
draws, k chosen in each draw on its seen classes), when the images have classes; otherwise empty tables
and the reason in quality.json. Each finished draw checkpoints in novelty/checkpoints/quality/, so a killed
job started again resumes at the first draw not done."""

import json

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from embedlens.atomic import write_text_atomic
from embedlens.checkpoint import remove_checkpoints
from embedlens.datasets import open_dataset
from embedlens.devices import acquire_device
from embedlens.logs import exit_on, job_logger
from embedlens.manifest import read_manifest, write_table
from embedlens.novelty.quality import (DRAW_COLUMNS, measure_quality, quality_document, summarize_quality,
                                       unseen_class_quality)
from embedlens.novelty.results import read_images
from embedlens.novelty.settings import NoveltyInputError, NoveltySettings
from embedlens.store import FeatureStore

log = job_logger("novelty_quality", snakemake.log[0])
settings = NoveltySettings.from_config(snakemake.params.novelty)
torch.set_num_threads(snakemake.threads)
threadpool_limits(snakemake.threads)  # scikit-learn's k-means takes every core otherwise
device, gpu_claim = acquire_device(settings.device, "novelty.device")  # the claim holds the GPU until the job ends
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
with exit_on(log, NoveltyInputError):
    features, rows = read_images(store, read_manifest(snakemake.input.manifest), open_dataset(snakemake.params.dataset),
                                 settings.splits)
labels = rows["label"].to_numpy()
reason = measure_quality(labels, settings)
if reason is None:
    with exit_on(log, NoveltyInputError):
        per_draw = unseen_class_quality(features, labels, settings, store.class_names,
                                        folder=snakemake.params.checkpoints, report=log.info)
    table = summarize_quality(per_draw)
    document = quality_document(per_draw, table, labels, settings)
    log.info("detection quality over %d draws, k per draw %s:\n%s", settings.quality.draws, document["k_per_draw"],
             table.to_string(index=False))
else:
    per_draw = pd.DataFrame(columns=DRAW_COLUMNS)
    table = summarize_quality(per_draw)
    document = {"measured": False, "reason": reason}
    log.info("detection quality not measured: %s", reason)
write_table(per_draw, snakemake.output.draws)
write_table(table, snakemake.output.table)
write_text_atomic(snakemake.output.document, json.dumps(document, indent=2) + "\n")
remove_checkpoints(snakemake.params.checkpoints)
