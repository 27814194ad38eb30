# Stage 2: a frozen backbone embeds every image once, in K shards (scatter) merged into one HDF5 store
# (gather). Shards are temporary: they vanish once the store is written, and a killed run keeps the
# finished ones, so it resumes where it stopped.


rule extract_shard:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
    output:
        temp(f"{RESULTS}/{{dataset}}/{{backbone}}/shards/{{scatteritem}}.h5"),
    params:
        dataset=dataset_spec,
        backbone=backbone_spec,
        extract=config["extract"],
    threads: extract_threads()
    resources:
        gpu=1,
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
        f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
    params:
        backbone=backbone_spec,
    log:
        f"{RESULTS}/logs/merge_features/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/merge_features.py"
