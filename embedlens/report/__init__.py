"""The report: one self-contained HTML page rendered from every stage's ``summary.json``
(:mod:`embedlens.report.page`), and an explore page per dataset x backbone with an interactive
embedding map (:mod:`embedlens.report.explore`)."""
