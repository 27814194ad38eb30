"""Rule report: results/report.html from every stage's summary, the dataset files and the subsets."""

from pathlib import Path

from embedlens.logs import job_logger
from embedlens.report.page import DatasetFiles, PairFiles, build_report

log = job_logger("report", snakemake.log[0])
datasets = [DatasetFiles(Path(info), Path(skipped)) for info, skipped in zip(snakemake.input.infos, snakemake.input.skipped)]
pairs = [PairFiles(pair["dataset"], pair["backbone"], [Path(path) for path in pair["summaries"]],
                   Path(pair["subset"]) if pair["subset"] else None, Path(pair["explore"]))
         for pair in snakemake.params.pairs]
build_report(datasets, pairs, snakemake.params.config, snakemake.output[0])
log.info("report of %d datasets x %d backbones: %s (%.1f MB)", len(datasets), len({p.backbone for p in pairs}),
         snakemake.output[0], Path(snakemake.output[0]).stat().st_size / 1e6)
