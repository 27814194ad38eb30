"""Rule distill_fit: the experts' trajectories on the features of the train split's fit rows (its
validation part left out) and the synthetic vectors matched to them, saved to distilled.h5 with the
matching-loss curve."""

import torch

from embedlens.checkpoint import remove_checkpoints
from embedlens.devices import acquire_device
from embedlens.distill.data import label_source, read_rows
from embedlens.distill.matching import distill_backing_off
from embedlens.distill.settings import DistillInputError, DistillSettings
from embedlens.logs import exit_on, job_logger
from embedlens.pseudo_labels import PseudoLabelsError
from embedlens.plots import curve
from embedlens.store import FeatureStore

log = job_logger("distill_fit", snakemake.log[0])
name, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
settings = DistillSettings.from_config(snakemake.params.settings)
store = FeatureStore(snakemake.input.features)
store.check(dataset=name, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
pseudo_labels = snakemake.input.get("pseudo_labels")
with exit_on(log, DistillInputError, PseudoLabelsError):
    train = read_rows(store, settings, pseudo_labels).fit
torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device, "distill.device")  # the claim holds the GPU until the job ends
source = label_source(settings, pseudo_labels)
log.info("%s x %s: %d %r images, %s, %d vector(s) per class, on %s", name, backbone, len(train.labels),
         settings.train_split, source, settings.per_class, device)


def progress(row):
    if row["phase"] == "experts":
        log.info("%d experts trained (%.0f s)", row["experts"], row["seconds"])
    elif row["iteration"] % 50 == 0 or row["iteration"] == settings.iterations:
        log.debug("iteration %(iteration)d: matching loss %(matching_loss).4f, learning rate %(learning_rate).4g", row)


with exit_on(log, DistillInputError):
    result, used, notes = distill_backing_off(train.features, train.labels, len(store.class_names), settings, device,
                                              checkpoint_dir=snakemake.params.checkpoints, progress=progress)
for note in notes:
    log.warning("%s", note)
if result.resumed_at_iteration:
    log.info("resumed from the checkpoint at iteration %d", result.resumed_at_iteration)
result.save(snakemake.output.distilled, class_names=store.class_names,
            info={"dataset": name, "backbone": backbone, "label_source": source, "train_split": settings.train_split,
                  "train_images": int(len(train.labels)), "device": str(device), "recipe": store.recipe,
                  "settings": used.as_dict(), "notes": notes})
curve(result.history["iteration"], result.history["matching_loss"], snakemake.output.curve, xlabel="iteration",
      ylabel="matching loss (relative parameter distance)",
      title=f"{name} x {backbone}: trajectory matching, {settings.per_class} vector(s) per class")
remove_checkpoints(snakemake.params.checkpoints)
log.info("%d synthetic vectors, learned lr %.4g, %.0f s", len(result.labels), result.learned_lr, result.seconds)
