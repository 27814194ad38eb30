# Shared names and input functions for every stage.

from embedlens.config import entry

RESULTS = config["results"]
DATASETS = [dataset["name"] for dataset in config["datasets"]]
BACKBONES = [backbone["name"] for backbone in config["backbones"]]
CONDA_ENV = "../envs/embedlens.yaml"


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    backbone="|".join(map(re.escape, BACKBONES)),


def dataset_spec(wildcards):
    """The config entry of the {dataset} wildcard."""
    return entry(config, "datasets", wildcards.dataset)


def backbone_spec(wildcards):
    """The config entry of the {backbone} wildcard."""
    return entry(config, "backbones", wildcards.backbone)


def extract_threads():
    """CPU threads per extraction job: the cores shared by the jobs that may run at once (one per GPU)."""
    gpu = workflow.global_resources.get("gpu")
    gpus = getattr(gpu, "value", gpu)
    gpus = gpus if isinstance(gpus, int) and gpus > 0 else 1
    return max(1, workflow.cores // gpus) if isinstance(workflow.cores, int) else 1


def all_targets():
    """What `snakemake` builds without a target: every stage's outputs for dataset x backbone."""
    per_pair = [f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
                f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/classes.json"]
    if config["overlap"]["export"]:
        per_pair.append(f"{RESULTS}/{{dataset}}/{{backbone}}/subset.json")
    return expand(per_pair, dataset=DATASETS, backbone=BACKBONES) + expand(
        f"{RESULTS}/imagenet_subset/{{name}}.npz", name=IMAGENET_SUBSET_NAMES)
