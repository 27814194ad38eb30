# Shared names and input functions for every stage.

import os

from embedlens.config import canonical, entry
from embedlens.datasets.cifar import ARCHIVE_FILES, archive_folder
from embedlens.plan import known_info, read_info
from embedlens.pseudo_labels import PSEUDO, pseudo_labels_path
from embedlens.recipe import requested_recipe
from embedlens.resources import declared_mem_mb
from embedlens.roles import SettingError, check_settings, image_keys, skip_reason, stage_settings

RESULTS = config["results"]
ANALYSIS_THREADS = config["analysis_threads"]  # threads: of the analysis rules (classify, cluster, audit, novelty, distill)
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
# The clustering stage's folder (rules/cluster.smk), whose summary rule gathers every method's outputs.
CLUSTER_DIR = f"{RESULTS}/{{dataset}}/{{backbone}}/cluster"


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
    """The config entry of the {dataset} wildcard less what only the stages read (its split roles and
    stage settings): what scanning and embedding its images depend on."""
    return image_keys(entry(config, "datasets", wildcards.dataset))


def dataset_info(name):
    """Images per split and per class of dataset ``name`` (its dataset.json): known when the run is
    planned (an earlier manifest, or a synthetic dataset's settings), else once the manifest checkpoint
    has run, when Snakemake completes the DAG. Every decision about what a stage does on a dataset is
    made from it, before any job of the stage."""
    known = known_info(entry(config, "datasets", name), RESULTS)
    if known is not None:
        return known
    if not os.path.exists(f"{RESULTS}/{name}/manifest.csv"):
        checkpoints.manifest.get(dataset=name)  # until the manifest exists, the jobs that need this wait
    return read_info(f"{RESULTS}/{name}/dataset.json", f"{RESULTS}/{name}/manifest.csv")


def dataset_info_file(wildcards):
    """The dataset.json of the {dataset}, an input wherever the settings depend on its splits."""
    dataset_info(wildcards.dataset)
    return f"{RESULTS}/{wildcards.dataset}/dataset.json"


def resolved_settings(stage, name):
    """The stage's settings for dataset ``name`` (embedlens.roles.stage_settings), in canonical order."""
    info = dataset_info(name)
    try:
        return canonical(stage_settings(config, stage, entry(config, "datasets", name), list(info["images"])))
    except SettingError as error:
        raise WorkflowError(str(error)) from None


def settings_of(stage, leave_out=("enabled",)):
    """A params function: the stage's settings for the {dataset} wildcard, less ``leave_out`` (keys that
    decide which jobs exist, not what they compute: changing them must not rerun the stage)."""
    return lambda wildcards: {key: value for key, value in resolved_settings(stage, wildcards.dataset).items()
                              if key not in leave_out}


_SKIPS_SAID = set()


def stage_skip(stage, name):
    """Why ``stage`` does not run on dataset ``name`` (one sentence), or None. Said once on the terminal;
    a setting the user wrote that can never work for the data stops the run here, naming the key."""
    settings, info = resolved_settings(stage, name), dataset_info(name)
    try:
        check_settings(stage, settings, info, name)
    except SettingError as error:
        raise WorkflowError(str(error)) from None
    reason = skip_reason(stage, settings, info, name)
    if reason is None and stage == "classify" and settings["classes"] == "overlap":
        reason = stage_skip("overlap", name) and "it trains on the overlap set (classify.classes: overlap), " \
                                                 "and the overlap stage is skipped"
    if reason is None and stage == "distill" and settings["labels"] == PSEUDO:
        reason = stage_skip("cluster", name) and "its pseudo labels come from the clustering, which is skipped"
    if reason and (stage, name) not in _SKIPS_SAID and workflow.is_main_process:
        _SKIPS_SAID.add((stage, name))
        print(f"embedlens: {stage} skipped for dataset {name}: {reason}", file=sys.stderr)
    return reason


def planned_skips():
    """The plan block's lines on skipped stages: per dataset whose images per split and class are known
    now, each stage that does not run on it and why; for the others, when that is decided."""
    lines = []
    for name in DATASETS:
        if known_info(entry(config, "datasets", name), RESULTS) is None:
            lines.append(f"decided for {name} once its manifest is built")
            continue
        stages = [stage for stage in STAGE_SUMMARIES if stage != "features" and name in STAGE_DATASETS.get(stage, DATASETS)]
        _SKIPS_SAID.update((stage, name) for stage in stages)  # said here, not again by the jobs' planning
        lines += [f"{stage} for {name}: {reason}" for stage in stages if (reason := stage_skip(stage, name))]
    return lines


def skip_param(stage):
    """A params function: why the stage is skipped for the {dataset} wildcard, or None."""
    return lambda wildcards: stage_skip(stage, wildcards.dataset)


def unless_skipped(stage, inputs):
    """An input function for the job that writes the stage's summary, giving ``inputs`` (a function of the
    wildcards giving a dict of paths or lists of paths, with wildcards in braces), or only the dataset's
    dataset.json when the stage is skipped for it."""
    def chosen(wildcards):
        if stage_skip(stage, wildcards.dataset):
            return {"info": dataset_info_file(wildcards)}
        values = dict(wildcards.items())
        return {"info": dataset_info_file(wildcards),
                **{key: path.format(**values) if isinstance(path, str) else [p.format(**values) for p in path]
                   for key, path in inputs(wildcards).items()}}
    return chosen


