# Shared names and input functions for every stage.

import os

from embedlens.config import entry
from embedlens.recipe import requested_recipe

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


def feature_recipe(wildcards):
    """What the config asks of the {dataset} x {backbone} features (embedlens.recipe): rules that make
    or read a feature store carry it in params, so changing any part of it rebuilds the store."""
    return requested_recipe(dataset_spec(wildcards), backbone_spec(wildcards), config["extract"])


def manifest_mb(input):
    """Size of the job's manifest in MB: memory and time of the per-image bookkeeping grow with it."""
    return os.path.getsize(input.manifest) / 1e6 if os.path.exists(input.manifest) else 0.0


def table_mem_mb(wildcards, input, attempt):
    """Memory of a job that holds the manifest in pandas (about 5x its CSV size) and streams the rest."""
    return int((1500 + 5 * manifest_mb(input)) * attempt)


def features_mb(input):
    """Size of the job's feature store (input.features, plus input.model when it has one) in MB."""
    paths = [input.features] + ([input.model] if hasattr(input, "model") else [])
    return sum(os.path.getsize(path) for path in paths if os.path.exists(path)) / 1e6


def features_mem_mb(wildcards, input, attempt):
    """Memory of a job that holds a feature store in memory: about four copies of the features (raw,
    normalised, a reference for the k-NN search, the rows it scores) plus the libraries."""
    return int((2000 + 4 * features_mb(input)) * attempt)


def features_runtime(wildcards, input, attempt):
    """Minutes for a job that clusters a feature store and searches its nearest neighbours on the CPU:
    a quarter of an hour plus a minute per 20 MB of store (4,000 x 1280 features, 20 MB, took about a
    minute on 2 busy cores; k-means and the exact k-NN grow faster than the store)."""
    return int((15 + features_mb(input) / 20) * attempt)


def new_dataset_recipe(wildcards):
    """The feature recipe of the {new} dataset with the {backbone}: rules that read a second dataset's
    store (besides {dataset}'s) check it against this."""
    return requested_recipe(entry(config, "datasets", wildcards.new), backbone_spec(wildcards), config["extract"])


def extract_runtime(wildcards, input, attempt):
    """Minutes for one extraction shard: its images at a CPU's pace (~10 images/s) plus start-up."""
    rows_per_mb = 15000  # a manifest line is ~60-70 bytes
    images = manifest_mb(input) * rows_per_mb / config["extract"]["shards"]
    return int((20 + images / 10 / 60) * attempt)


def extract_threads():
    """CPU threads per extraction job: the cores shared by the jobs that may run at once (one per GPU)."""
    gpu = workflow.global_resources.get("gpu")
    gpus = getattr(gpu, "value", gpu)
    gpus = gpus if isinstance(gpus, int) and gpus > 0 else 1
    return max(1, workflow.cores // gpus) if isinstance(workflow.cores, int) else 1


# Every analysis stage registers here the summary.json it writes for each dataset x backbone (a path
# with {dataset} and {backbone}), when the config enables it; the report renders each one, and
# `snakemake` without a target builds them all. A stage that runs on some datasets only (novelty leaves
# out the datasets it merely scores) lists them in STAGE_DATASETS under the same name.
STAGE_SUMMARIES = {}
STAGE_DATASETS = {}


def all_targets():
    """What `snakemake` builds without a target: every stage's outputs for dataset x backbone."""
    per_pair = [f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
                f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/classes.json"]
    if config["overlap"]["export"]:
        per_pair.append(f"{RESULTS}/{{dataset}}/{{backbone}}/subset.json")
    summaries = [path for stage, summary in STAGE_SUMMARIES.items()
                 for path in expand(summary, dataset=STAGE_DATASETS.get(stage, DATASETS), backbone=BACKBONES)]
    return expand(per_pair, dataset=DATASETS, backbone=BACKBONES) + summaries + expand(
        f"{RESULTS}/imagenet_subset/{{name}}.npz", name=IMAGENET_SUBSET_NAMES)
