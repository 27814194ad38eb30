# Stage 1: a dataset becomes a manifest (one row per readable image) plus the list of skipped images.


rule manifest:
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        skipped=f"{RESULTS}/{{dataset}}/skipped.csv",
        info=f"{RESULTS}/{{dataset}}/dataset.json",
    params:
        spec=dataset_spec,
    log:
        f"{RESULTS}/logs/manifest/{{dataset}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/manifest.py"
