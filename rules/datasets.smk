# Stage 1: a dataset becomes a manifest (one row per image) plus the list of images that could not be read.
# File-backed kinds read every image's header here, on all cores, so files that are not images are known
# up front; the pixels are decoded once, by extraction, which skips and lists those that fail.


rule manifest:
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        skipped=report(f"{RESULTS}/{{dataset}}/skipped.csv", category="Dataset", caption="../report/skipped.rst",
                       labels={"dataset": "{dataset}", "output": "skipped images"}),
        info=f"{RESULTS}/{{dataset}}/dataset.json",
    params:
        spec=dataset_spec,
    threads: workflow.cores
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    log:
        f"{RESULTS}/logs/manifest/{{dataset}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/manifest.py"
