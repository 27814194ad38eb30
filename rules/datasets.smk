# Stage 1: a dataset becomes a manifest (one row per readable image) plus the list of skipped images.
# File-backed kinds decode every image once here, on all cores, so unreadable ones are known up front.


rule manifest:
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        skipped=report(f"{RESULTS}/{{dataset}}/skipped.csv", category="Dataset", caption="../report/skipped.rst",
                       labels={"dataset": "{dataset}", "output": "skipped images"}),
        info=f"{RESULTS}/{{dataset}}/dataset.json",
    params:
        spec=dataset_spec,
    threads: workflow.cores
    log:
        f"{RESULTS}/logs/manifest/{{dataset}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/manifest.py"
