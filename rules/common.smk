# Shared names and input functions for every stage.

from embedlens.config import entry

RESULTS = config["results"]
DATASETS = [dataset["name"] for dataset in config["datasets"]]
BACKBONES = [backbone["name"] for backbone in config["backbones"]]
CONDA_ENV = "../envs/embedlens.yaml"
# What the report shows (rules/report.smk). Each stage's .smk registers, under the stage's name, the
# pattern (with {dataset} and {backbone}) of the summary.json it writes, and, when its results colour
# the explore map, of its per-image map columns file (see embedlens/report/explore.py).
REPORT_SUMMARIES = {}
MAP_COLUMNS = {}


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


def map_columns(wildcards):
    """The per-image colourings that stages register for the explore map of {dataset} x {backbone}."""
    return [pattern.format(dataset=wildcards.dataset, backbone=wildcards.backbone) for pattern in MAP_COLUMNS.values()]


def report_pairs():
    """For every dataset x backbone, the files the report renders (also the report rule's input)."""
    return [{"dataset": dataset, "backbone": backbone,
             "summaries": [pattern.format(dataset=dataset, backbone=backbone) for pattern in REPORT_SUMMARIES.values()],
             "subset": f"{RESULTS}/{dataset}/{backbone}/subset.json" if config["overlap"]["export"] else None,
             "explore": f"{RESULTS}/{dataset}/{backbone}/explore.html"}
            for dataset in DATASETS for backbone in BACKBONES]


def all_targets():
    """What `snakemake` builds without a target: the report, which needs every stage's outputs for every
    dataset x backbone, and the ImageNet subsets."""
    return [f"{RESULTS}/report.html"] + expand(f"{RESULTS}/imagenet_subset/{{name}}.npz", name=IMAGENET_SUBSET_NAMES)
