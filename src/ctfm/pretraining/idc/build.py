"""Select the series, then write the manifest, the s5cmd manifest, the Table S5 comparison and a report."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path

from ctfm.io import refuse_existing, write_text_atomic
from ctfm.pretraining.idc.bigquery import render_bigquery_sql, select_bigquery
from ctfm.pretraining.idc.criteria import APPLIED, CRITERIA, PAPER_IDC_VERSION, PAPER_TOTALS
from ctfm.pretraining.idc.layout import with_local_paths
from ctfm.pretraining.idc.manifest import S5CMD_COMMAND, write_manifest_csv, write_s5cmd_manifest
from ctfm.pretraining.idc.offline import select_offline
from ctfm.pretraining.idc.table_s5 import compare_with_paper, load_paper_table_s5, write_comparison_csv

OUTPUT_NAMES = {
    "manifest": "manifest.csv",
    "s5cmd": "s5cmd_manifest.txt",
    "comparison": "table_s5_comparison.csv",
    "report": "selection.json",
    "sql": "selection.sql",
}


def output_paths(output_dir: str | Path, backend: str) -> dict[str, Path]:
    names = dict(OUTPUT_NAMES)
    if backend != "bigquery":
        names.pop("sql")
    return {k: Path(output_dir) / v for k, v in names.items()}


def build_manifest(
    *,
    backend: str = "offline",
    output_dir: str | Path,
    idc_version: int | str | None = PAPER_IDC_VERSION,
    metadata_idc_version: int | str | None = None,
    download_dir: str | Path | None = None,
    ct_index: str | Path | None = None,
    volume_geometry_index: str | Path | None = None,
    gcp_project: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Select the series, then write the manifest, the s5cmd manifest, the Table S5 comparison and a report.

    Nothing is written if any output already exists, unless ``overwrite``. Returns the report (also
    written as ``selection.json``) with the comparison table under ``"comparison"``.
    """
    if backend not in ("offline", "bigquery"):
        raise ValueError(f"backend {backend!r}: choose offline or bigquery")
    if backend == "bigquery" and (ct_index or volume_geometry_index):
        raise ValueError(
            "--ct-index and --volume-geometry-index belong to the offline back end; BigQuery applies "
            "the criteria exactly"
        )
    if backend == "offline" and metadata_idc_version is not None:
        raise ValueError("--metadata-idc-version belongs to the bigquery back end; the offline index is one release")
    output_dir = Path(output_dir).expanduser()
    download_root = Path(download_dir).expanduser() if download_dir else output_dir / "dicom"
    paths = output_paths(output_dir, backend)
    refuse_existing(list(paths.values()), overwrite)

    if backend == "offline":
        sel = select_offline(idc_version=idc_version, ct_index=ct_index, volume_geometry_index=volume_geometry_index)
    else:
        sel = select_bigquery(idc_version=idc_version, metadata_idc_version=metadata_idc_version, project=gcp_project)
    table = compare_with_paper(sel.rows, retired_by_collection=sel.retired_by_collection)

    rows = with_local_paths(sel.rows, download_root)
    write_manifest_csv(rows, paths["manifest"], overwrite=overwrite)
    _, skipped = write_s5cmd_manifest(rows, paths["s5cmd"], overwrite=overwrite)
    write_comparison_csv(table, paths["comparison"], overwrite=overwrite)
    if "sql" in paths:
        sql = render_bigquery_sql(idc_version=idc_version, metadata_idc_version=metadata_idc_version)
        write_text_atomic(paths["sql"], sql)

    collections = Counter(r["collection"] for r in sel.rows)
    report = {
        "backend": sel.backend,
        "idc_version": sel.idc_version if sel.idc_version is not None else "current",
        "source": sel.source,
        "query_seconds": round(sel.query_seconds, 3),
        "counts": {
            "series": len(sel.rows),
            "studies": len({r["study_uid"] for r in sel.rows}),
            "patients": len({(r["collection"], r["patient_id"]) for r in sel.rows}),
            "collections": len(collections),
            "largest_collection": collections.most_common(1)[0] if collections else None,
            "series_size_gb": round(sum(float(r["series_size_mb"] or 0) for r in sel.rows) / 1000, 1),
        },
        "paper": {
            **PAPER_TOTALS,
            "nlst": next(p["scans"] for p in load_paper_table_s5() if p["collection_id"] == "nlst"),
        },
        "criteria": {k: {"paper_sql": CRITERIA[k], **v} for k, v in sel.criteria.items()},
        "not_applied": [k for k, v in sel.criteria.items() if v["status"] != APPLIED],
        "notes": sel.notes
        + ([f"{skipped} series without an s3_url were left out of the s5cmd manifest"] if skipped else []),
        "download_root": str(download_root.resolve()),
        "download_command": S5CMD_COMMAND.format(manifest=shlex.quote(str(paths["s5cmd"]))),
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    write_text_atomic(paths["report"], json.dumps(report, indent=2) + "\n")
    report["comparison"] = table
    return report
