# Novelty and surprise: k-means on 80% of the embeddings (k at the elbow of the inertia curve, or
# novelty.k), then for every held-out image a novelty score (distance to its centroid as a z-score within
# its cluster), a surprise score (distance to the nearest centroid over the mean centroid spacing) and
# the kNN distance score; their quality measured on held-out classes; and new images of other datasets
# (novelty.score_datasets) scored against the saved model without refitting. Settings: the novelty:
# section of the config.
#
#     {RESULTS}/{dataset}/{backbone}/novelty/model.h5          centroids, distance statistics, thresholds, fit embeddings
#     {RESULTS}/{dataset}/{backbone}/novelty/scores.csv        one row per held-out image, most novel first
#     {RESULTS}/{dataset}/{backbone}/novelty/elbow.csv, .png   inertia against k, the chosen k marked
#     {RESULTS}/{dataset}/{backbone}/novelty/pca.png           the fit images in 2-D PCA by cluster, with centroids
#     {RESULTS}/{dataset}/{backbone}/novelty/clusters.png      held-out images per cluster
#     {RESULTS}/{dataset}/{backbone}/novelty/novel.png         the most novel held-out images
#     {RESULTS}/{dataset}/{backbone}/novelty/quality.csv       AUROC and FPR at 95% TPR per score (quality_draws.csv: per draw)
#     {RESULTS}/{dataset}/{backbone}/novelty/score/{new}/      scores.csv and novel.png of dataset {new} against this model
#     {RESULTS}/{dataset}/{backbone}/novelty/summary.json      the stage's summary for the report
#     {RESULTS}/{dataset}/{backbone}/novelty/map_columns.csv   each image's cluster and held-out kNN distance, for the explore map
#
# fit.json, quality.json and score/{new}/score.json carry the figures from each rule to novelty_summary.
# novelty_quality checkpoints each finished draw in novelty/checkpoints/quality/ and resumes from them when killed.

NOVELTY = config["novelty"]
NOVELTY_SCORED = list(NOVELTY["score_datasets"])
NOVELTY_FITTED = [name for name in DATASETS if name not in NOVELTY_SCORED]
NOVELTY_DIR = f"{RESULTS}/{{dataset}}/{{backbone}}/novelty"
# What the rules' results depend on: adding a dataset to score later, or switching the stage off and on,
# must not refit the model.
NOVELTY_SETTINGS = settings_of("novelty", leave_out=("enabled", "score_datasets"))

_unknown = sorted(set(NOVELTY_SCORED) - set(DATASETS))
if _unknown:
    raise WorkflowError(f"novelty.score_datasets: {', '.join(_unknown)} not among the datasets of the config; "
                        f"configured: {', '.join(DATASETS)}")
if NOVELTY_SCORED and not NOVELTY_FITTED:
    raise WorkflowError("novelty.score_datasets names every dataset of the config; keep at least one to fit "
                        "the model that the others are scored against")
if NOVELTY["k_min"] > NOVELTY["k_max"]:
    raise WorkflowError(f"novelty.k_min ({NOVELTY['k_min']}) is larger than novelty.k_max ({NOVELTY['k_max']})")
if NOVELTY["enabled"]:
    STAGE_SUMMARIES["novelty"] = f"{NOVELTY_DIR}/summary.json"
    MAP_COLUMNS["novelty"] = f"{NOVELTY_DIR}/map_columns.csv"
    STAGE_DATASETS["novelty"] = NOVELTY_FITTED


rule novelty_fit:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        skipped=f"{RESULTS}/{{dataset}}/skipped.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
    output:
        model=f"{NOVELTY_DIR}/model.h5",
        scores=report(f"{NOVELTY_DIR}/scores.csv", category="Novelty",
                      caption="../report/novelty_scores.rst",
                      labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "novelty scores"}),
        elbow_table=f"{NOVELTY_DIR}/elbow.csv",
        elbow=f"{NOVELTY_DIR}/elbow.png",
        pca=f"{NOVELTY_DIR}/pca.png",
        clusters=f"{NOVELTY_DIR}/clusters.png",
        novel=report(f"{NOVELTY_DIR}/novel.png", category="Novelty",
                     caption="../report/novelty_novel.rst",
                     labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "most novel images"}),
        document=f"{NOVELTY_DIR}/fit.json",
        map_columns=f"{NOVELTY_DIR}/map_columns.csv",
    wildcard_constraints:
        dataset="|".join(map(re.escape, NOVELTY_FITTED)) or "(?!)",
    params:
        novelty=NOVELTY_SETTINGS,
        dataset=dataset_spec,
        recipe=feature_recipe,
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("novelty"),
        runtime=features_runtime,
    log:
        f"{RESULTS}/logs/novelty_fit/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/novelty_fit.py"


rule novelty_quality:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
    output:
        table=f"{NOVELTY_DIR}/quality.csv",
        draws=f"{NOVELTY_DIR}/quality_draws.csv",
        document=f"{NOVELTY_DIR}/quality.json",
    params:
        novelty=NOVELTY_SETTINGS,
        dataset=dataset_spec,
        recipe=feature_recipe,
        checkpoints=f"{NOVELTY_DIR}/checkpoints/quality",
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("novelty"),
        runtime=lambda wildcards, input, attempt: features_runtime(wildcards, input, attempt) * max(
            1, NOVELTY["quality"]["draws"]),
    log:
        f"{RESULTS}/logs/novelty_quality/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/novelty_quality.py"


rule novelty_score:
    input:
        info=dataset_info_file,
        model=f"{NOVELTY_DIR}/model.h5",
        manifest=f"{RESULTS}/{{new}}/manifest.csv",
        skipped=f"{RESULTS}/{{new}}/skipped.csv",
        features=f"{RESULTS}/{{new}}/{{backbone}}/features.h5",
    output:
        scores=f"{NOVELTY_DIR}/score/{{new}}/scores.csv",
        novel=f"{NOVELTY_DIR}/score/{{new}}/novel.png",
        document=f"{NOVELTY_DIR}/score/{{new}}/score.json",
    wildcard_constraints:
        new="|".join(map(re.escape, NOVELTY_SCORED)) or "(?!)",
    params:
        novelty=NOVELTY_SETTINGS,
        dataset=lambda wildcards: entry(config, "datasets", wildcards.new),
        recipe=new_dataset_recipe,
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("novelty"),
        runtime=features_runtime,
    log:
        f"{RESULTS}/logs/novelty_score/{{dataset}}/{{backbone}}/{{new}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/novelty_score.py"


rule novelty_summary:
    input:
        unpack(unless_skipped("novelty", lambda wildcards: {
            "fit": f"{NOVELTY_DIR}/fit.json", "quality": f"{NOVELTY_DIR}/quality.json",
            "scored": expand(f"{NOVELTY_DIR}/score/{{new}}/score.json", new=NOVELTY_SCORED, allow_missing=True)})),
    output:
        f"{NOVELTY_DIR}/summary.json",
    params:
        settings=NOVELTY_SETTINGS,
        skip=skip_param("novelty"),
    resources:
        mem_mb=1000,
        runtime=5,
    log:
        f"{RESULTS}/logs/novelty_summary/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/novelty_summary.py"
