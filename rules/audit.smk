# The dataset audit: near-duplicates of the query split's images (audit.query_split, default test) in the
# reference split (train: leakage) and within the query split, by cosine similarity of the stored features
# (embedlens.knn), each candidate with a pixel verdict exact / near / similar (audit_duplicates); likely
# label errors from cleanlab on the out-of-sample probabilities of a cross-validated probe
# (audit_labels); the clean query split, the explore map's colourings and the summary (audit_clean).
# Settings: the audit: section of the config. audit_duplicates and audit_labels claim a GPU and use it when
# there is one (audit.device); the label check's folds checkpoint in audit/checkpoints/labels/ and resume.
#
#     {RESULTS}/{dataset}/{backbone}/audit/duplicates.csv          candidate pairs with verdicts, closest first
#     {RESULTS}/{dataset}/{backbone}/audit/likely_copies.csv       query images ranked by how likely each is a copy, most likely first
#     {RESULTS}/{dataset}/{backbone}/audit/pairs.png               the closest cross-split pairs side by side
#     {RESULTS}/{dataset}/{backbone}/audit/nearest_similarity.png  each query image's highest similarity, threshold marked
#     {RESULTS}/{dataset}/{backbone}/audit/label_issues.csv, .png  likely label errors, most likely first
#     {RESULTS}/{dataset}/{backbone}/audit/clean_test_index.csv    every query image kept or removed, with the reasons
#     {RESULTS}/{dataset}/{backbone}/audit/map_columns.csv         copy verdict and label check per image, for the explore map
#     {RESULTS}/{dataset}/{backbone}/audit/summary.json            for the report
#
# duplicates.json and labels.json carry the figures of the first two rules to audit_clean. Other stages
# evaluate on the clean split: input audit_clean_index(their test split) (rules/common.smk), read with
# embedlens.audit.clean_index(path, split=...).

AUDIT = config["audit"]
AUDIT_DIR = f"{RESULTS}/{{dataset}}/{{backbone}}/audit"
# What the audit's results depend on: switching the stage off and on must not rerun it.
AUDIT_SETTINGS = settings_of("audit")
if AUDIT["enabled"]:
    STAGE_SUMMARIES["audit"] = f"{AUDIT_DIR}/summary.json"
    MAP_COLUMNS["audit"] = f"{AUDIT_DIR}/map_columns.csv"


rule audit_duplicates:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
    output:
        pairs=report(f"{AUDIT_DIR}/duplicates.csv", category="Dataset audit",
                     caption="../report/audit_duplicates.rst",
                     labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "near-duplicates"}),
        likely=f"{AUDIT_DIR}/likely_copies.csv",
        grid=f"{AUDIT_DIR}/pairs.png",
        histogram=f"{AUDIT_DIR}/nearest_similarity.png",
        document=f"{AUDIT_DIR}/duplicates.json",
    params:
        audit=AUDIT_SETTINGS,
        dataset=dataset_spec,
        recipe=feature_recipe,
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("audit_duplicates"),
        runtime=features_runtime,
    log:
        f"{RESULTS}/logs/audit_duplicates/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/audit_duplicates.py"


rule audit_labels:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
    output:
        issues=report(f"{AUDIT_DIR}/label_issues.csv", category="Dataset audit",
                      caption="../report/audit_label_issues.rst",
                      labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "label issues"}),
        grid=f"{AUDIT_DIR}/label_issues.png",
        document=f"{AUDIT_DIR}/labels.json",
    params:
        audit=AUDIT_SETTINGS,
        dataset=dataset_spec,
        recipe=feature_recipe,
        checkpoints=f"{AUDIT_DIR}/checkpoints/labels",
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("audit_labels"),
        runtime=lambda wildcards, input, attempt: features_runtime(wildcards, input, attempt) * 2,
    log:
        f"{RESULTS}/logs/audit_labels/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/audit_labels.py"


rule audit_clean:
    input:
        unpack(unless_skipped("audit", lambda wildcards: {
            "manifest": f"{RESULTS}/{{dataset}}/manifest.csv",
            "features": f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
            "pairs": f"{AUDIT_DIR}/duplicates.csv", "issues": f"{AUDIT_DIR}/label_issues.csv",
            "duplicates": f"{AUDIT_DIR}/duplicates.json", "labels": f"{AUDIT_DIR}/labels.json"})),
    output:
        clean=AUDIT_CLEAN_INDEX,
        map_columns=f"{AUDIT_DIR}/map_columns.csv",
        summary=f"{AUDIT_DIR}/summary.json",
    params:
        audit=AUDIT_SETTINGS,
        skip=skip_param("audit"),
        recipe=feature_recipe,
    resources:
        mem_mb=table_mem_mb,
        runtime=lambda wildcards, attempt: 10 * attempt,
    log:
        f"{RESULTS}/logs/audit_clean/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/audit_clean.py"
