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


from embedlens.config import ConfigError, validate_config


configfile: "config.yaml"


try:
    validate_config(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None


report: "report/workflow.rst"


scattergather:
    shard=config["extract"]["shards"],


include: "rules/common.smk"
include: "rules/datasets.smk"
include: "rules/features.smk"
include: "rules/overlap.smk"
include: "rules/imagenet_subset.smk"
include: "rules/novelty.smk"
include: "rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
