"""Rule cluster_kmeans: the k-means baseline fitted on the fit split, both splits assigned."""

import json
import time

from embedlens.atomic import write_text_atomic
from embedlens.cluster.kmeans import assign, fit_kmeans
from embedlens.cluster.results import Assignment, number_of_clusters, read_splits, save_predictions
from embedlens.cluster.settings import ClusterInputError, ClusterSettings
from embedlens.logs import exit_on, job_logger
from embedlens.store import FeatureStore

log = job_logger("cluster_kmeans", snakemake.log[0])
settings = ClusterSettings.from_config({**snakemake.params.settings, "enabled": True, "methods": ["kmeans"]})
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
with exit_on(log, ClusterInputError):
    train, test = read_splits(store, settings)
    clusters = number_of_clusters(settings, train.labels)
    started = time.monotonic()
    model = fit_kmeans(train.features, clusters, settings.kmeans, settings.seed)
seconds = time.monotonic() - started
save_predictions(snakemake.output.predictions, "kmeans", clusters, {
    settings.train_split: Assignment(train.index, model.labels_.astype("int64"), train.labels),
    settings.test_split: Assignment(test.index, assign(model, test.features, settings.kmeans), test.labels)},
    store.class_names)
document = {"method": "kmeans", "clusters": clusters, "seconds": round(seconds, 1), "device": "cpu",
            "train_images": len(train.labels), "test_images": len(test.labels), "n_init": settings.kmeans.n_init,
            "normalize": settings.kmeans.normalize, "inertia": float(model.inertia_), "iterations": int(model.n_iter_),
            "warnings": []}
write_text_atomic(snakemake.output.fit, json.dumps(document, indent=2) + "\n")
log.info("k-means, %d clusters, on %d %r images in %.0f s", clusters, len(train.labels), settings.train_split, seconds)
