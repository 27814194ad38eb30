"""Rule classify_train: the MLP on the chosen classes' features, tested with its best-validation-loss weights."""

import time

import torch

from embedlens.checkpoint import remove_checkpoints
from embedlens.classify.data import classifier_problem, describe_classes, fit_and_test_rows
from embedlens.classify.results import write_training_outputs
from embedlens.classify.settings import ClassifySettings
from embedlens.classify.training import fit_mlp, hidden_sizes, predict_proba, train_val_split
from embedlens.devices import acquire_device
from embedlens.logs import job_logger
from embedlens.store import FeatureStore

log = job_logger("classify_train", snakemake.log[0])
settings = ClassifySettings.from_config(snakemake.params.settings)
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
classes, rows, test, notes = fit_and_test_rows(store, snakemake.input.classes, settings)
problem = classifier_problem(classes, rows.targets, settings.val_fraction, settings.train_split)
if problem:
    log.warning("no classifier: %s", problem)
    write_training_outputs(snakemake.output, classes, {"status": "skipped", "reason": problem,
                                                       "classes": list(classes.names)})
    raise SystemExit(0)

torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device, "classify.device")  # the claim holds the GPU until the job ends
log.info("%d classes (%s), %d %r images, on %s", len(classes), describe_classes(classes), len(rows.targets),
         settings.train_split, device)
for note in notes:
    log.info("%s", note)
fit_rows, val_rows = train_val_split(rows.targets, settings.val_fraction, settings.seed)
started = time.monotonic()
fit = fit_mlp(rows.features[fit_rows], rows.targets[fit_rows], rows.features[val_rows], rows.targets[val_rows],
              len(classes), settings, device, checkpoint=f"{snakemake.params.checkpoints}/train.pt",
              progress=lambda row: log.debug("epoch %(epoch)d: train loss %(train_loss).4f, val loss %(val_loss).4f, "
                                            "val accuracy %(val_accuracy).4f", row))
seconds = time.monotonic() - started
if fit.resumed_at_epoch:
    log.info("resumed from the checkpoint at epoch %d", fit.resumed_at_epoch)
hidden = hidden_sizes(store.dim, settings.hidden_fractions)
probabilities = predict_proba(fit.state_dict, test.features, hidden, len(classes), settings.dropout, device)
accuracy = float((probabilities.argmax(axis=1) == test.targets).mean()) if len(test.targets) else None
info = {"status": "trained", "classes": list(classes.names), "dim": store.dim, "hidden": hidden,
        "train_images": len(fit_rows), "val_images": len(val_rows), "test_images": len(test.targets),
        "epochs_run": int(len(fit.history)), "best_epoch": fit.best_epoch, "best_val_loss": fit.best_val_loss,
        "stopped_early": fit.stopped_early, "resumed_at_epoch": fit.resumed_at_epoch, "device": str(device),
        "seconds": round(seconds, 1), "test_accuracy": accuracy, "notes": notes}
write_training_outputs(snakemake.output, classes, info, fit=fit, test=test, probabilities=probabilities,
                       model={"class_labels": list(classes.labels), "class_names": list(classes.names),
                              "dim": store.dim, "hidden": hidden, "dropout": settings.dropout,
                              "settings": settings.as_dict(), "recipe": snakemake.params.recipe})
remove_checkpoints(snakemake.params.checkpoints)
log.info("best epoch %d of %d (val loss %.4f); test accuracy %s; %.0f s", fit.best_epoch, len(fit.history),
         fit.best_val_loss, "n/a" if accuracy is None else f"{accuracy:.4f}", seconds)
