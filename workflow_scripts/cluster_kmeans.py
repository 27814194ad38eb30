"""Rule cluster_kmeans: the k-means baseline fitted on the fit split, both splits assigned."""

import json
import time

from threadpoolctl import threadpool_limits

from embedlens.atomic import write_text_atomic
from embedlens.cluster.kmeans import cluster_kmeans
from embedlens.cluster.results import (Assignment, clustering_problem, number_of_clusters, read_splits,
                                       save_predictions, write_skipped_fit)
from embedlens.cluster.settings import ClusterSettings
from embedlens.logs import job_logger
from embedlens.kmeans import assign
from embedlens.store import FeatureStore

log = job_logger("cluster_kmeans", snakemake.log[0])
settings = ClusterSettings.from_config({**snakemake.params.settings, "enabled": True, "methods": ["kmeans"]})
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
problem = clustering_problem(store, settings)
if problem:
    log.warning("not clustered: %s", problem)
    write_skipped_fit("kmeans", problem, store.class_names, predictions=snakemake.output.predictions,
                      fit=snakemake.output.fit)
    raise SystemExit(0)
train, test = read_splits(store, settings)
clusters = number_of_clusters(settings, train.labels)
threadpool_limits(snakemake.threads)  # scikit-learn's k-means takes every core otherwise
started = time.monotonic()
fit = cluster_kmeans(train.features, clusters, settings.kmeans, settings.seed)
model = fit.model
seconds = time.monotonic() - started
save_predictions(snakemake.output.predictions, "kmeans", clusters, {
    settings.train_split: Assignment(train.index, fit.train_clusters, train.labels),
    settings.test_split: Assignment(test.index, assign(model, test.features, settings.kmeans), test.labels)},
    store.class_names)
document = {"method": "kmeans", "status": "fitted", "clusters": clusters, "seconds": round(seconds, 1), "device": "cpu",
            "train_images": len(train.labels), "test_images": len(test.labels), "n_init": settings.kmeans.n_init,
            "normalize": settings.kmeans.normalize, "fit_rows": fit.fit_rows, "inertia": float(model.inertia_),
            "iterations": int(model.n_iter_), "warnings": []}
write_text_atomic(snakemake.output.fit, json.dumps(document, indent=2) + "\n")
log.info("k-means, %d clusters, on %d %r images in %.0f s", clusters, len(train.labels), settings.train_split, seconds)
