"""Novelty and surprise: k-means on frozen embeddings, three scores per image, and their measured quality.

The reference behaviour (the novelty notebook this replaces), with its vague rules made settings:

1. The embeddings are split 80/20 (``fit_fraction``, seeded). k-means is fitted on the 80% (the *fit*
   part) for every k of a range; k is taken at the elbow of the inertia curve, found with the Kneedle
   method (Satopää et al. 2011, the ``kneed`` package), and k-means is refitted with it. A fixed ``k``
   skips the search.
2. Every image of the 20% (the *held-out* part), and later any new image, gets three scores, each
   higher for a more unusual image:

   - **novelty** (the notebook's rule): the image's Euclidean distance to the centroid of its cluster
     as a z-score against that cluster's distances on the fit part, ``(d - mean_c) / std_c``;
     flagged above ``novelty_threshold``;
   - **surprise** (the notebook's rule): the distance to the nearest centroid divided by the mean
     distance between two centroids; flagged above ``surprise_threshold``, or, when that is None
     (the default: the ratio's scale depends on the backbone, on k and on normalisation), above the
     ``flag_quantile`` quantile of the fit images' own ratios;
   - **kNN distance** (deep-kNN out-of-distribution detection, Sun et al., ICML 2022): the cosine
     distance ``1 - cos`` to the ``knn_k``-th most similar fit embedding; flagged above the
     ``flag_quantile`` quantile of the same distance among (at most ``calibration_sample`` of) the fit
     embeddings themselves (each without itself), so about ``1 - flag_quantile`` of ordinary images
     are flagged.

With ``normalize`` (the default) embeddings are L2-normalised before k-means, so that distances
reflect directions, as the cosine of the kNN score does; the notebook clustered the raw embeddings.

3. Quality: when the images have classes, whole classes are held out as unseen; the model is fitted
   on the others (k chosen on them alone) and each score's AUROC and false-positive rate at 95%
   true-positive rate of telling the unseen classes' images from held-out images of the seen classes
   is reported over several random draws of unseen classes.

The modules, in the order the stage runs:

- :mod:`~embedlens.novelty.settings`: the ``novelty:`` config section;
- :mod:`~embedlens.novelty.model`: :class:`NoveltyModel` (centroids, distance statistics, thresholds,
  the fit embeddings; the three scores; saved to HDF5 so new images are scored without refitting);
- :mod:`~embedlens.novelty.fit`: the split, the choice of k, the fit of the whole stage, the PCA map;
- :mod:`~embedlens.novelty.quality`: detection quality on held-out classes;
- :mod:`~embedlens.novelty.results`: rows from the store, the scores table, the most novel images,
  the explore map's colourings, ``fit.json``;
- :mod:`~embedlens.novelty.summary`: the stage's ``summary.json``.
"""

from embedlens.novelty.fit import NoveltyFit, fit_novelty
from embedlens.novelty.model import NoveltyModel
from embedlens.novelty.settings import NoveltyInputError, NoveltySettings

__all__ = ["NoveltyFit", "NoveltyInputError", "NoveltyModel", "NoveltySettings", "fit_novelty"]
