# Stage 3: overlapping classes. Class centroids from the feature store, their cosine similarity
# matrix, the pairs that overlap and the union of their classes (rule overlap); then a lossless PNG
# tree of those classes, ImageFolder-friendly, with metadata CSVs (rule export_subset). Settings:
# the overlap: section of the config.
#
#     {RESULTS}/{dataset}/{backbone}/overlap/similarity.csv   class x class cosine, names on both axes
#     {RESULTS}/{dataset}/{backbone}/overlap/similarity.png   the same, clustered heatmap
#     {RESULTS}/{dataset}/{backbone}/overlap/pairs.csv        class_a, class_b, similarity, label_a, label_b
#     {RESULTS}/{dataset}/{backbone}/overlap/classes.json     the overlap set: labels and names, settings
#     {RESULTS}/{dataset}/{backbone}/overlap/centroids.npz    labels, names, vectors, counts
#     {RESULTS}/{dataset}/{backbone}/overlap/summary.json     the stage summary the report renders
#     {RESULTS}/{dataset}/{backbone}/subset/                  train/, test/, metadata_*.csv, label_map.json
#     {RESULTS}/{dataset}/{backbone}/subset.json              counts per split and class (depend on this)
#
# The report renders overlap/summary.json, and subset.json when overlap.export is true (the subset's
# PNGs are one directory() output, never declared one by one).

STAGE_SUMMARIES["overlap"] = f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/summary.json"


rule overlap:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
    output:
        similarity=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/similarity.csv",
        heatmap=report(f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/similarity.png", category="Overlap",
                       caption="../report/overlap_heatmap.rst",
                       labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "similarity heatmap"}),
        pairs=report(f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/pairs.csv", category="Overlap",
                     caption="../report/overlap_pairs.rst",
                     labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "overlapping pairs"}),
        classes=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/classes.json",
        centroids=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/centroids.npz",
        summary=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/summary.json",
    params:
        overlap=settings_of("overlap"),
        skip=skip_param("overlap"),
        recipe=feature_recipe,
    resources:
        mem_mb=table_mem_mb,
        runtime=lambda wildcards, input, attempt: int((10 + manifest_mb(input) / 2) * attempt),
    log:
        f"{RESULTS}/logs/overlap/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/overlap.py"


rule export_subset:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
        pairs=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/pairs.csv",
        classes=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/classes.json",
        centroids=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/centroids.npz",
    output:
        subset=directory(f"{RESULTS}/{{dataset}}/{{backbone}}/subset"),
        manifest=f"{RESULTS}/{{dataset}}/{{backbone}}/subset.json",
    params:
        dataset=dataset_spec,
        overlap=settings_of("overlap"),
        recipe=feature_recipe,
    threads: 4
    resources:
        mem_mb=table_mem_mb,
        runtime=lambda wildcards, input, attempt: int((20 + 2 * manifest_mb(input)) * attempt),
    log:
        f"{RESULTS}/logs/export_subset/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/export_subset.py"
