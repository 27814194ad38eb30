# Shared names and input functions for every stage.

import os

from embedlens.config import entry
from embedlens.datasets.cifar import ARCHIVE_FILES, archive_folder
from embedlens.recipe import requested_recipe

RESULTS = config["results"]
DATASETS = [dataset["name"] for dataset in config["datasets"]]
BACKBONES = [backbone["name"] for backbone in config["backbones"]]
CONDA_ENV = "../envs/embedlens.yaml"
# What the report shows (rules/report.smk). Each stage's .smk registers, under the stage's name, the
# pattern (with {dataset} and {backbone}) of the summary.json it writes, and, when its results colour
# the explore map, of its per-image map columns file (see embedlens/report/explore.py).
STAGE_SUMMARIES = {}
MAP_COLUMNS = {}


wildcard_constraints:
    dataset="|".join(map(re.escape, DATASETS)),
    backbone="|".join(map(re.escape, BACKBONES)),


def cifar100_downloads():
    """The cifar-100-python/ folders that rule download_cifar100 fills, each with the config entries that
    use it (cifar100 datasets with download: true): entries sharing a root share one download."""
    folders = {}
    for index, dataset in enumerate(config["datasets"]):
        if dataset["kind"] == "cifar100" and dataset["download"]:
            folder = os.path.normpath(archive_folder(dataset["root"]))
            folders.setdefault(folder, []).append(f"datasets[{index}]")
    return folders


CIFAR100_DOWNLOADS = cifar100_downloads()


def dataset_downloads(wildcards):
    """The files that download_cifar100 makes for the {dataset} wildcard, when it is CIFAR-100 to download."""
    dataset = dataset_spec(wildcards)
    if dataset["kind"] != "cifar100" or not dataset["download"]:
        return []
    folder = os.path.normpath(archive_folder(dataset["root"]))
    return [os.path.join(folder, name) for name in ARCHIVE_FILES]


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


def store_mb(input):
    """Size of the job's feature store in MB: the classifier holds its classes' rows in memory."""
    return os.path.getsize(input.features) / 1e6 if os.path.exists(input.features) else 0.0


def classify_mem_mb(wildcards, input, attempt):
    """The store's rows of the chosen classes (at most the whole store) twice, plus torch."""
    return int((2500 + 2 * store_mb(input)) * attempt)


def table_mem_mb(wildcards, input, attempt):
    """Memory of a job that holds the manifest in pandas (about 5x its CSV size) and streams the rest."""
    return int((1500 + 5 * manifest_mb(input)) * attempt)


def manifest_images(input):
    """Images in the job's manifest (its lines less the header), counted without parsing the CSV."""
    if not os.path.exists(input.manifest):
        return 0
    with open(input.manifest, "rb") as handle:
        return max(0, sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b"")) - 1)


def extract_runtime(wildcards, input, attempt):
    """Minutes for one extraction shard: its images at a slow CPU's pace (~5 images/s) plus start-up."""
    images = manifest_images(input) / config["extract"]["shards"]
    return int((20 + images / 5 / 60) * attempt)


def map_columns(wildcards):
    """The per-image colourings that stages register for the explore map of {dataset} x {backbone}."""
    return [pattern.format(dataset=wildcards.dataset, backbone=wildcards.backbone) for pattern in MAP_COLUMNS.values()]


def report_pairs():
    """For every dataset x backbone, the files the report renders (also the report rule's input)."""
    return [{"dataset": dataset, "backbone": backbone,
             "summaries": [pattern.format(dataset=dataset, backbone=backbone) for pattern in STAGE_SUMMARIES.values()],
             "subset": f"{RESULTS}/{dataset}/{backbone}/subset.json" if config["overlap"]["export"] else None,
             "explore": f"{RESULTS}/{dataset}/{backbone}/explore.html"}
            for dataset in DATASETS for backbone in BACKBONES]


def command_line_targets():
    """The targets named on the snakemake command line (none: the default target). Snakemake hands its
    own list to the workflow only after this file is parsed, so the plan reads the command line again."""
    from snakemake.cli import get_argument_parser

    try:
        arguments, _ = get_argument_parser().parse_known_args(sys.argv[1:])
    except SystemExit:  # not started from snakemake's command line
        return []
    return sorted(arguments.targets or [])


def all_targets():
    """What `snakemake` builds without a target: the report, which needs every stage's outputs for every
    dataset x backbone, and the ImageNet subsets."""
    return [f"{RESULTS}/report.html"] + expand(f"{RESULTS}/imagenet_subset/{{name}}.npz", name=IMAGENET_SUBSET_NAMES)
