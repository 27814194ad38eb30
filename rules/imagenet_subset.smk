# ImageNet class subsets as NPZ files (the replaced subset script's contract), built by streaming so
# memory stays bounded whatever the subset size. Settings: the imagenet_subsets: section of the config;
# without it there are no targets here.
#
#     {RESULTS}/imagenet_subset/{name}.npz               X_train, y_train, train_id, X_val, y_val, val_id
#     {RESULTS}/imagenet_subset/{name}_cls_metadata.csv  subset_label, original_id, WNID, human_label
#     {RESULTS}/imagenet_subset/{name}_skipped.csv       split, id, source, reason
#     {RESULTS}/imagenet_subset/{name}_files.csv         split, id, label, wnid, source (row i = array row i)

from snakemake.exceptions import WorkflowError

from embedlens.imagenet_subset import subset_list_file, subset_names

IMAGENET_SUBSETS = config.get("imagenet_subsets") or {}
try:
    IMAGENET_SUBSET_NAMES = subset_names(IMAGENET_SUBSETS)
except ValueError as error:
    raise WorkflowError(str(error)) from None


rule imagenet_subset:
    input:
        wnids=lambda wildcards: str(subset_list_file(IMAGENET_SUBSETS, wildcards.name)),
    output:
        npz=f"{RESULTS}/imagenet_subset/{{name}}.npz",
        metadata=f"{RESULTS}/imagenet_subset/{{name}}_cls_metadata.csv",
        skipped=f"{RESULTS}/imagenet_subset/{{name}}_skipped.csv",
        files=f"{RESULTS}/imagenet_subset/{{name}}_files.csv",
    wildcard_constraints:
        name="|".join(map(re.escape, IMAGENET_SUBSET_NAMES)) or "(?!)",
    params:
        root=IMAGENET_SUBSETS.get("root"),
        size=IMAGENET_SUBSETS.get("size"),
        resize=IMAGENET_SUBSETS.get("resize"),
        splits=IMAGENET_SUBSETS.get("splits"),
        chunk_size=IMAGENET_SUBSETS.get("chunk_size"),
    threads: IMAGENET_SUBSETS.get("workers", 1)
    resources:
        mem_mb=2048,
        runtime=lambda wildcards, attempt: 240 * attempt,
    log:
        f"{RESULTS}/logs/imagenet_subset/{{name}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/imagenet_subset.py"
