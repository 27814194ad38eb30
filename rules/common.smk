# Shared names and input functions for every stage.

import os

from embedlens.config import entry
from embedlens.datasets.cifar import ARCHIVE_FILES, archive_folder
from embedlens.pseudo_labels import PSEUDO, pseudo_labels_path
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
# A stage that runs on some datasets only (novelty leaves out the datasets it merely scores) lists them
# here under its name; the report then expects its summary and map columns for those datasets alone.
STAGE_DATASETS = {}
# The audit stage's clean query split (rules/audit.smk), which other stages also evaluate on.
AUDIT_CLEAN_INDEX = f"{RESULTS}/{{dataset}}/{{backbone}}/audit/clean_test_index.csv"


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


def distill_inputs(wildcards):
    """The store and its manifest, and with distill.labels: pseudo the clustering stage's pseudo labels."""
    inputs = {"manifest": f"{RESULTS}/{wildcards.dataset}/manifest.csv",
              "features": f"{RESULTS}/{wildcards.dataset}/{wildcards.backbone}/features.h5"}
    if config["distill"]["labels"] == PSEUDO:
        inputs["pseudo_labels"] = pseudo_labels_path(RESULTS, wildcards.dataset, wildcards.backbone,
                                                     config["distill"]["cluster_method"])
    return inputs


def distill_runtime(wildcards, input, attempt):
    """Minutes: the experts' epochs over the store plus the matching iterations, on a slow CPU (the 20,000 x
    1280 train split, 100 MB of store, took about 10 minutes with the defaults on 2 busy cores)."""
    return int((20 + store_mb(input) / 5) * attempt)


def new_dataset_recipe(wildcards):
    """The feature recipe of the {new} dataset with the {backbone}: rules that read a second dataset's
    store (besides {dataset}'s) check it against this."""
    return requested_recipe(entry(config, "datasets", wildcards.new), backbone_spec(wildcards), config["extract"])


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
    return [pattern.format(dataset=wildcards.dataset, backbone=wildcards.backbone) for stage, pattern in MAP_COLUMNS.items()
            if wildcards.dataset in STAGE_DATASETS.get(stage, DATASETS)]


def report_pairs():
    """For every dataset x backbone, the files the report renders (also the report rule's input)."""
    return [{"dataset": dataset, "backbone": backbone,
             "summaries": [pattern.format(dataset=dataset, backbone=backbone)
                           for stage, pattern in STAGE_SUMMARIES.items() if dataset in STAGE_DATASETS.get(stage, DATASETS)],
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


def audit_clean_index(split):
    """[AUDIT_CLEAN_INDEX] for a stage that tests on ``split`` when the audit is enabled and audits that
    split, else []: a rule's input, so the stage runs with or without the audit. The job reads the kept
    rows with embedlens.audit.clean_index(path, split=split)."""
    audit = config["audit"]
    return [AUDIT_CLEAN_INDEX] if audit["enabled"] and audit["query_split"] == split else []
