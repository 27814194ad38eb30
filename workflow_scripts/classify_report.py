"""Rule classify_report: per-class report, confusion matrix, confusion pairs, cleanlab overlap, agreement."""

import json

from embedlens.audit import clean_index
from embedlens.classify.analysis import analyse, clean_split_figures, empty_analysis, write_analysis
from embedlens.classify.results import load_crossval, load_predictions
from embedlens.classify.settings import ClassifySettings
from embedlens.logs import job_logger
from embedlens.overlap import read_pairs_csv, read_similarity_csv
from embedlens.plots import confusion_heatmap, note_figure
from embedlens.summary import read_json

log = job_logger("classify_report", snakemake.log[0])
settings = ClassifySettings.from_config(snakemake.params.settings)
dataset, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
training = read_json(snakemake.input.training)  # status trained or skipped, with reason
classes, predictions = load_predictions(snakemake.input.probabilities)
if training["status"] != "trained":
    analysis = empty_analysis(classes, training["reason"])
    note_figure(f"no classifier: {training['reason']}", snakemake.output.heatmap)
else:
    crossval = read_json(snakemake.input.crossval_info)
    notes = [] if crossval["status"] == "done" else [f"no cleanlab overlap: {crossval['reason']}"]
    crossval_targets, crossval_probabilities = load_crossval(snakemake.input.crossval)
    analysis = analyse(classes, predictions.targets, predictions.probabilities, k=settings.pairs_k,
                       max_threshold=settings.pairs_max_threshold,
                       similarity=read_similarity_csv(snakemake.input.similarity),
                       centroid_pairs=read_pairs_csv(snakemake.input.centroid_pairs),
                       crossval_targets=crossval_targets if crossval["status"] == "done" else None,
                       crossval_probabilities=crossval_probabilities if crossval["status"] == "done" else None,
                       disagreement_rows=settings.disagreements, notes=notes)
    if snakemake.input.clean:  # the dataset audit is enabled and audits the test split
        clean_split_figures(analysis, predictions.index, predictions.targets, predictions.probabilities, classes,
                            clean_index(snakemake.input.clean[0], split=settings.test_split))
    confusion_heatmap(analysis.rates.to_numpy(), list(classes.names), snakemake.output.heatmap,
                      title=f"{dataset} x {backbone}: test confusion of the MLP on {len(classes)} classes "
                            f"(accuracy {100 * analysis.headline['accuracy']:.2f}%)")
write_analysis(analysis, snakemake.output)
log.info("%s", json.dumps(analysis.headline))
for note in analysis.notes:
    log.warning("%s", note)
