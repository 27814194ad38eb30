"""Rule audit_duplicates: the query split's nearest neighbours in the reference split and within itself,
the candidate pairs with their pixel verdicts, the likely-copies list, the grid of the closest pairs,
the histogram of nearest similarities, and duplicates.json for the summary."""

import json

import torch

from embedlens.atomic import write_text_atomic
from embedlens.audit.duplicates import AuditInputError, find_duplicates, image_reader
from embedlens.audit.results import duplicates_document, pair_pictures
from embedlens.audit.settings import AuditSettings
from embedlens.datasets import open_dataset
from embedlens.devices import acquire_device
from embedlens.images import FigureImages
from embedlens.logs import exit_on, job_logger
from embedlens.manifest import read_manifest, write_table
from embedlens.plots import histogram, image_grid
from embedlens.store import FeatureStore

log = job_logger("audit_duplicates", snakemake.log[0])
output = snakemake.output
name, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
settings = AuditSettings.from_config({**snakemake.params.audit, "enabled": True})
torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device, "audit.device")  # the claim holds the GPU until the job ends
store = FeatureStore(snakemake.input.features)
store.check(dataset=name, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
manifest = read_manifest(snakemake.input.manifest)
read = image_reader(open_dataset(snakemake.params.dataset), manifest)
with exit_on(log, AuditInputError):
    found = find_duplicates(store, manifest, settings, read, device)
for key, reason in found.unreadable.items():
    log.warning("%s #%d could not be read for the pixel check: %s", *key, reason)
write_table(found.pairs, output.pairs)
write_table(found.likely, output.likely)
query, reference = settings.query_split, settings.reference_split
reader = FigureImages(read, "pairs.png", log.warning)
images, captions = pair_pictures(found.pairs, reader, settings.pairs_shown)
image_grid(images, captions, output.grid, columns=8,
           title=f"{name} x {backbone}: closest {query}-{reference} pairs ({query} image, then its {reference} neighbour)")
threshold = settings.threshold if settings.selection == "threshold" else None
histogram(found.searches["within" if settings.one_split else "cross"].nearest, output.histogram, log=True,
          xlabel=f"cosine similarity of each {query} image to its nearest {reference} image"
                 + (" (itself left out)" if settings.one_split else ""), ylabel=f"{query} images",
          marked_x=threshold, marked_label=None if threshold is None else f"threshold {threshold:g}",
          title=f"{name} x {backbone}: nearest {reference} neighbour of each {query} image")
document = duplicates_document(found, settings, reader.unreadable)
write_text_atomic(output.document, json.dumps(document, indent=2) + "\n")
for search, entry in document["searches"].items():
    log.info("%s search: %d candidate pairs in %.1f s, per verdict %s", search, entry["pairs"], entry["seconds"],
             entry["pairs_per_verdict"])
