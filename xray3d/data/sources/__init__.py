"""Preparation of the public datasets, one module per source on one skeleton.

* :mod:`xray3d.data.sources.base`: the skeleton (:class:`~xray3d.data.sources.base.Preparer`): discover
  subjects -> per-subject samples -> ROI -> write, with the shared rules (report, resume, atomic writes,
  duplicate scans, ambiguous files);
* :mod:`xray3d.data.sources.cli`: the options and exit codes every ``xray3d-prepare-*`` command shares;
* sources: :mod:`~xray3d.data.sources.totalseg` (femur, hip, rib), :mod:`~xray3d.data.sources.verse`
  (VerSe 2019 vertebrae), :mod:`~xray3d.data.sources.ctpelvic1k` (hip, domain shift) and
  :mod:`~xray3d.data.sources.rsna` (RSNA 2022 cervical vertebrae, domain shift).

Training-time code (manifest dataset, datamodule, projections) stays in :mod:`xray3d.data`.
"""
