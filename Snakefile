# embedlens: from an image dataset to answers from frozen foundation-model embeddings.
#
#     snakemake --cores 8 --resources gpu=1            # results/report.html: every stage of config.yaml
#     snakemake --report results/snakemake-report.zip   # Snakemake's provenance report beside it
#     snakemake -n                                      # what would run
#     snakemake --dag | dot -Tsvg > dag.svg             # the DAG
#
# The stages live in rules/*.smk, the per-rule glue in workflow_scripts/, the algorithms in embedlens/.

import os
import sys

from snakemake.exceptions import WorkflowError

# The Snakefile and its job scripts import embedlens from this checkout, also when it is not installed
# (e.g. under --sdm conda, whose environments hold only the third-party packages). Declaring PYTHONPATH
# in envvars passes it on to jobs on cluster and cloud executors too.
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))


envvars:
    "PYTHONPATH",


import yaml

from embedlens.config import ConfigError, canonical, validate_config
from embedlens.plan import inherited_keys, plan_text
from embedlens.preflight import path_problems


DEFAULT_CONFIGFILE = "config.yaml"


configfile: DEFAULT_CONFIGFILE


try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None
# Settings in canonical key order: reordering the keys of a config file reruns nothing.
config.update(canonical(config))
# Paths are checked once, by the process that plans the jobs: a missing file stops the run before any job.
if workflow.is_main_process and (problems := path_problems(config)):
    raise WorkflowError("paths in the configuration that are not there:\n  " + "\n  ".join(problems))


report: "report/workflow.rst"


scattergather:
    shard=config["extract"]["shards"],


include: "rules/common.smk"
include: "rules/datasets.smk"
include: "rules/features.smk"
include: "rules/overlap.smk"
include: "rules/audit.smk"
include: "rules/classify.smk"
include: "rules/imagenet_subset.smk"
include: "rules/novelty.smk"
include: "rules/cluster.smk"
include: "rules/distill.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True


# profiles/default (cores: all, gpu=1) is for one machine. Snakemake reads it for every run unless another
# workflow profile takes its place; on a cluster it would cap every job's threads at this machine's cores.
# The executor is known only once the run starts, hence onstart (which cluster jobs skip).
onstart:
    if workflow.non_local_exec and workflow.resource_settings.cores is not None:
        raise WorkflowError(
            f"this cluster run has --cores {workflow.resource_settings.cores}, which caps every job's threads at "
            "that; it usually comes from profiles/default (cores: all, for local runs), which Snakemake reads "
            "beside --profile. Start cluster runs with the cluster profile as the workflow profile instead: "
            "snakemake --workflow-profile profiles/slurm (or profiles/kubernetes), without --cores.")


# The plan, printed once by the process that plans the jobs (cluster jobs parse this file again).
if workflow.is_main_process:
    user_files = [os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
                  for path in workflow.overwrite_configfiles]
    merged = bool(user_files) and not workflow.config_settings.replace_workflow_config
    if merged and os.path.exists(DEFAULT_CONFIGFILE):
        with open(DEFAULT_CONFIGFILE) as handle:
            inherited = inherited_keys(yaml.safe_load(handle) or {}, workflow.config_settings.overwrite_config)
    else:
        inherited = []
    stages = [*STAGE_SUMMARIES, *(["subset"] if config["overlap"]["export"] else []),
              *(["imagenet_subset"] if IMAGENET_SUBSET_NAMES else []), "report"]
    print(plan_text(config, stages=stages,
                    targets=command_line_targets() or all_targets(), inherited=inherited,
                    default_file=DEFAULT_CONFIGFILE, user_files=user_files, skipped=planned_skips()),
          file=sys.stderr)
