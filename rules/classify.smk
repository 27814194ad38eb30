# Stage 4: the overlap classifier. An MLP on the frozen features of the overlap set's classes (or of
# every class, classify.classes: all), trained with the classifier notebook's settings and tested with
# its best-validation-loss weights (classify_train); K-fold out-of-sample probabilities on the train
# split (classify_crossval); the per-class report, confusion matrix, confusion pairs and cleanlab's
# model-based overlap beside the centroid pairs, with their rank agreement (classify_report); a UMAP
# and a sample grid per flagged pair (classify_pair_figures); the stage summary (classify_summary). When the
# dataset audit (rules/audit.smk) audits the test split, classify_report also reports accuracy and macro F1
# on its clean test split.
# Settings: the classify: section of the config. Both training rules claim a GPU when there is one,
# checkpoint into classify/checkpoints/ and resume from it when killed.
#
#     {RESULTS}/{dataset}/{backbone}/classify/model.pt, history.csv, training_curve.png, training.json
#     .../classify/predictions.csv, probabilities.npz           test predictions
#     .../classify/crossval.npz, crossval.json                  out-of-sample probabilities of the train split
#     .../classify/report.csv, confusion.csv, confusion_normalized.csv, confusion.png
#     .../classify/pairs.csv, cleanlab_pairs.csv, measures.csv, agreement.csv, disagreements.csv, analysis.json
#     .../classify/pair_figures/, pair_figures.json              umap_*.png, samples_*.png of the flagged pairs
#     .../classify/summary.json                                 for the report

CLASSIFY = f"{RESULTS}/{{dataset}}/{{backbone}}/classify"


rule classify_train:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
        classes=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/classes.json",
    output:
        model=f"{CLASSIFY}/model.pt",
        history=f"{CLASSIFY}/history.csv",
        curve=f"{CLASSIFY}/training_curve.png",
        predictions=f"{CLASSIFY}/predictions.csv",
        probabilities=f"{CLASSIFY}/probabilities.npz",
        training=f"{CLASSIFY}/training.json",
    params:
        settings=settings_of("classify", leave_out=()),
        recipe=feature_recipe,
        checkpoints=f"{CLASSIFY}/checkpoints/train",
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("classify"),
        runtime=lambda wildcards, input, attempt: int((20 + store_mb(input) / 100) * attempt),
    log:
        f"{RESULTS}/logs/classify_train/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/classify_train.py"


rule classify_crossval:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
        classes=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/classes.json",
    output:
        crossval=f"{CLASSIFY}/crossval.npz",
        info=f"{CLASSIFY}/crossval.json",
    params:
        settings=settings_of("classify", leave_out=()),
        recipe=feature_recipe,
        checkpoints=f"{CLASSIFY}/checkpoints/crossval",
    threads: ANALYSIS_THREADS
    resources:
        gpu=1,
        mem_mb=job_mem_mb("classify"),
        runtime=lambda wildcards, input, attempt: int(
            (20 + config["classify"]["folds"] * store_mb(input) / 100) * attempt),
    log:
        f"{RESULTS}/logs/classify_crossval/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/classify_crossval.py"


rule classify_report:
    input:
        info=dataset_info_file,
        training=f"{CLASSIFY}/training.json",
        probabilities=f"{CLASSIFY}/probabilities.npz",
        crossval=f"{CLASSIFY}/crossval.npz",
        crossval_info=f"{CLASSIFY}/crossval.json",
        similarity=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/similarity.csv",
        centroid_pairs=f"{RESULTS}/{{dataset}}/{{backbone}}/overlap/pairs.csv",
        clean=audit_clean_index("classify"),  # figures on the clean test split too
    output:
        report=f"{CLASSIFY}/report.csv",
        confusion=f"{CLASSIFY}/confusion.csv",
        confusion_normalized=f"{CLASSIFY}/confusion_normalized.csv",
        heatmap=report(f"{CLASSIFY}/confusion.png", category="Classifier",
                       caption="../report/classify_confusion.rst",
                       labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "confusion matrix"}),
        pairs=report(f"{CLASSIFY}/pairs.csv", category="Classifier",
                     caption="../report/classify_pairs.rst",
                     labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "confusion pairs"}),
        cleanlab_pairs=f"{CLASSIFY}/cleanlab_pairs.csv",
        measures=f"{CLASSIFY}/measures.csv",
        agreement=f"{CLASSIFY}/agreement.csv",
        disagreements=f"{CLASSIFY}/disagreements.csv",
        analysis=f"{CLASSIFY}/analysis.json",
    params:
        settings=settings_of("classify", leave_out=()),
    resources:
        mem_mb=lambda wildcards, attempt: 3000 * attempt,
        runtime=lambda wildcards, attempt: 20 * attempt,
    log:
        f"{RESULTS}/logs/classify_report/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/classify_report.py"


rule classify_pair_figures:
    input:
        info=dataset_info_file,
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
        probabilities=f"{CLASSIFY}/probabilities.npz",
        pairs=f"{CLASSIFY}/pairs.csv",
    output:
        folder=directory(f"{CLASSIFY}/pair_figures"),
        listing=f"{CLASSIFY}/pair_figures.json",
    params:
        settings=settings_of("classify", leave_out=()),
        dataset=dataset_spec,
        recipe=feature_recipe,
    resources:
        mem_mb=table_mem_mb,
        runtime=lambda wildcards, input, attempt: int((20 + manifest_mb(input) / 2) * attempt),
    log:
        f"{RESULTS}/logs/classify_pair_figures/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/classify_pair_figures.py"


rule classify_summary:
    input:
        unpack(unless_skipped("classify", lambda wildcards: {
            "training": f"{CLASSIFY}/training.json", "analysis": f"{CLASSIFY}/analysis.json",
            "listing": f"{CLASSIFY}/pair_figures.json", "heatmap": f"{CLASSIFY}/confusion.png",
            "curve": f"{CLASSIFY}/training_curve.png"})),
    output:
        summary=f"{CLASSIFY}/summary.json",
    params:
        settings=settings_of("classify", leave_out=()),
        skip=skip_param("classify"),
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=lambda wildcards, attempt: 5 * attempt,
    log:
        f"{RESULTS}/logs/classify_summary/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/classify_summary.py"


if config["classify"]["enabled"]:
    STAGE_SUMMARIES["classify"] = f"{CLASSIFY}/summary.json"
