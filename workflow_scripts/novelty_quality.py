"""Rule novelty_quality: AUROC and FPR at 95% TPR of each score on held-out classes (mean and std over
draws), when the images have classes; otherwise empty tables and the reason in quality.json."""

import json

import pandas as pd

from embedlens.atomic import write_text_atomic
from embedlens.datasets import open_dataset
from embedlens.logs import exit_on, job_logger
from embedlens.manifest import read_manifest, write_table
from embedlens.novelty import (NoveltyInputError, NoveltySettings, measure_quality, read_images, summarize_quality,
                               unseen_class_quality, unseen_count)
from embedlens.store import FeatureStore

log = job_logger("novelty_quality", snakemake.log[0])
settings = NoveltySettings.from_config(snakemake.params.novelty)
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
with open(snakemake.input.fit) as handle:
    k = json.load(handle)["k"]
with exit_on(log, NoveltyInputError):
    features, rows = read_images(store, read_manifest(snakemake.input.manifest), open_dataset(snakemake.params.dataset),
                                 settings.splits)
labels = rows["label"].to_numpy()
reason = measure_quality(labels, settings)
if reason is None:
    classes = len(set(labels[labels >= 0].tolist()))
    per_draw = unseen_class_quality(features, labels, k, settings, store.class_names)
    table = summarize_quality(per_draw)
    document = {"measured": True, "k": k, "classes": classes,
                "unseen_classes": unseen_count(classes, settings.quality.unseen_fraction),
                "draws": settings.quality.draws, "scores": table.to_dict(orient="records")}
    log.info("detection quality over %d draws, k = %d:\n%s", settings.quality.draws, k, table.to_string(index=False))
else:
    per_draw = pd.DataFrame(columns=["draw", "score", "auroc", "fpr_at_95_tpr", "seen_images", "unseen_images",
                                     "unseen_classes"])
    table = summarize_quality(per_draw)
    document = {"measured": False, "reason": reason, "k": k}
    log.info("detection quality not measured: %s", reason)
write_table(per_draw, snakemake.output.draws)
write_table(table, snakemake.output.table)
write_text_atomic(snakemake.output.document, json.dumps(document, indent=2) + "\n")
