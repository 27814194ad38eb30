"""Rule cluster_temi: TEMI heads trained on the fit split's features (embedlens.cluster.temi_run.run_temi:
neighbours mined once with the shared k-NN), the teacher's best head assigning both splits; checkpoints
(the neighbours and warm start, then the training) in cluster/temi/checkpoints/."""

import json

import torch

from embedlens.atomic import atomic_path, write_text_atomic
from embedlens.checkpoint import remove_checkpoints
from embedlens.cluster.results import (Assignment, clustering_problem, number_of_clusters, read_splits,
                                       save_predictions, write_skipped_fit)
from embedlens.cluster.settings import ClusterSettings
from embedlens.cluster.temi import uniform_loss
from embedlens.cluster.temi_run import run_temi
from embedlens.devices import acquire_device
from embedlens.logs import job_logger
from embedlens.manifest import write_table
from embedlens.plots import training_curves
from embedlens.store import FeatureStore

log = job_logger("cluster_temi", snakemake.log[0])
settings = ClusterSettings.from_config({**snakemake.params.settings, "enabled": True, "methods": ["temi"]})
temi = settings.temi
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
problem = clustering_problem(store, settings)
if problem:
    log.warning("not clustered: %s", problem)
    write_skipped_fit("temi", problem, store.class_names, predictions=snakemake.output.predictions,
                      fit=snakemake.output.fit, model=snakemake.output.model, history=snakemake.output.history,
                      curve=snakemake.output.curve)
    raise SystemExit(0)
train, test = read_splits(store, settings)
clusters = number_of_clusters(settings, train.labels)

torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device, "cluster.device")  # the claim holds the GPU until the job ends
run = run_temi(train, test, clusters, temi, settings.kmeans, settings.seed, device,
               checkpoints=snakemake.params.checkpoints, log=log)
save_predictions(snakemake.output.predictions, "temi", clusters, {
    settings.train_split: Assignment(train.index, run.train_clusters, train.labels),
    settings.test_split: Assignment(test.index, run.test_clusters, test.labels)}, store.class_names)
standardizer = run.standardizer
with atomic_path(snakemake.output.model) as tmp:
    torch.save({"teacher": run.fit.teacher, "best_head": run.fit.best_head, "clusters": clusters,
                "embed_mean": None if standardizer is None else standardizer.mean,
                "embed_std": None if standardizer is None else standardizer.std,
                "settings": settings.as_dict(), "recipe": snakemake.params.recipe}, tmp)
history = run.fit.history.assign(uniform_loss=uniform_loss(clusters, temi.beta))
write_table(history, snakemake.output.history)
training_curves(history, snakemake.output.curve, panels={"TEMI loss": ["loss_mean", "loss_best", "uniform_loss"]},
                title=f"{snakemake.wildcards.dataset} x {snakemake.wildcards.backbone}: TEMI, {clusters} clusters")
document = {**run.document(temi), "device": str(device)}
write_text_atomic(snakemake.output.fit, json.dumps(document, indent=2) + "\n")
remove_checkpoints(snakemake.params.checkpoints)
log.info("head %d chosen (loss %.4f); %d of %d clusters hold train images; %.0f s", run.fit.best_head,
         document["final_loss"], run.statistics[run.fit.best_head]["active_clusters"], clusters, run.seconds)
