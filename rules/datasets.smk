# Stage 1: a dataset becomes a manifest (one row per image) plus the list of images that could not be read.


rule manifest:
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        skipped=f"{RESULTS}/{{dataset}}/skipped.csv",
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
