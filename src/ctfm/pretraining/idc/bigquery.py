"""The BigQuery back end: the paper's S1 query, run with ``google-cloud-bigquery``.

The query ships as ``ctfm/resources/idc/ct_fm_selection.sql`` with the IDC release as a placeholder; its
output is completed (download URL, description, licence, size) from the ``idc-index-data`` index.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from ctfm.pretraining.idc.criteria import (
    APPLIED,
    CRITERIA,
    PAPER_IDC_VERSION,
    PAPER_METADATA_IDC_VERSION,
    Selection,
    parse_version,
)
from ctfm.pretraining.idc.offline import connect, index_paths
from ctfm.registry import resource

SQL_TEMPLATE_PATH = resource("idc/ct_fm_selection.sql")


def dataset_name(version: int | None) -> str:
    return "idc_current" if version is None else f"idc_v{version}"


def resolve_metadata_version(idc_version: int | str | None, metadata_idc_version: int | str | None) -> int | None:
    """The release the output columns are read from: given, or the paper's 18 for release 14, else the same."""
    version = parse_version(idc_version)
    if metadata_idc_version is None:
        return PAPER_METADATA_IDC_VERSION if version == PAPER_IDC_VERSION else version
    meta = parse_version(metadata_idc_version)
    if version is None and meta is not None:
        raise ValueError("--metadata-idc-version: with --idc-version current, leave it out (it is current too)")
    if version is not None and meta is not None and meta < version:
        raise ValueError(
            f"--metadata-idc-version {meta} is older than --idc-version {version}: series added after release "
            f"{meta} would be dropped by the join; give a release >= {version}"
        )
    return meta


def render_bigquery_sql(
    *,
    idc_version: int | str | None = PAPER_IDC_VERSION,
    metadata_idc_version: int | str | None = None,
    template_path: str | Path = SQL_TEMPLATE_PATH,
) -> str:
    """The paper's S1 query with the IDC release filled in (defaults: idc_v14 and idc_v18, as in the paper)."""
    version = parse_version(idc_version)
    meta = resolve_metadata_version(version, metadata_idc_version)
    template_path = Path(template_path)
    if not template_path.is_file():
        raise FileNotFoundError(f"{template_path}: the SQL template is missing; reinstall ctfm")
    template = template_path.read_text()
    for placeholder in ("{{IDC_DATASET}}", "{{METADATA_IDC_DATASET}}"):
        if placeholder not in template:
            raise ValueError(f"{template_path}: the placeholder {placeholder} is missing from the SQL template")
    sql = template.replace("{{IDC_DATASET}}", dataset_name(version)).replace("{{METADATA_IDC_DATASET}}", dataset_name(meta))
    leftover = re.findall(r"\{\{[A-Z_]+\}\}", sql)
    if leftover:
        raise ValueError(f"{template_path}: unknown placeholders {sorted(set(leftover))}")
    return sql


def run_bigquery(sql: str, *, project: str | None = None) -> list[dict]:
    """Run ``sql`` on BigQuery with the official client; rows as dicts.

    Needs ``google-cloud-bigquery`` and Application Default Credentials with a billing project.
    """
    try:
        from google.cloud import bigquery
    except ImportError:
        raise RuntimeError(
            "the bigquery back end needs the BigQuery client and Google Cloud credentials: "
            "pip install google-cloud-bigquery, then gcloud auth application-default login, and pass "
            "--gcp-project YOUR_BILLING_PROJECT. Without them use --backend offline, or --print-sql and run "
            "the query in the BigQuery console."
        ) from None
    try:
        client = bigquery.Client(project=project)
    except Exception as err:  # google.auth.exceptions.DefaultCredentialsError, missing project, ...
        raise RuntimeError(
            f"BigQuery client could not start ({type(err).__name__}: {err}). Run gcloud auth "
            "application-default login and pass --gcp-project YOUR_BILLING_PROJECT."
        ) from err
    return [dict(row.items()) for row in client.query(sql).result()]


