"""Rule audit_labels: out-of-sample probabilities of a cross-validated softmax probe for every labelled
image (on the GPU when there is one; the folds' probabilities checkpoint in audit/checkpoints/labels/),
cleanlab's likely label errors, their grid, and labels.json for the summary."""

import json

import torch

from embedlens.atomic import write_text_atomic
from embedlens.audit.duplicates import AuditInputError, image_reader
from embedlens.audit.labels import check_labels, labelled_features
from embedlens.audit.results import issue_pictures, labels_document
from embedlens.audit.settings import AuditSettings
from embedlens.checkpoint import remove_checkpoints
from embedlens.datasets import open_dataset
from embedlens.devices import acquire_device
from embedlens.images import FigureImages
from embedlens.logs import exit_on, job_logger
from embedlens.manifest import read_manifest, write_table
from embedlens.plots import image_grid
from embedlens.store import FeatureStore

log = job_logger("audit_labels", snakemake.log[0])
output = snakemake.output
name, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
settings = AuditSettings.from_config({**snakemake.params.audit, "enabled": True})
store = FeatureStore(snakemake.input.features)
store.check(dataset=name, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
with exit_on(log, AuditInputError):
    features, rows = labelled_features(store, settings.label_splits)
torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device, "audit.device")  # the claim holds the GPU until the job ends
check = check_labels(features, rows, store.class_names, settings, device=device, folder=snakemake.params.checkpoints)
write_table(check.issues, output.issues)
read = image_reader(open_dataset(snakemake.params.dataset), read_manifest(snakemake.input.manifest))
reader = FigureImages(read, "label_issues.png", log.warning)
images, captions = issue_pictures(check.issues, reader, settings.issues_shown)
image_grid(images, captions, output.grid, columns=8,
           title=f"{name} x {backbone}: most likely label errors (cleanlab, {settings.folds}-fold softmax probe)")
document = labels_document(check, reader.unreadable)
write_text_atomic(output.document, json.dumps(document, indent=2) + "\n")
remove_checkpoints(snakemake.params.checkpoints)
log.info("%d labelled images checked, %d likely label errors, probe accuracy %s", document["checked"],
         document["issues"], document["probe_accuracy"])
for note in check.notes:
    log.warning("%s", note)
