"""Rule cluster_temi: TEMI heads trained on the fit split's features (neighbours mined once with the
shared k-NN), the teacher's best head assigning both splits; checkpoints in cluster/temi/checkpoints/."""

import dataclasses
import json
import time

import torch

from embedlens.atomic import atomic_path, write_text_atomic
from embedlens.classify.results import remove_checkpoints
from embedlens.cluster.kmeans import fit_kmeans
from embedlens.cluster.metrics import neighbour_agreement
from embedlens.cluster.results import (Assignment, clustering_problem, number_of_clusters, read_splits,
                                       save_predictions, write_skipped_fit)
from embedlens.cluster.settings import ClusterSettings
from embedlens.cluster.temi import (diagnose, head_probabilities, head_statistics, load_heads,
                                    train_temi, uniform_loss)
from embedlens.devices import acquire_device
from embedlens.knn import cosine_topk
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
notes = []
if temi.neighbours >= len(train.labels):  # few images: every other image is a neighbour
    notes.append(f"cluster.temi.neighbours = {temi.neighbours} lowered to {len(train.labels) - 1}: split "
                 f"{settings.train_split!r} has only {len(train.labels)} images")
    log.info("%s", notes[-1])
    temi = dataclasses.replace(temi, neighbours=len(train.labels) - 1)

torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device)  # the claim holds the GPU until the job ends
started = time.monotonic()
neighbours = cosine_topk(train.features, k=temi.neighbours, device=device).indices  # self excluded
agreement = neighbour_agreement(neighbours, train.labels)
log.info("%d %r images, %d clusters, %d heads on %s; %d neighbours each mined in %.0f s, %s share the image's label",
         len(train.labels), settings.train_split, clusters, temi.heads, device, temi.neighbours,
         time.monotonic() - started, "n/a" if agreement is None else f"{agreement:.1%}")
warm_start = (fit_kmeans(train.features, clusters, settings.kmeans, settings.seed).labels_
              if temi.warm_start == "kmeans" else None)
fit = train_temi(train.features, neighbours, clusters, temi, settings.seed, device, warm_start=warm_start,
                 checkpoint=f"{snakemake.params.checkpoints}/train.pt",
                 progress=lambda row: log.info("epoch %(epoch)d: loss %(loss_mean).4f (best head %(best_head)d: "
                                               "%(loss_best).4f), lr %(learning_rate).2e", row))
if fit.resumed_at_epoch:
    log.info("resumed from the checkpoint at epoch %d", fit.resumed_at_epoch)
heads = load_heads(fit.teacher, temi, device)
train_probabilities = head_probabilities(heads, train.features, temi, device)
statistics = head_statistics(train_probabilities)
warnings = diagnose(statistics, fit.head_losses[-1], clusters, temi.beta)
for warning in warnings:
    log.warning("%s", warning)
test_probabilities = head_probabilities(heads, test.features, temi, device)[fit.best_head]
seconds = time.monotonic() - started
save_predictions(snakemake.output.predictions, "temi", clusters, {
    settings.train_split: Assignment(train.index, train_probabilities[fit.best_head].argmax(axis=1), train.labels),
    settings.test_split: Assignment(test.index, test_probabilities.argmax(axis=1), test.labels)}, store.class_names)
with atomic_path(snakemake.output.model) as tmp:
    torch.save({"teacher": fit.teacher, "best_head": fit.best_head, "clusters": clusters,
                "settings": settings.as_dict(), "recipe": snakemake.params.recipe}, tmp)
history = fit.history.assign(uniform_loss=uniform_loss(clusters, temi.beta))
write_table(history, snakemake.output.history)
training_curves(history, snakemake.output.curve, panels={"TEMI loss": ["loss_mean", "loss_best", "uniform_loss"]},
                title=f"{snakemake.wildcards.dataset} x {snakemake.wildcards.backbone}: TEMI, {clusters} clusters")
document = {"method": "temi", "status": "fitted", "clusters": clusters, "seconds": round(seconds, 1),
            "device": str(device),
            "train_images": len(train.labels), "test_images": len(test.labels), "neighbours": temi.neighbours,
            "neighbour_agreement": agreement, "heads": temi.heads, "epochs": temi.epochs, "warm_start": temi.warm_start,
            "batch_size": fit.batch_size, "steps_per_epoch": fit.steps_per_epoch, "best_head": fit.best_head,
            "final_loss": float(fit.head_losses[-1][fit.best_head]), "uniform_loss": uniform_loss(clusters, temi.beta),
            "head_statistics": statistics, "resumed_at_epoch": fit.resumed_at_epoch, "notes": notes,
            "warnings": warnings}
write_text_atomic(snakemake.output.fit, json.dumps(document, indent=2) + "\n")
remove_checkpoints(snakemake.params.checkpoints)
log.info("head %d chosen (loss %.4f); %d of %d clusters hold train images; %.0f s", fit.best_head,
         document["final_loss"], statistics[fit.best_head]["active_clusters"], clusters, seconds)
