# Dataset distillation in feature space by matching training trajectories (Cazenavette et al. 2022):
# per_class synthetic feature vectors per class and a learned learning rate, distilled from the train
# split less its validation part with the dataset's labels or the clustering stage's pseudo labels
# (distill_fit), measured against a random real subset of the same size, the class centroids and every
# fit row, each trained with the learning rate and epochs chosen on the validation part (distill_evaluate), each synthetic vector's nearest real images (distill_neighbours), and the stage
# summary (distill_summary). Settings: the distill: section of the config. The two training rules claim a
# GPU when there is one; distill_fit checkpoints into distill/checkpoints/ and resumes from it when killed.
#
#     {RESULTS}/{dataset}/{backbone}/distill/distilled.h5          synthetic features, labels, learned lr, settings
#     {RESULTS}/{dataset}/{backbone}/distill/matching_loss.png     the matching loss per iteration
#     {RESULTS}/{dataset}/{backbone}/distill/distill.json          settings, accuracy of each set, compression, times
#     {RESULTS}/{dataset}/{backbone}/distill/evaluation.csv        test accuracy per set, mean ± std (evaluation_seeds.csv: per seed)
#     {RESULTS}/{dataset}/{backbone}/distill/validation.csv        every candidate lr and epochs per set, its validation accuracy, the chosen one
#     {RESULTS}/{dataset}/{backbone}/distill/neighbours.csv, .png  each synthetic vector's nearest real train images
#     {RESULTS}/{dataset}/{backbone}/distill/summary.json          the stage's summary for the report
#
# neighbours.json carries the nearest-image figures from distill_neighbours to distill_summary.

DISTILL = config["distill"]
DISTILL_DIR = f"{RESULTS}/{{dataset}}/{{backbone}}/distill"
# What the rules' results depend on: switching the stage off and on must not redistil.
DISTILL_SETTINGS = settings_of("distill")
if DISTILL["enabled"]:
    STAGE_SUMMARIES["distill"] = f"{DISTILL_DIR}/summary.json"
if DISTILL["labels"] == PSEUDO:
    if DISTILL["cluster_method"] not in config["cluster"]["methods"]:
        raise WorkflowError(f"distill.cluster_method: {DISTILL['cluster_method']} is not among cluster.methods "
                            f"({', '.join(config['cluster']['methods'])}), so no pseudo labels of it are made; "
                            "add it there or pick one of them")


rule distill_fit:
    input:
        unpack(distill_inputs),
    output:
        distilled=f"{DISTILL_DIR}/distilled.h5",
        curve=report(f"{DISTILL_DIR}/matching_loss.png", category="Distillation",
                     caption="../report/distill_matching_loss.rst",
                     labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "matching loss"}),
    params:
        settings=DISTILL_SETTINGS,
        recipe=feature_recipe,
        checkpoints=f"{DISTILL_DIR}/checkpoints/fit",
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("distill"),
        runtime=distill_runtime,
    log:
        f"{RESULTS}/logs/distill_fit/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/distill_fit.py"


rule distill_evaluate:
    input:
        unpack(distill_inputs),
        distilled=f"{DISTILL_DIR}/distilled.h5",
    output:
        table=report(f"{DISTILL_DIR}/evaluation.csv", category="Distillation",
                     caption="../report/distill_evaluation.rst",
                     labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "evaluation"}),
        seeds=f"{DISTILL_DIR}/evaluation_seeds.csv",
        validation=f"{DISTILL_DIR}/validation.csv",
        document=f"{DISTILL_DIR}/distill.json",
    params:
        settings=DISTILL_SETTINGS,
        recipe=feature_recipe,
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("distill"),
        runtime=distill_runtime,
    log:
        f"{RESULTS}/logs/distill_evaluate/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/distill_evaluate.py"


rule distill_neighbours:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
        distilled=f"{DISTILL_DIR}/distilled.h5",
    output:
        table=f"{DISTILL_DIR}/neighbours.csv",
        grid=f"{DISTILL_DIR}/neighbours.png",
        document=f"{DISTILL_DIR}/neighbours.json",
    params:
        settings=DISTILL_SETTINGS,
        dataset=dataset_spec,
        recipe=feature_recipe,
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("distill"),
        runtime=features_runtime,
    log:
        f"{RESULTS}/logs/distill_neighbours/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/distill_neighbours.py"


rule distill_summary:
    input:
        unpack(unless_skipped("distill", lambda wildcards: {
            "document": f"{DISTILL_DIR}/distill.json", "neighbours": f"{DISTILL_DIR}/neighbours.json"})),
    output:
        f"{DISTILL_DIR}/summary.json",
    params:
        settings=DISTILL_SETTINGS,
        skip=skip_param("distill"),
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        f"{RESULTS}/logs/distill_summary/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/distill_summary.py"
