# Clustering without labels: TEMI as published (cluster_temi: cluster heads on the frozen features,
# trained on pairs of nearest neighbours; claims a GPU when there is one, checkpoints and resumes) and
# a k-means baseline (cluster_kmeans), both fitted on cluster.train_split and scored on
# cluster.test_split; per method the metrics, pictures and pseudo labels (cluster_results); the
# stage summary and the explore map's cluster columns (cluster_summary). Settings: the cluster:
# section of the config; cluster.methods lists the methods to run.
#
#     {RESULTS}/{dataset}/{backbone}/cluster/{method}/predictions.npz   clusters and true labels of both splits
#     .../cluster/{method}/fit.json                                     the fit's details and warnings
#     .../cluster/{method}/results.json                                 ACC, NMI, ARI, active clusters, sizes per split
#     .../cluster/{method}/map.png, sizes.png                           2-D map by cluster and class; cluster sizes
#     .../cluster/{method}/pseudo_labels.json, representatives.png      pseudo labels voted by each cluster's representatives
#     .../cluster/temi/model.pt, history.csv, training_curve.png        the teacher heads and the training
#     .../cluster/metrics.csv, summary.json                             every method side by side, for the report
#     .../cluster/map_columns.csv                                       each image's cluster per method, for the explore map

CLUSTER = config["cluster"]
# What the fits depend on: switching the stage off and on, or adding a method, must not refit the others.
CLUSTER_FIT = settings_of("cluster", leave_out=("enabled", "methods"))


if CLUSTER["enabled"]:
    STAGE_SUMMARIES["cluster"] = f"{CLUSTER_DIR}/summary.json"
    MAP_COLUMNS["cluster"] = f"{CLUSTER_DIR}/map_columns.csv"


rule cluster_temi:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
    output:
        predictions=f"{CLUSTER_DIR}/temi/predictions.npz",
        fit=f"{CLUSTER_DIR}/temi/fit.json",
        model=f"{CLUSTER_DIR}/temi/model.pt",
        history=f"{CLUSTER_DIR}/temi/history.csv",
        curve=f"{CLUSTER_DIR}/temi/training_curve.png",
    params:
        settings=CLUSTER_FIT,
        recipe=feature_recipe,
        checkpoints=f"{CLUSTER_DIR}/temi/checkpoints",
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("cluster_temi"),
        runtime=lambda wildcards, input, attempt: int(
            (20 + store_mb(input) / 100 * CLUSTER["temi"]["steps"] / 48 * CLUSTER["temi"]["heads"] / 16) * attempt),
    log:
        f"{RESULTS}/logs/cluster_temi/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/cluster_temi.py"


rule cluster_kmeans:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
    output:
        predictions=f"{CLUSTER_DIR}/kmeans/predictions.npz",
        fit=f"{CLUSTER_DIR}/kmeans/fit.json",
    params:
        settings=CLUSTER_FIT,
        recipe=feature_recipe,
    threads: ANALYSIS_THREADS
    resources:
        mem_mb=job_mem_mb("cluster_kmeans"),
        runtime=features_runtime,
    log:
        f"{RESULTS}/logs/cluster_kmeans/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/cluster_kmeans.py"


rule cluster_results:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
        predictions=f"{CLUSTER_DIR}/{{method}}/predictions.npz",
        fit=f"{CLUSTER_DIR}/{{method}}/fit.json",
        clean=audit_clean_index("cluster"),  # figures on the clean test split too
    output:
        results=f"{CLUSTER_DIR}/{{method}}/results.json",
        map=report(f"{CLUSTER_DIR}/{{method}}/map.png", category="Clustering",
                   caption="../report/cluster_map.rst",
                   labels={"dataset": "{dataset}", "backbone": "{backbone}", "method": "{method}",
                           "output": "map by cluster and class"}),
        sizes=f"{CLUSTER_DIR}/{{method}}/sizes.png",
        pseudo_labels=pseudo_labels_path(RESULTS, "{dataset}", "{backbone}", "{method}"),
        representatives=f"{CLUSTER_DIR}/{{method}}/representatives.png",
    wildcard_constraints:
        method="temi|kmeans",
    params:
        settings=CLUSTER_FIT,
        dataset=dataset_spec,
        recipe=feature_recipe,
    resources:
        mem_mb=job_mem_mb("cluster_results"),
        runtime=features_runtime,
    log:
        f"{RESULTS}/logs/cluster_results/{{dataset}}/{{backbone}}/{{method}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/cluster_results.py"


rule cluster_summary:
    input:
        unpack(unless_skipped("cluster", cluster_outputs)),
    output:
        summary=f"{CLUSTER_DIR}/summary.json",
        metrics=report(f"{CLUSTER_DIR}/metrics.csv", category="Clustering",
                       caption="../report/cluster_metrics.rst",
                       labels={"dataset": "{dataset}", "backbone": "{backbone}", "method": "all",
                               "output": "metrics"}),
        map_columns=f"{CLUSTER_DIR}/map_columns.csv",
    params:
        settings=settings_of("cluster", leave_out=()),
        skip=skip_param("cluster"),
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=lambda wildcards, attempt: 5 * attempt,
    log:
        f"{RESULTS}/logs/cluster_summary/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/cluster_summary.py"
