"""The overlap classifier stage: which look-alike classes a model actually confuses, measured three ways.

- :mod:`~embedlens.classify.settings`: the ``classify:`` config section;
- :mod:`~embedlens.classify.data`: the classes (the overlap set, or all), their rows from the feature
  store, and the checks that say why a classifier or a K-fold estimate cannot be made;
- :mod:`~embedlens.classify.training`: the notebook's MLP, trained with checkpoints, and K-fold
  out-of-sample probabilities;
- :mod:`~embedlens.classify.analysis`: report, confusion matrix, confusion pairs, cleanlab's overlap
  and the agreement of the three overlap measures;
- :mod:`~embedlens.classify.pictures`: UMAP and sample grid of each flagged pair;
- :mod:`~embedlens.classify.results`: the files the rules pass on, and the stage summary.
"""
