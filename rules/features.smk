# Stage 2: a frozen backbone embeds every image once, in K shards (scatter) merged into one HDF5 store
# (gather). Shards are temporary: they vanish once the store is written, and a killed run keeps the
# finished ones, so it resumes where it stopped. Both rules carry the feature recipe in params:
# changing the backbone, its weights or preprocessing, extract.device, extract.amp or
# extract.preprocess rebuilds the store, and the merge refuses shards made with another recipe.
#
#     {RESULTS}/{dataset}/{backbone}/features.h5               the feature store
#     {RESULTS}/{dataset}/{backbone}/features/summary.json     extraction figures, for the report
#     {RESULTS}/{dataset}/{backbone}/features/skipped.csv      images that failed to decode

STAGE_SUMMARIES["features"] = f"{RESULTS}/{{dataset}}/{{backbone}}/features/summary.json"


rule extract_shard:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
    output:
        temp(f"{RESULTS}/{{dataset}}/{{backbone}}/shards/{{scatteritem}}.h5"),
    params:
        dataset=dataset_spec,
        recipe=feature_recipe,
    threads: extract_threads()
    resources:
        gpu=1,
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=extract_runtime,
    log:
        f"{RESULTS}/logs/extract/{{dataset}}/{{backbone}}/{{scatteritem}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/extract_shard.py"


rule merge_features:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        info=f"{RESULTS}/{{dataset}}/dataset.json",
        shards=gather.shard(f"{RESULTS}/{{{{dataset}}}}/{{{{backbone}}}}/shards/{{scatteritem}}.h5"),
    output:
        store=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
        summary=f"{RESULTS}/{{dataset}}/{{backbone}}/features/summary.json",
        skipped=report(f"{RESULTS}/{{dataset}}/{{backbone}}/features/skipped.csv", category="Features",
                       caption="../report/features_skipped.rst",
                       labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "failed to decode"}),
    params:
        recipe=feature_recipe,
    resources:
        mem_mb=table_mem_mb,
        runtime=lambda wildcards, input, attempt: int((10 + manifest_mb(input) / 2) * attempt),
    log:
        f"{RESULTS}/logs/merge_features/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/merge_features.py"