def manifest_rows_from_bigquery(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Manifest rows from the S1 query's output, with the download URLs looked up in idc-index.

    A series still in IDC takes its URL (and description, licence, size) from the series index; one IDC
    has since replaced or removed takes the URL of its last version from the prior-versions index.
    Returns the rows and the series UIDs found in neither (these cannot be downloaded from AWS).
    """
    needed = {"SeriesInstanceUID", "collection_id", "PatientID", "StudyInstanceUID", "num_instances"}
    if rows and needed - set(rows[0]):
        raise ValueError(f"BigQuery rows lack the columns {sorted(needed - set(rows[0]))}; run the shipped SQL")
    uids = [r["SeriesInstanceUID"] for r in rows]
    paths = index_paths()
    con = connect()
    current = {
        r[0]: r[1:]
        for r in con.execute(
            """SELECT SeriesInstanceUID, Modality, SeriesDescription, license_short_name, series_init_idc_version,
                      series_size_MB, series_aws_url
               FROM read_parquet(?) WHERE SeriesInstanceUID IN (SELECT unnest(?::VARCHAR[]))""",
            [str(paths["idc_index"]), uids],
        ).fetchall()
    }
    prior = {
        r[0]: r[1:]
        for r in con.execute(
            """SELECT SeriesInstanceUID, arg_max(series_aws_url, max_idc_version),
                      arg_max(series_size_MB, max_idc_version)
               FROM read_parquet(?) WHERE SeriesInstanceUID IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1""",
            [str(paths["prior_versions_index"]), uids],
        ).fetchall()
    }
    out, missing = [], []
    for r in rows:
        uid = r["SeriesInstanceUID"]
        row = {
            "series_uid": uid,
            "collection": r["collection_id"],
            "patient_id": r["PatientID"],
            "study_uid": r["StudyInstanceUID"],
            "instance_count": int(r["num_instances"]),
            "modality": "CT",
            "series_description": "",
            "license": "",
            "series_init_idc_version": "",
            "series_size_mb": "",
            "s3_url": "",
        }
        if uid in current:
            modality, desc, lic, init, size, url = current[uid]
            row.update(modality=modality or "CT", series_description=desc or "", license=lic or "", s3_url=url)
            row.update(series_init_idc_version="" if init is None else int(init))
            row.update(series_size_mb="" if size is None else round(float(size), 3))
        elif uid in prior:
            url, size = prior[uid]
            row.update(s3_url=url, series_size_mb="" if size is None else round(float(size), 3))
        else:
            missing.append(uid)
        out.append(row)
    out.sort(key=lambda x: (x["collection"], x["patient_id"], x["study_uid"], x["series_uid"]))
    return out, missing


def select_bigquery(
    *,
    idc_version: int | str | None = PAPER_IDC_VERSION,
    metadata_idc_version: int | str | None = None,
    project: str | None = None,
) -> Selection:
    """Run the paper's query on BigQuery: every criterion is applied exactly, as in supplement S1."""
    sql = render_bigquery_sql(idc_version=idc_version, metadata_idc_version=metadata_idc_version)
    start = time.perf_counter()
    result = run_bigquery(sql, project=project)
    seconds = time.perf_counter() - start
    rows, missing = manifest_rows_from_bigquery(result)
    notes = []
    if missing:
        notes.append(f"{len(missing)} selected series are in neither idc-index table; they have no s3_url")
    version = parse_version(idc_version)
    return Selection(
        rows=rows,
        backend="bigquery",
        idc_version=version,
        criteria={k: {"status": APPLIED, "how": f"BigQuery, supplement S1: {v}"} for k, v in CRITERIA.items()},
        source=f"BigQuery bigquery-public-data.{dataset_name(version)} "
        f"(metadata {dataset_name(resolve_metadata_version(version, metadata_idc_version))})",
        query_seconds=seconds,
        notes=notes,
    )
