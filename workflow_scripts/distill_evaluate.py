"""Rule distill_evaluate: each set's learning rate and epochs chosen on the validation part of the train
split, then the classifier trained from scratch on the distilled set, a random real subset of the same
size, the class centroids and every fit row over seeds and tested once on the test split; evaluation and
validation tables and distill.json."""

import json
import time

import torch

from embedlens.atomic import write_text_atomic
from embedlens.devices import acquire_device
from embedlens.distill.data import read_rows
from embedlens.distill.evaluation import choose_training, chosen_training, evaluate, summarize_evaluation
from embedlens.distill.matching import Distilled
from embedlens.distill.settings import DistillInputError, DistillSettings
from embedlens.distill.summary import distill_document
from embedlens.logs import exit_on, job_logger
from embedlens.manifest import write_table
from embedlens.pseudo_labels import PseudoLabelsError
from embedlens.roles import holdout_note
from embedlens.store import FeatureStore

log = job_logger("distill_evaluate", snakemake.log[0])
settings = DistillSettings.from_config(snakemake.params.settings)
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
with exit_on(log, DistillInputError, PseudoLabelsError):
    rows = read_rows(store, settings, snakemake.input.get("pseudo_labels"))
distilled, attrs = Distilled.load(snakemake.input.distilled)
torch.set_num_threads(snakemake.threads)
device, gpu_claim = acquire_device(settings.device, "distill.device")  # the claim holds the GPU until the job ends
started, classes = time.monotonic(), len(store.class_names)
choices = choose_training(distilled, rows.fit, rows.validation, classes, settings, device,
                          progress=lambda row: log.debug("%(set)s, lr %(learning_rate).4g, %(epochs)d epochs: validation "
                                                         "accuracy %(validation_accuracy).4f", row))
per_seed = evaluate(distilled, rows.fit, rows.test, classes, settings, device, chosen_training(choices),
                    progress=lambda row: log.debug("%(set)s, seed %(seed)d: test accuracy %(accuracy).4f", row))
table = summarize_evaluation(per_seed)
document = distill_document(distilled, table, choices, settings, train_images=len(rows.fit.labels),
                            validation_images=len(rows.validation.labels), classes=len(set(rows.fit.labels.tolist())),
                            label_source=attrs["label_source"], evaluation_seconds=time.monotonic() - started)
document["notes"] = attrs.get("notes", []) + rows.notes + (
    [holdout_note(settings.train_split, settings.holdout_fraction, len(rows.test.labels),
                  len(rows.fit.labels) + len(rows.validation.labels))]
    if settings.test_split == settings.train_split else [])
write_table(choices, snakemake.output.validation)
write_table(per_seed, snakemake.output.seeds)
write_table(table, snakemake.output.table)
write_text_atomic(snakemake.output.document, json.dumps(document, indent=2) + "\n")
log.info("%s\ntest accuracy over %d seeds:\n%s", document["choice"], settings.eval_seeds, table.to_string(index=False))
log.info("compression %gx; the distilled set beats the random subset beyond the seeds' spread: %s",
         document["compression_ratio"], document["beats_random"])
