"""Clustering without labels: TEMI as its official code runs it and a k-means baseline on frozen embeddings.

- :mod:`~embedlens.cluster.settings`: the ``cluster:`` config section;
- :mod:`~embedlens.cluster.temi`: TEMI's cluster heads, loss and training (checkpoints, resume);
- :mod:`~embedlens.cluster.temi_run`: TEMI from a split to its clusters (the one function the rule and the
  benchmark call), the heads' outputs streamed batch by batch, the diagnostics of its two failure modes
  (the uniform solution, collapse);
- :mod:`~embedlens.cluster.kmeans`: the k-means baseline at scale (centres on a seeded sample, assignment
  in blocks) over :func:`embedlens.kmeans.fit_kmeans`, the wrapper every stage shares;
- :mod:`~embedlens.cluster.metrics`: Hungarian accuracy, NMI, ARI and cluster sizes of any rows;
- :mod:`~embedlens.cluster.pseudo`: pseudo labels voted by each cluster's representatives;
- :mod:`~embedlens.cluster.results`: the files the rules pass on, the pictures and the stage summary.
"""
