"""Rule classify_pair_figures: a UMAP and a sample grid for each of the top flagged confusion pairs."""

import json
from pathlib import Path

import pandas as pd

from embedlens.atomic import atomic_directory, write_text_atomic
from embedlens.classify.analysis import read_confusion_pairs
from embedlens.classify.pictures import draw_pair, pictured_pairs
from embedlens.classify.results import load_predictions
from embedlens.classify.settings import ClassifySettings
from embedlens.datasets import open_dataset
from embedlens.logs import job_logger
from embedlens.store import FeatureStore

log = job_logger("classify_pair_figures", snakemake.log[0])
settings = ClassifySettings.from_config(snakemake.params.settings)
classes, predictions = load_predictions(snakemake.input.probabilities)
pairs = pictured_pairs(read_confusion_pairs(snakemake.input.pairs), settings.pair_figures)
artifacts = []
with atomic_directory(snakemake.output.folder) as folder:
    if pairs:
        store = FeatureStore(snakemake.input.features)
        store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe,
                    manifest=snakemake.input.manifest)
        features = store.features(settings.test_split, store.positions(settings.test_split, index=predictions.index))
        sources = store.join_manifest(settings.test_split, pd.read_csv(snakemake.input.manifest, keep_default_na=False))
        source_of = dict(zip(sources["index_in_split"], sources["source"].astype(str)))
        dataset = open_dataset(snakemake.params.dataset)
        for rank, pair in enumerate(pairs, start=1):
            artifacts += draw_pair(pair, classes, predictions, features,
                                   lambda index: dataset.read_image(settings.test_split, source_of[index]),
                                   Path(folder), rank, samples_per_class=settings.samples_per_class,
                                   misclassified=settings.misclassified_samples, seed=settings.seed)
# Paths relative to the stage folder, where summary.json lies.
artifacts = [{"path": f"{Path(snakemake.output.folder).name}/{a.path}", "caption": a.caption} for a in artifacts]
write_text_atomic(snakemake.output.listing, json.dumps(artifacts, indent=2) + "\n")
log.info("pictures of %d flagged pairs (classify.pair_figures: %d)", len(pairs), settings.pair_figures)
