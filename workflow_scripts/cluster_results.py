"""Rule cluster_results: one method's metrics per split (results.json), its 2-D map, cluster sizes,
pseudo labels and the grid of each cluster's representatives."""

import json

from embedlens.atomic import write_text_atomic
from embedlens.audit import clean_index
from embedlens.cluster.pseudo import pseudo_labels
from embedlens.cluster.results import (load_predictions, map_figure, read_splits, representatives_figure,
                                       results_document, sizes_figure, skipped_results)
from embedlens.cluster.settings import ClusterSettings
from embedlens.datasets import open_dataset
from embedlens.logs import job_logger
from embedlens.manifest import read_manifest
from embedlens.store import FeatureStore
from embedlens.summary import read_json

log = job_logger("cluster_results", snakemake.log[0])
output = snakemake.output
name, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
settings = ClusterSettings.from_config({**snakemake.params.settings, "enabled": True,
                                        "methods": [snakemake.wildcards.method]})
store = FeatureStore(snakemake.input.features)
store.check(dataset=name, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
method, clusters, assignments, class_names = load_predictions(snakemake.input.predictions)
fit = read_json(snakemake.input.fit)
if fit["status"] == "skipped":
    document, pseudo = skipped_results(fit, class_names, settings, [output.map, output.sizes, output.representatives])
    write_text_atomic(output.pseudo_labels, json.dumps(pseudo) + "\n")
    write_text_atomic(output.results, json.dumps(document, indent=2) + "\n")
    log.warning("%s not clustered: %s", method, fit["reason"])
    raise SystemExit(0)
train, test = read_splits(store, settings)
fitted, scored = assignments[settings.train_split], assignments[settings.test_split]
title = f"{name} x {backbone}: {method}, {clusters} clusters"

kept = clean_index(snakemake.input.clean[0], split=settings.test_split) if snakemake.input.clean else None
document = results_document(method, clusters, assignments, fit, settings, clean_index=kept)
document["map"] = map_figure(test.features, scored, class_names, output.map, settings=settings,
                             title=f"{title}, {settings.test_split!r} images")
sizes_figure(fitted.cluster, clusters, output.sizes, title=f"{title}: {settings.train_split!r} images per cluster")
pseudo = pseudo_labels(train.features, fitted.cluster, fitted.label, fitted.index, settings.representatives,
                       method=method, split=settings.train_split, class_names=class_names)
write_text_atomic(output.pseudo_labels, json.dumps(pseudo) + "\n")
representatives_figure(open_dataset(snakemake.params.dataset),
                       store.join_manifest(settings.train_split, read_manifest(snakemake.input.manifest)), pseudo,
                       output.representatives, clusters_shown=settings.grid_clusters,
                       title=f"{title}: the {settings.representatives} images nearest each centre (green: true class = "
                             "the cluster's pseudo label)")
write_text_atomic(output.results, json.dumps(document, indent=2) + "\n")
for split, metrics in document["metrics"].items():
    log.info("%s %s: %s", method, split, json.dumps(metrics))
for warning in document["warnings"]:
    log.warning("%s", warning)
