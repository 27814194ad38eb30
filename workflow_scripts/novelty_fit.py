"""Rule novelty_fit: k-means (k at the elbow, or novelty.k) on the fit part, scores of the held-out part,
the saved model, the elbow, PCA, cluster and most-novel-images figures, and fit.json for the summary."""

import json

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from embedlens.atomic import write_text_atomic
from embedlens.datasets import open_dataset
from embedlens.devices import acquire_device
from embedlens.logs import exit_on, job_logger
from embedlens.manifest import read_manifest, write_table
from embedlens.novelty.fit import fit_novelty, pca_map
from embedlens.novelty.results import (fit_document, figure_images, map_columns, most_novel_images, read_images,
                                       scores_table)
from embedlens.novelty.settings import NoveltyInputError, NoveltySettings
from embedlens.plots import bar_chart, curve, image_grid, scatter_map
from embedlens.store import FeatureStore

log = job_logger("novelty_fit", snakemake.log[0])
output = snakemake.output
name, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
settings = NoveltySettings.from_config(snakemake.params.novelty)
torch.set_num_threads(snakemake.threads)
threadpool_limits(snakemake.threads)  # scikit-learn's k-means takes every core otherwise
device, gpu_claim = acquire_device(settings.device, "novelty.device")  # the claim holds the GPU until the job ends
store = FeatureStore(snakemake.input.features)
store.check(dataset=name, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
dataset = open_dataset(snakemake.params.dataset)
with exit_on(log, NoveltyInputError):
    features, rows = read_images(store, read_manifest(snakemake.input.manifest), dataset, settings.splits)
    fit = fit_novelty(features, settings, info={"dataset": name, "backbone": backbone, "recipe": store.recipe,
                                                "settings": settings.as_dict()})
model = fit.model
log.info("%s x %s: %d images, k = %d (%s), %d fit, %d held out", name, backbone, len(features), model.k,
         "elbow" if fit.searched else "novelty.k", len(fit.fit_rows), len(fit.held_out_rows))
for note in fit.notes:
    log.info("%s", note)

model.save(output.model)
table = scores_table(rows.iloc[fit.held_out_rows], fit.scores)
write_table(table, output.scores)
write_table(fit.curve, output.elbow_table)
write_table(map_columns(rows, fit, features), output.map_columns)
curve(fit.curve["k"], fit.curve["inertia"], output.elbow, xlabel="k (clusters)", ylabel="inertia per image",
      marked_x=model.k, marked_label=f"chosen k = {model.k}" + ("" if fit.searched else " (novelty.k)"),
      title=f"{name} x {backbone}: k-means inertia")
xy, clusters, centroid_xy, explained = pca_map(model, points=settings.scatter_points, seed=settings.seed)
scatter_map(xy, clusters, output.pca, centers=centroid_xy, group_name="cluster",
            xlabel=f"PC 1 ({explained[0]:.0%} of variance)",
            ylabel=f"PC 2 ({explained[1]:.0%} of variance)" if len(explained) > 1 else "PC 2",
            title=f"{name} x {backbone}: fit images by cluster ({len(xy)} shown)")
bar_chart([str(c) for c in range(model.k)], np.bincount(fit.scores["cluster"], minlength=model.k), output.clusters,
          xlabel="cluster", ylabel="held-out images", title=f"{name} x {backbone}: held-out images per cluster")
reader = figure_images(dataset, "novel.png", log.warning)
images, captions = most_novel_images(reader, table, settings.top_images)
image_grid(images, captions, output.novel, title=f"{name} x {backbone}: most novel held-out images (kNN distance)")
document = fit_document(fit, settings, unreadable=len(pd.read_csv(snakemake.input.skipped)) + len(store.skipped()),
                        blank_images=reader.unreadable)
write_text_atomic(output.document, json.dumps(document, indent=2) + "\n")
log.info("held-out flags: %s", document["flags"])