def backbone_spec(wildcards):
    """The config entry of the {backbone} wildcard."""
    return entry(config, "backbones", wildcards.backbone)


def feature_recipe(wildcards):
    """What the config asks of the {dataset} x {backbone} features (embedlens.recipe): rules that make
    or read a feature store carry it in params, so changing any part of it rebuilds the store."""
    return requested_recipe(dataset_spec(wildcards), backbone_spec(wildcards), config["extract"])


def manifest_mb(input):
    """Size of the job's manifest in MB: memory and time of the per-image bookkeeping grow with it."""
    path = getattr(input, "manifest", None)  # a skipped stage's summary rule reads no manifest
    return os.path.getsize(path) / 1e6 if path and os.path.exists(path) else 0.0


def store_mb(input):
    """Size of the job's feature store in MB: the classifier holds its classes' rows in memory."""
    return os.path.getsize(input.features) / 1e6 if os.path.exists(input.features) else 0.0


def table_mem_mb(wildcards, input, attempt):
    """Memory of a job that holds the manifest in pandas (about 5x its CSV size) and streams the rest."""
    return int((1500 + 5 * manifest_mb(input)) * attempt)


def features_mb(input):
    """Size of the job's feature store (input.features, plus input.model when it has one) in MB."""
    paths = [input.features] + ([input.model] if hasattr(input, "model") else [])
    return sum(os.path.getsize(path) for path in paths if os.path.exists(path)) / 1e6


def job_mem_mb(job):
    """A resources function: the memory ``job`` declares for its feature store
    (embedlens.resources.declared_mem_mb, measured by benchmarks/stage_scale.py), more with each retry."""
    return lambda wildcards, input, attempt: declared_mem_mb(job, features_mb(input)) * attempt


def features_runtime(wildcards, input, attempt):
    """Minutes for a job that clusters a feature store and searches its nearest neighbours on the CPU:
    a quarter of an hour plus a minute per 20 MB of store (4,000 x 1280 features, 20 MB, took about a
    minute on 2 busy cores; k-means and the exact k-NN grow faster than the store)."""
    return int((15 + features_mb(input) / 20) * attempt)


def distill_inputs(wildcards):
    """The store and its manifest, and with distill.labels: pseudo the clustering stage's pseudo labels
    (of the split the clustering was fitted on, which must be the one distilled)."""
    inputs = {"info": dataset_info_file(wildcards), "manifest": f"{RESULTS}/{wildcards.dataset}/manifest.csv",
              "features": f"{RESULTS}/{wildcards.dataset}/{wildcards.backbone}/features.h5"}
    settings = resolved_settings("distill", wildcards.dataset)
    if settings["labels"] == PSEUDO:
        clustered = resolved_settings("cluster", wildcards.dataset)["train_split"]
        if settings["train_split"] != clustered:
            raise WorkflowError(f"distill.train_split ({settings['train_split']}) differs from cluster.train_split "
                                f"({clustered}) for dataset {wildcards.dataset}: the pseudo labels cover the "
                                "clustered split only")
        inputs["pseudo_labels"] = pseudo_labels_path(RESULTS, wildcards.dataset, wildcards.backbone,
                                                     settings["cluster_method"])
    return inputs


def distill_runtime(wildcards, input, attempt):
    """Minutes: the experts' epochs over the store plus the matching iterations, on a slow CPU (the 20,000 x
    1280 train split, 100 MB of store, took about 10 minutes with the defaults on 2 busy cores)."""
    return int((20 + store_mb(input) / 5) * attempt)


def cluster_outputs(wildcards):
    """What cluster_summary gathers: every method's results, predictions and figures (of the methods
    that the {dataset}'s cluster settings run)."""
    methods = resolved_settings("cluster", wildcards.dataset)["methods"]
    return {"results": expand(f"{CLUSTER_DIR}/{{method}}/results.json", method=methods, allow_missing=True),
            "predictions": expand(f"{CLUSTER_DIR}/{{method}}/predictions.npz", method=methods, allow_missing=True),
            "figures": expand(f"{CLUSTER_DIR}/{{method}}/{{figure}}.png", method=methods,
                              figure=["map", "sizes", "representatives"], allow_missing=True)}


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
    """The per-image colourings that stages register for the explore map of {dataset} x {backbone}, of
    the stages that run on the dataset."""
    return [pattern.format(dataset=wildcards.dataset, backbone=wildcards.backbone) for stage, pattern in MAP_COLUMNS.items()
            if wildcards.dataset in STAGE_DATASETS.get(stage, DATASETS) and not stage_skip(stage, wildcards.dataset)]


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


def audit_clean_index(stage):
    """An input function: [AUDIT_CLEAN_INDEX] when the audit runs on the {dataset} and audits the split
    that ``stage`` tests on (its test_split), else []; so the stage runs with or without the audit. The
    job reads the kept rows with embedlens.audit.clean_index(path, split=...)."""
    def clean(wildcards):
        name = wildcards.dataset
        if not config["audit"]["enabled"] or stage_skip("audit", name):
            return []
        tested = resolved_settings(stage, name)["test_split"]
        return [AUDIT_CLEAN_INDEX] if resolved_settings("audit", name)["query_split"] == tested else []
    return clean
