"""The novelty stage's ``summary.json``, from ``fit.json``, ``quality.json`` and the ``score.json`` of
each dataset scored against the model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from embedlens.summary import Artifact, StageSummary, blank_images_note

# Below this many fit images per cluster, a cluster's mean and spread of distances (the z-score) and the
# calibration quantiles rest on a handful of points: on 36 images in 3 classes 62% of held-out images
# came out "novel". The summary then says the flags are not to be trusted.
TRUSTED_IMAGES_PER_CLUSTER = 30


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0%"


def novelty_summary(fit: Mapping, quality: Mapping, scored: Sequence[Mapping], *, dataset: str,
                    backbone: str) -> StageSummary:
    """The stage's ``summary.json``: headline figures, tables and figures with captions, notes and the
    settings, from ``fit.json`` (:func:`fit_document`), ``quality.json`` and the ``score.json`` of
    each dataset scored against the model (paths relative to the novelty folder)."""
    flags, held_out = fit["flags"], fit["held_out_images"]
    thresholds = fit["thresholds"]
    headline = {"k": fit["k"], "fit_images": fit["fit_images"], "held_out_images": held_out,
                "novel": flags["novel"], "surprising": flags["surprising"], "knn_novel": flags["knn_novel"],
                "unreadable": fit["unreadable"]}
    chosen = (f"k = {fit['k']} at the elbow (Kneedle) of k = {fit['k_range'][0]}..{fit['k_range'][1]}"
              if fit["searched"] else f"k = {fit['k']} fixed by novelty.k (no search)")
    tables = [
        Artifact("scores.csv", "One row per held-out image, most novel (largest kNN distance) first: split, "
                 "index_in_split, source, path, label, class_name, its cluster, centroid_distance, novelty_score "
                 "(z-score of that distance within its cluster) and the flag novel, surprise_score (distance over "
                 "the mean centroid spacing) and surprising, knn_distance (cosine distance to the "
                 f"k-th nearest fit image, k = {fit['knn_k']}) and knn_novel."),
        Artifact("elbow.csv", "k-means inertia per image for each k searched (k, inertia)."),
    ]
    figures = [
        Artifact("elbow.png", f"Inertia per image against k; {chosen}, marked in red. Past the elbow, more "
                 "clusters buy little."),
        Artifact("pca.png", "The fit images in the first two principal components, coloured by cluster; crosses "
                 "are the centroids. Overlapping colours are expected: two components show little of the "
                 "embedding's structure."),
        Artifact("clusters.png", "How many held-out images fall into each cluster: the clusters' sizes, which "
                 "the novelty z-scores of a cluster are relative to."),
        Artifact("novel.png", "The held-out images with the largest kNN distance (most novel first), with "
                 "that distance and their novelty z-score."),
    ]
    notes = [f"{chosen}. Fitted on {fit['fit_images']} images ({fit['settings']['fit_fraction']:.0%}), "
             f"{held_out} held out and scored.",
             f"Flags on the held-out images: novel (z > {thresholds['novelty_z']:g}) {flags['novel']} "
             f"({_percent(flags['novel'], held_out)}), surprising (ratio > {thresholds['surprise_ratio']:.3g}"
             + ("" if fit["settings"]["surprise_threshold"] is not None else
                f", the {fit['settings']['flag_quantile']:.0%} quantile on the fit images") + ") "
             f"{flags['surprising']} ({_percent(flags['surprising'], held_out)}), kNN "
             f"(distance > {thresholds['knn_distance']:.4f}, the {fit['settings']['flag_quantile']:.0%} quantile "
             f"on the fit images) {flags['knn_novel']} ({_percent(flags['knn_novel'], held_out)}).",
             *fit["notes"]]
    if fit["fit_images"] < TRUSTED_IMAGES_PER_CLUSTER * fit["k"]:
        headline["trusted"] = "no"
        notes.insert(0, f"Too small to trust: {fit['fit_images']} fit images for k = {fit['k']} clusters, fewer than "
                        f"{TRUSTED_IMAGES_PER_CLUSTER} per cluster, so each cluster's distance statistics and the "
                        "calibrated thresholds rest on a few images; read the flags as a ranking, not as verdicts.")
    if fit["unreadable"]:
        notes.append(f"{fit['unreadable']} images of the dataset could not be read and have no scores; they are "
                     "listed in the dataset's skipped.csv and the features' skipped.csv.")
    blank = blank_images_note("novel.png", fit["blank_images"])
    if blank:
        notes.append(blank)
    if quality["measured"]:
        best = quality["scores"][0]
        knn = next(row for row in quality["scores"] if row["score"] == "knn_distance")
        # The kNN score's AUROC is the headline (the report compares it across backbones): the same
        # score for every run, and the one that is usually best.
        headline.update({"auroc": round(knn["auroc_mean"], 4), "fpr_at_95_tpr": round(knn["fpr_at_95_tpr_mean"], 4)})
        tables += [Artifact("quality.csv", f"Detection quality with {quality['unseen_classes']} of "
                            f"{quality['classes']} classes held out as unseen, over {quality['draws']} draws: per "
                            "score the AUROC (1: every unseen image scores above every seen one; 0.5: chance) and "
                            "the false-positive rate at 95% true-positive rate (lower is better), mean and std."),
                   Artifact("quality_draws.csv", "The same per draw, with the unseen classes and the k of each "
                            "draw.")]
        chosen = ("at the elbow of the seen classes' fit images in each draw (the unseen classes play no part)"
                  if quality["k_searched"] else "fixed by novelty.k")
        notes.append(f"Held-out classes: {best['score']} separates unseen from seen classes best, AUROC "
                     f"{best['auroc_mean']:.3f} ± {best['auroc_std']:.3f}, FPR at 95% TPR "
                     f"{best['fpr_at_95_tpr_mean']:.3f} ± {best['fpr_at_95_tpr_std']:.3f}. k per draw "
                     f"{', '.join(map(str, quality['k_per_draw']))}, {chosen}.")
    else:
        notes.append(f"Detection quality was not measured: {quality['reason']}.")
    for document in scored:
        name, counts = document["dataset"], document["flags"]
        tables.append(Artifact(f"score/{name}/scores.csv", f"The images of dataset {name} scored against this "
                               "model without refitting (same columns as scores.csv)."))
        figures.append(Artifact(f"score/{name}/novel.png", f"The most novel images of dataset {name} (kNN "
                                "distance to this model's fit images)."))
        notes.append(f"Dataset {name}: {counts['images']} images scored, {counts['knn_novel']} flagged by kNN, "
                     f"{counts['novel']} novel, {counts['surprising']} surprising"
                     + (f"; {document['unreadable']} could not be read" if document["unreadable"] else "") + ".")
        blank = blank_images_note(f"score/{name}/novel.png", document["blank_images"])
        if blank:
            notes.append(blank)
    return StageSummary(stage="novelty", title="Novelty and surprise", dataset=dataset, backbone=backbone,
                        headline=headline, tables=tables, figures=figures, notes=notes, settings=fit["settings"])
