"""The memory each analysis job declares to the scheduler (the rules' ``mem_mb``, rules/common.smk): a
constant plus a multiple of its feature store's size, that is bytes per row x rows, with the
constants measured by ``benchmarks/stage_scale.py`` (peak resident memory of each job's code in a fresh
process on synthetic stores of 1,000 classes x 1,024 dimensions) and rounded up, so that what a job
declares is at least what it was measured to use. The README's scale table gives the measurements.
"""

from __future__ import annotations

# job -> (constant MB, MB per MB of feature store). Measured peaks (stage_scale.py, CPU) at 20,000 /
# 100,000 train rows x 1,024 dims (stores of 88 / 434 MB) rise by the factor in brackets per MB of store:
# classify 1,076 / 1,729 MB (1.9), cluster_kmeans 953 / 1,279 (0.9), cluster_temi 2,836 / 3,130 (0.9),
# cluster_results 887 / 1,271 (1.1), audit_duplicates 834 / 924 (0.3), audit_labels 1,320 / 2,524 (3.5),
# novelty 1,139 / 2,473 (3.9; its k-means fit copies every fit row below novelty.fit_rows = 200,000, a
# bounded sample above, so the factor overstates it at ImageNet size), distill 1,627 / 2,403 (2.2).
# Declared: the constant rounded up, the factor about 1.3 times the measured one.
JOB_MEMORY = {
    "classify": (1500, 2.5),
    "cluster_kmeans": (1500, 1.5),
    "cluster_temi": (3500, 1.5),
    "cluster_results": (1500, 1.5),
    "audit_duplicates": (1500, 0.5),
    "audit_labels": (1500, 4.5),
    "novelty": (1500, 5.0),
    "distill": (2000, 2.8),
}

def declared_mem_mb(job: str, store_mb: float) -> int:
    """The MB that ``job`` declares for a feature store of ``store_mb`` MB (first attempt)."""
    constant, per_store_mb = JOB_MEMORY[job]
    return int(constant + per_store_mb * store_mb)
