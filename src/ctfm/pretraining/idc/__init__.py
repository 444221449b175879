"""Rebuild CT-FM's pretraining series list from the NCI Imaging Data Commons (IDC).

Two back ends build the same selection (:class:`~.criteria.Selection`):

- :mod:`.bigquery`: the paper's S1 query, exactly, on BigQuery (needs ``google-cloud-bigquery`` and credentials).
- :mod:`.offline`: the index that ``idc-index-data`` ships, with DuckDB; it applies every criterion the
  index carries and names the ones it cannot apply.

:mod:`.criteria` holds the paper's numbers and criteria, :mod:`.layout` the download folder of each series,
:mod:`.manifest` the manifest CSV and the ``s5cmd`` download manifest (and reads a manifest back as series
folders for the preparation step), :mod:`.table_s5` the comparison with the paper's Table S5, and
:mod:`.build` the whole run that ``ctfm idc-manifest`` makes.
"""

from ctfm.pretraining.idc.build import build_manifest
from ctfm.pretraining.idc.manifest import manifest_to_series_folders

__all__ = ["build_manifest", "manifest_to_series_folders"]
