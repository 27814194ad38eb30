"""Rule audit_clean: the query split kept or removed with the reasons (clean_test_index.csv), the
explore map's colourings, and the audit stage's summary.json."""

import json

import pandas as pd

from embedlens.audit.clean import CLEAN_COLUMNS, clean_table
from embedlens.audit.duplicates import split_rows
from embedlens.audit.labels import labelled_rows
from embedlens.audit.results import audit_summary, map_columns
from embedlens.audit.settings import AuditSettings
from embedlens.logs import job_logger
from embedlens.manifest import read_manifest, write_table
from embedlens.store import FeatureStore
from embedlens.summary import StageSummary, read_json


log = job_logger("audit_clean", snakemake.log[0])
settings = AuditSettings.from_config({**snakemake.params.audit, "enabled": True})
dataset, backbone = snakemake.wildcards.dataset, snakemake.wildcards.backbone
if snakemake.params.skip:
    log.warning("audit skipped: %s", snakemake.params.skip)
    write_table(pd.DataFrame(columns=CLEAN_COLUMNS), snakemake.output.clean)
    write_table(pd.DataFrame(columns=["split", "index_in_split"]), snakemake.output.map_columns)
    StageSummary.skipped("audit", snakemake.params.skip, dataset=dataset, backbone=backbone,
                         settings=settings.as_dict()).write(snakemake.output.summary)
    raise SystemExit(0)
store = FeatureStore(snakemake.input.features)
store.check(dataset=snakemake.wildcards.dataset, recipe=snakemake.params.recipe, manifest=snakemake.input.manifest)
query_rows = split_rows(store, read_manifest(snakemake.input.manifest), settings.query_split)
pairs = pd.read_csv(snakemake.input.pairs, keep_default_na=False, na_values=[""],
                    dtype={"query_class": str, "reference_class": str})
issues = pd.read_csv(snakemake.input.issues, keep_default_na=False, na_values=[""],
                     dtype={"class_name": str, "suggested_class": str})
clean = clean_table(query_rows, settings.query_split, pairs, issues, settings)
write_table(clean, snakemake.output.clean)
checked = labelled_rows(store, settings.label_splits)
write_table(map_columns(settings.query_split, query_rows, pairs, checked[checked["label"] >= 0], issues),
            snakemake.output.map_columns)
summary = audit_summary(read_json(snakemake.input.duplicates), read_json(snakemake.input.labels), clean,
                        dataset=dataset, backbone=backbone)
summary.write(snakemake.output.summary)
log.info("%s", json.dumps(summary.headline))
