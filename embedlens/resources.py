"""The memory each analysis job declares to the scheduler (the rules' ``mem_mb``, rules/common.smk): a
constant plus a multiple of its feature store's size, that is bytes per row x rows, with the
constants measured by ``benchmarks/stage_scale.py`` (peak resident memory of each job's code in a fresh
process on synthetic stores of 1,000 classes x 1,024 dimensions) and rounded up, so that what a job
declares is at least what it was measured to use. The README's scale table gives the measurements.
"""

from __future__ import annotations

# job -> (constant MB, MB per MB of feature store)
JOB_MEMORY = {
    "classify": (2500, 2.0),
    "cluster_kmeans": (2000, 4.0),
    "cluster_temi": (2000, 4.0),
    "cluster_results": (2000, 4.0),
    "audit_duplicates": (2000, 4.0),
    "audit_labels": (2000, 4.0),
}


def declared_mem_mb(job: str, store_mb: float) -> int:
    """The MB that ``job`` declares for a feature store of ``store_mb`` MB (first attempt)."""
    constant, per_store_mb = JOB_MEMORY[job]
    return int(constant + per_store_mb * store_mb)
