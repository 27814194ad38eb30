# Stage 1: a dataset becomes a manifest (one row per image) plus the list of images that could not be read.
# File-backed kinds read every image's header here, on all cores, so files that are not images are known
# up front; the pixels are decoded once, by extraction, which skips and lists those that fail.
# CIFAR-100 with download: true is fetched by a rule of its own, one job per root, so two datasets that
# share a root never download into it at once.
# The manifest rule is a checkpoint: what each stage does with a dataset (which splits, whether it can run
# at all) is decided from the images per split and class that it records in dataset.json. When those are
# not known as the run is planned (a folder scanned for the first time), Snakemake completes the DAG once
# the manifest job has run.


rule download_cifar100:
    output:
        [f"{{cifar100_folder}}/{name}" for name in ARCHIVE_FILES],
    wildcard_constraints:
        cifar100_folder="|".join(map(re.escape, CIFAR100_DOWNLOADS)) or "(?!)",
    params:
        entries=lambda wildcards: ", ".join(CIFAR100_DOWNLOADS[wildcards.cifar100_folder]),
    resources:
        mem_mb=2000,
        runtime=lambda wildcards, attempt: 30 * attempt,
    log:
        f"{RESULTS}/logs/download_cifar100/{{cifar100_folder}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/download_cifar100.py"


checkpoint manifest:
    input:
        dataset_downloads,
    output:
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        skipped=report(f"{RESULTS}/{{dataset}}/skipped.csv", category="Dataset", caption="../report/skipped.rst",
                       labels={"dataset": "{dataset}", "output": "skipped images"}),
        info=f"{RESULTS}/{{dataset}}/dataset.json",
    params:
        spec=dataset_spec,
    # A number, not the cores of this host: a cluster job runs elsewhere (Snakemake lowers it to --cores).
    threads: 8
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=lambda wildcards, attempt: 120 * attempt,
    log:
        f"{RESULTS}/logs/manifest/{{dataset}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/manifest.py"
