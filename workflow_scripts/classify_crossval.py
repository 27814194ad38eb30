"""Rule classify_crossval: K-fold out-of-sample probabilities of the train split, for cleanlab."""

import time

import torch

from embedlens.checkpoint import remove_checkpoints
from embedlens.classify.data import crossval_problem, fit_and_test_rows
from embedlens.classify.results import write_crossval
from embedlens.classify.settings import ClassifySettings
from embedlens.classify.training import out_of_fold_probabilities
from embedlens.devices import acquire_device
from embedlens.logs import job_logger
from embedlens.store import FeatureStore

log = job_logger("classify_crossval", snakemake.log[0])
settings = ClassifySettings.from_config(snakemake.params.settings)
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
classes, rows, _, _ = fit_and_test_rows(store, snakemake.input.classes, settings)
problem = crossval_problem(classes, rows.targets, settings.folds, settings.val_fraction, settings.train_split)
if problem:
    log.warning("no out-of-sample probabilities: %s", problem)
    write_crossval(snakemake.output.crossval, snakemake.output.info, classes,
                   {"status": "skipped", "reason": problem, "folds": settings.folds})
    raise SystemExit(0)

torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device, "classify.device")  # the claim holds the GPU until the job ends
log.info("%d-fold cross-validation of %d %r images of %d classes on %s", settings.folds, len(rows.targets),
         settings.train_split, len(classes), device)
started = time.monotonic()
result = out_of_fold_probabilities(
    rows.features, rows.targets, len(classes), settings, device, checkpoint_dir=snakemake.params.checkpoints,
    progress=lambda fold, row: log.debug("fold %d epoch %d: val loss %.4f", fold, row["epoch"], row["val_loss"]))
seconds = time.monotonic() - started
accuracy = float((result.probabilities.argmax(axis=1) == rows.targets).mean())
write_crossval(snakemake.output.crossval, snakemake.output.info, classes,
               {"status": "done", "folds": settings.folds, "images": len(rows.targets),
                "best_epochs": result.best_epochs, "out_of_sample_accuracy": accuracy, "device": str(device),
                "seconds": round(seconds, 1)}, rows=rows, result=result)
remove_checkpoints(snakemake.params.checkpoints)
log.info("out-of-sample accuracy %.4f; best epochs %s; %.0f s", accuracy, result.best_epochs, seconds)
