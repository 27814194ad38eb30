"""Rule download_cifar100: fetch CIFAR-100 into a dataset root (one job per root, whatever uses it)."""

from pathlib import Path

from embedlens.datasets.cifar import download_cifar100
from embedlens.logs import job_logger

log = job_logger("download_cifar100", snakemake.log[0])
root = Path(snakemake.output[0]).parent.parent
log.info("downloading CIFAR-100 into %s for %s", root, snakemake.params.entries)
download_cifar100(root, snakemake.params.entries)
