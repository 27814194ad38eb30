# The report: one self-contained page, results/report.html, rendered from every stage's summary.json
# (registered in STAGE_SUMMARIES by each stage's .smk), the dataset files and the subsets; and per
# dataset x backbone an explore page with the embedding map, linked from the report. Settings: the
# report: section of the config.
#
#     {RESULTS}/report.html                           the report (the default target)
#     {RESULTS}/{dataset}/{backbone}/explore.html     UMAP of the embeddings, each image on hover


rule explore:
    input:
        manifest=f"{RESULTS}/{{dataset}}/manifest.csv",
        features=f"{RESULTS}/{{dataset}}/{{backbone}}/features.h5",
        columns=map_columns,
    output:
        report(f"{RESULTS}/{{dataset}}/{{backbone}}/explore.html", category="Report", caption="../report/explore.rst",
               labels={"dataset": "{dataset}", "backbone": "{backbone}", "output": "embedding map"}),
    params:
        dataset=dataset_spec,
        recipe=feature_recipe,
        report=config["report"],
    threads: 4
    resources:
        mem_mb=4096,
        runtime=30,
    log:
        f"{RESULTS}/logs/explore/{{dataset}}/{{backbone}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/explore.py"


rule report:
    input:
        infos=expand(f"{RESULTS}/{{dataset}}/dataset.json", dataset=DATASETS),
        skipped=expand(f"{RESULTS}/{{dataset}}/skipped.csv", dataset=DATASETS),
        pairs=[path for pair in report_pairs() for path in [*pair["summaries"], pair["subset"], pair["explore"]] if path],
    output:
        report(f"{RESULTS}/report.html", category="Report", caption="../report/report_page.rst",
               labels={"output": "embedlens report"}),
    params:
        pairs=report_pairs(),
        config=config,
    resources:
        mem_mb=2048,
        runtime=10,
    log:
        f"{RESULTS}/logs/report/report.log",
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/report.py"
