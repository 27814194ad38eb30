"""Rule distill_evaluate: the classifier trained from scratch on the distilled set, a random real subset
of the same size, the class centroids and the full train split over seeds, tested on the test split;
evaluation tables and distill.json."""

import json
import time

import torch

from embedlens.atomic import write_text_atomic
from embedlens.devices import acquire_device
from embedlens.distill import (DistillInputError, Distilled, DistillSettings, distill_document, evaluate, read_rows,
                               summarize_evaluation)
from embedlens.logs import exit_on, job_logger
from embedlens.pseudo_labels import PseudoLabelsError
from embedlens.roles import holdout_note
from embedlens.manifest import write_table
from embedlens.store import FeatureStore

log = job_logger("distill_evaluate", snakemake.log[0])
settings = DistillSettings.from_config(snakemake.params.settings)
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
with exit_on(log, DistillInputError, PseudoLabelsError):
    train, test = read_rows(store, settings, snakemake.input.get("pseudo_labels"))
distilled, attrs = Distilled.load(snakemake.input.distilled)
torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device, "distill.device")  # the claim holds the GPU until the job ends
started = time.monotonic()
per_seed = evaluate(distilled, train, test, len(store.class_names), settings, device,
                    progress=lambda row: log.info("%(set)s, seed %(seed)d: test accuracy %(accuracy).4f", row))
table = summarize_evaluation(per_seed)
document = distill_document(distilled, table, settings, train_images=len(train.labels),
                            classes=len(set(train.labels.tolist())), label_source=attrs["label_source"],
                            evaluation_seconds=time.monotonic() - started)
document["notes"] = attrs.get("notes", []) + ([holdout_note(settings.train_split, settings.holdout_fraction,
                                                            len(test.labels), len(train.labels))]
                                               if settings.test_split == settings.train_split else [])
write_table(per_seed, snakemake.output.seeds)
write_table(table, snakemake.output.table)
write_text_atomic(snakemake.output.document, json.dumps(document, indent=2) + "\n")
log.info("test accuracy over %d seeds:\n%s", settings.eval_seeds, table.to_string(index=False))
log.info("compression %gx; the distilled set beats the random subset beyond the seeds' spread: %s",
         document["compression_ratio"], document["beats_random"])
