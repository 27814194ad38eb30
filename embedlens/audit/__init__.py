"""The dataset audit: near-duplicates and train/test leakage with pixel verdicts, likely label errors,
and a clean test split, all from the stored embeddings.

- :mod:`embedlens.audit.duplicates`: the query split's nearest neighbours in the reference split and
  within itself (:func:`embedlens.knn.cosine_topk`), the candidate pairs (threshold or top-N);
- :mod:`embedlens.audit.pixels`: each candidate's verdict on its pixels: exact / near / similar;
- :mod:`embedlens.audit.labels`: out-of-sample probabilities of a cross-validated probe, ranked
  by cleanlab into likely label errors;
- :mod:`embedlens.audit.clean`: the query split without its copies (and, when asked, its most likely
  label errors), and :func:`clean_index`,
  which other stages call to evaluate on the clean split;
- :mod:`embedlens.audit.results`: documents, pictures, explore-map colourings and the summary.
"""

from embedlens.audit.clean import CLEAN_COLUMNS, clean_index

__all__ = ["CLEAN_COLUMNS", "clean_index"]
