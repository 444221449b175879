"""Rebuild CT-FM's pretraining series list from the NCI Imaging Data Commons (IDC).

The paper selected about 148,000 CT series with the BigQuery SQL of its supplement S1: CT, public,
slice thickness 1..5 mm, more than 50 instances, one instance per position, no LOCALIZER image, from
IDC release 14 (metadata read from release 18). Table S5 gives the count per collection.

Two back ends build the same manifest:

- ``bigquery``: the paper's query, shipped as ``ctfm/resources/idc/ct_fm_selection.sql`` with the IDC release
  as a placeholder, run with ``google-cloud-bigquery`` when that package and credentials exist.
- ``offline``: the series index that the ``idc-index-data`` package ships (a parquet file), queried
  with DuckDB in well under a second. It applies every criterion the index carries and reports, by
  name, the ones it cannot apply (see :data:`CRITERIA` and :func:`select_offline`).

Outputs: the manifest CSV (one row per series, with the local folder it will be downloaded to), an
``s5cmd`` download manifest (IDC's documented download path), the per-collection comparison with the
paper's Table S5, and a JSON report. :func:`manifest_to_series_folders` turns the manifest into the
list of DICOM series folders that the pretraining preparation step reads.

The functions come first; the ``ctfm idc-manifest`` command-line part is at the end.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ctfm.registry import resource

SQL_TEMPLATE_PATH = resource("idc/ct_fm_selection.sql")
PAPER_TABLE_S5_PATH = resource("idc/paper_table_s5.csv")

# The paper's query selects from release 14 and reads its output columns from release 18 (supplement S1).
PAPER_IDC_VERSION = 14
PAPER_METADATA_IDC_VERSION = 18
# Paper, Methods: "148,000 CT scans from 81148 studies and 32643 patients"; Table S5 sums to 148,394.
PAPER_TOTALS = {"series": 148394, "studies": 81148, "patients": 32643, "collections": 69}

MIN_INSTANCES_EXCLUSIVE = 50  # "num_instances > 50"
SLICE_THICKNESS_MM = (1.0, 5.0)  # "min_SliceThickness >= 1 AND max_SliceThickness <= 5"

AWS_ENDPOINT = "https://s3.amazonaws.com"
S5CMD_COMMAND = f"s5cmd --no-sign-request --endpoint-url {AWS_ENDPOINT} run {{manifest}}"
# idc-index's IDCClient.DOWNLOAD_HIERARCHY_DEFAULT, the layout `idc download` writes.
DOWNLOAD_LAYOUT = "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"
CT_INDEX_URL = "https://github.com/ImagingDataCommons/idc-index-data/releases/download/{version}/ct_index.parquet"
VOLUME_GEOMETRY_INDEX_URL = (
    "https://github.com/ImagingDataCommons/idc-index-data/releases/download/{version}/volume_geometry_index.parquet"
)

# The selection criteria of supplement S1, each with the SQL that states it there.
CRITERIA: dict[str, str] = {
    "modality_ct": 'Modality = "CT"',
    "public": 'access = "Public"',
    "in_release": "FROM `bigquery-public-data.idc_v14.dicom_all` (series served by the selected release)",
    "slice_thickness_1_5mm": "min_SliceThickness >= 1 AND max_SliceThickness <= 5",
    "more_than_50_instances": "num_instances > 50",
    "one_instance_per_position": "num_instances / position_count = 1",
    "no_localizer": 'has_localizer = "false" (no instance has LOCALIZER in ImageType)',
}

APPLIED, APPROXIMATED, NOT_APPLIED = "applied", "approximated", "not applied"

MANIFEST_COLUMNS = (
    "series_uid",
    "collection",
    "patient_id",
    "study_uid",
    "instance_count",
    "modality",
    "series_description",
    "license",
    "series_init_idc_version",
    "series_size_mb",
    "s3_url",
    "local_path",
)
COMPARISON_COLUMNS = ("collection", "paper_scans", "our_scans", "difference", "in_paper", "retired_series")

OUTPUT_NAMES = {
    "manifest": "manifest.csv",
    "s5cmd": "s5cmd_manifest.txt",
    "comparison": "table_s5_comparison.csv",
    "report": "selection.json",
    "sql": "selection.sql",
}


@dataclass
class Selection:
    """The series one back end selected, and exactly what it could and could not check."""

    rows: list[dict]  # MANIFEST_COLUMNS without local_path
    backend: str
    idc_version: int | None  # None: the current release
    criteria: dict[str, dict[str, str]]  # criterion -> {"status", "how"}
    source: str
    query_seconds: float
    retired_by_collection: dict[str, int] | None = None  # series the release served that IDC no longer serves
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- index


def index_paths() -> dict[str, Path]:
    """The parquet files that ``idc-index-data`` ships: the series index and the prior-versions index."""
    try:
        import idc_index_data
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise RuntimeError("the offline back end needs the IDC index package: pip install idc-index-data") from err
    paths = {
        "idc_index": Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH),
        "prior_versions_index": Path(idc_index_data.PRIOR_VERSIONS_INDEX_PARQUET_FILEPATH),
    }
    for name, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the {name} parquet of idc-index-data is missing; reinstall idc-index-data"
            )
    return paths


def index_version() -> str:
    """Version of the installed ``idc-index-data`` (its major number is the IDC release it indexes)."""
    import idc_index_data

    return str(idc_index_data.__version__)


def index_release() -> int:
    """The IDC release that the installed ``idc-index-data`` indexes (25 for idc-index-data 25.0.5)."""
    return int(index_version().split(".")[0])


def _duckdb():
    try:
        import duckdb
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise RuntimeError("the offline back end queries the IDC index with DuckDB: pip install duckdb") from err
    return duckdb.connect()


def _parse_version(value: int | str | None) -> int | None:
    """An IDC release number, or None for the current release ("current")."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "current"):
        return None
    try:
        version = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"IDC version {value!r}: give a release number such as 14, or 'current'") from None
    if version < 1:
        raise ValueError(f"IDC version {version}: IDC releases are numbered from 1")
    return version


def _require_columns(con, parquet: Path, needed: set[str], what: str) -> None:
    if not Path(parquet).is_file():
        raise FileNotFoundError(f"{parquet}: {what} not found; download it first (see docs/idc_manifest.md)")
    try:
        have = {r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(parquet)]).fetchall()}
    except Exception as err:
        raise ValueError(f"{parquet}: cannot be read as a parquet file ({err}); give the {what} parquet") from err
    missing = needed - have
    if missing:
        raise ValueError(f"{parquet}: is not the {what}: columns {sorted(missing)} are missing")


# ------------------------------------------------------------------------------------------- offline


def select_offline(
    *,
    idc_version: int | str | None = PAPER_IDC_VERSION,
    ct_index: str | Path | None = None,
    volume_geometry_index: str | Path | None = None,
) -> Selection:
    """Select the CT-FM series from the ``idc-index-data`` index, applying every criterion it carries.

    Applied exactly: Modality = CT; more than 50 instances; public (every series in idc-index lies in
    IDC's public buckets); and, for a release number N, the series IDC first served at release <= N.

    Not in the shipped index: SliceThickness, ImageType and the per-instance ImagePositionPatient, so
    the slice-thickness, no-localizer and one-instance-per-position criteria cannot be applied from it.
    Two optional idc-index tables, downloaded separately, approximate them: ``ct_index`` (SliceThickness
    and ImageType of one instance per series) and ``volume_geometry_index`` (``unique_slice_positions``).
    The returned :class:`Selection` says, per criterion, what was applied, approximated or not applied.
    """
    version = _parse_version(idc_version)
    release = index_release()
    if version is not None and version > release:
        raise ValueError(
            f"IDC version {version}: the installed idc-index-data {index_version()} indexes release {release}; "
            f"use --idc-version {release} or lower, or upgrade idc-index-data"
        )
    paths = index_paths()
    con = _duckdb()
    idx = str(paths["idc_index"])

    joins, where, params = [], [], []
    where.append("idx.Modality = 'CT'")
    where.append(f"idx.instanceCount > {MIN_INSTANCES_EXCLUSIVE}")
    where.append("idx.aws_bucket IS NOT NULL AND idx.series_aws_url IS NOT NULL")
    if version is not None:
        where.append(f"idx.series_init_idc_version <= {version}")

    criteria = {
        "modality_ct": {"status": APPLIED, "how": "idc_index.Modality = 'CT'"},
        "public": {
            "status": APPLIED,
            "how": "idc-index lists only series in IDC's public AWS buckets (aws_bucket is set on every row). "
            "It records access today: a collection that was limited-access at the selected release and is "
            "public now is included.",
        },
        "more_than_50_instances": {"status": APPLIED, "how": f"idc_index.instanceCount > {MIN_INSTANCES_EXCLUSIVE}"},
        "in_release": (
            {
                "status": APPLIED,
                "how": f"idc_index.series_init_idc_version <= {version}. Series that release {version} served and "
                f"IDC has since removed are not in the index (counted per collection as retired_series); the "
                f"paper read its output columns from release {PAPER_METADATA_IDC_VERSION}, here release {release}.",
            }
            if version is not None
            else {"status": APPLIED, "how": f"every series of the current release ({release}) in the index"}
        ),
        "slice_thickness_1_5mm": {
            "status": NOT_APPLIED,
            "how": "idc_index has no SliceThickness. Pass --ct-index (idc-index's ct_index table) to apply it "
            "to one instance per series.",
        },
        "one_instance_per_position": {
            "status": NOT_APPLIED,
            "how": "needs ImagePositionPatient of every instance, which idc_index does not carry. Pass "
            "--volume-geometry-index (unique_slice_positions) to approximate it.",
        },
        "no_localizer": {
            "status": NOT_APPLIED,
            "how": "idc_index has no ImageType. Pass --ct-index to apply it to one instance per series. A "
            "localizer series is one to three images, so 'more than 50 instances' already removes nearly all.",
        },
    }

    if ct_index is not None:
        _require_columns(con, Path(ct_index), {"SeriesInstanceUID", "SliceThickness", "ImageType"}, "ct_index")
        joins.append("JOIN read_parquet(?) AS ct ON ct.SeriesInstanceUID = idx.SeriesInstanceUID")
        params.append(str(ct_index))
        lo, hi = SLICE_THICKNESS_MM
        where.append(f"ct.SliceThickness >= {lo} AND ct.SliceThickness <= {hi}")
        where.append("NOT coalesce(list_contains(ct.ImageType, 'LOCALIZER'), false)")
        criteria["slice_thickness_1_5mm"] = {
            "status": APPROXIMATED,
            "how": f"ct_index.SliceThickness between {lo:g} and {hi:g} mm; ct_index holds one instance's value "
            "per series (ANY_VALUE), the paper required it of the minimum and the maximum. Series absent from "
            "ct_index (no CT Image Storage instance) are excluded, as SAFE_CAST NULL excludes them in S1.",
        }
        criteria["no_localizer"] = {
            "status": APPROXIMATED,
            "how": "'LOCALIZER' not in ct_index.ImageType, which is one instance's ImageType per series (ANY_VALUE); "
            "the paper required it of every instance.",
        }
    if volume_geometry_index is not None:
        _require_columns(
            con, Path(volume_geometry_index), {"SeriesInstanceUID", "unique_slice_positions"}, "volume_geometry_index"
        )
        joins.append("JOIN read_parquet(?) AS geo ON geo.SeriesInstanceUID = idx.SeriesInstanceUID")
        params.append(str(volume_geometry_index))
        where.append("geo.unique_slice_positions")
        criteria["one_instance_per_position"] = {
            "status": APPROXIMATED,
            "how": "volume_geometry_index.unique_slice_positions: every instance has a distinct position along the "
            "slice normal (the paper compared the full ImagePositionPatient strings).",
        }

    sql = f"""
        SELECT idx.SeriesInstanceUID, idx.collection_id, idx.PatientID, idx.StudyInstanceUID, idx.instanceCount,
               idx.Modality, idx.SeriesDescription, idx.license_short_name, idx.series_init_idc_version,
               idx.series_size_MB, idx.series_aws_url
        FROM read_parquet(?) AS idx
        {" ".join(joins)}
        WHERE {" AND ".join(where)}
        ORDER BY idx.collection_id, idx.PatientID, idx.StudyInstanceUID, idx.SeriesInstanceUID
    """
    start = time.perf_counter()
    found = con.execute(sql, [idx, *params]).fetchall()
    retired = _retired_series(con, paths, version) if version is not None else None
    seconds = time.perf_counter() - start
    rows = [
        {
            "series_uid": r[0],
            "collection": r[1],
            "patient_id": r[2],
            "study_uid": r[3],
            "instance_count": int(r[4]),
            "modality": r[5],
            "series_description": r[6] or "",
            "license": r[7] or "",
            "series_init_idc_version": "" if r[8] is None else int(r[8]),
            "series_size_mb": "" if r[9] is None else round(float(r[9]), 3),
            "s3_url": r[10],
        }
        for r in found
    ]
    return Selection(
        rows=rows,
        backend="offline",
        idc_version=version,
        criteria=criteria,
        source=f"idc-index-data {index_version()} (IDC release {release}): {idx}",
        query_seconds=seconds,
        retired_by_collection=retired,
    )


def _retired_series(con, paths: dict[str, Path], version: int) -> dict[str, int]:
    """Per collection, the CT series release `version` served that IDC no longer serves at all.

    From idc-index's prior_versions_index. Their instance counts are not recorded, so this is an upper
    bound on what the offline back end misses, not a count that passed the criteria.
    """
    found = con.execute(
        """
        SELECT p.collection_id, count(DISTINCT p.SeriesInstanceUID)
        FROM read_parquet(?) AS p
        WHERE p.Modality = 'CT' AND p.min_idc_version <= ? AND p.max_idc_version >= ?
          AND p.SeriesInstanceUID NOT IN (SELECT SeriesInstanceUID FROM read_parquet(?))
        GROUP BY 1
        """,
        [str(paths["prior_versions_index"]), version, version, str(paths["idc_index"])],
    ).fetchall()
    return {c: int(n) for c, n in found}


# ------------------------------------------------------------------------------------------- BigQuery


def _dataset(version: int | None) -> str:
    return "idc_current" if version is None else f"idc_v{version}"


def resolve_metadata_version(idc_version: int | str | None, metadata_idc_version: int | str | None) -> int | None:
    """The release the output columns are read from: given, or the paper's 18 for release 14, else the same."""
    version = _parse_version(idc_version)
    if metadata_idc_version is None:
        return PAPER_METADATA_IDC_VERSION if version == PAPER_IDC_VERSION else version
    meta = _parse_version(metadata_idc_version)
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
    version = _parse_version(idc_version)
    meta = resolve_metadata_version(version, metadata_idc_version)
    template_path = Path(template_path)
    if not template_path.is_file():
        raise FileNotFoundError(f"{template_path}: the SQL template is missing; reinstall ctfm")
    template = template_path.read_text()
    for placeholder in ("{{IDC_DATASET}}", "{{METADATA_IDC_DATASET}}"):
        if placeholder not in template:
            raise ValueError(f"{template_path}: the placeholder {placeholder} is missing from the SQL template")
    sql = template.replace("{{IDC_DATASET}}", _dataset(version)).replace("{{METADATA_IDC_DATASET}}", _dataset(meta))
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
    con = _duckdb()
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
    version = _parse_version(idc_version)
    return Selection(
        rows=rows,
        backend="bigquery",
        idc_version=version,
        criteria={k: {"status": APPLIED, "how": f"BigQuery, supplement S1: {v}"} for k, v in CRITERIA.items()},
        source=f"BigQuery bigquery-public-data.{_dataset(version)} "
        f"(metadata {_dataset(resolve_metadata_version(version, metadata_idc_version))})",
        query_seconds=seconds,
        notes=notes,
    )


# -------------------------------------------------------------------------------- layout and outputs


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@functools.lru_cache(maxsize=1 << 16)
def _safe_component(value, what: str) -> str:
    text = str(value).strip()
    if _UNSAFE.search(text):
        text = _UNSAFE.sub("_", text)
    if text in ("", ".", ".."):
        raise ValueError(f"{what} {value!r} cannot name a folder")
    return text


def _series_folder_str(root: str, row: dict) -> str:
    # Plain strings and cached components: pathlib would cost seconds on a full selection (150,000 rows).
    series = row["series_uid"]
    series = _UNSAFE.sub("_", series.strip()) if _UNSAFE.search(series) else series
    if not series.strip("."):
        raise ValueError(f"series UID {row['series_uid']!r} cannot name a folder")
    return "/".join(
        (
            root,
            _safe_component(row["collection"], "collection"),
            _safe_component(row["patient_id"], "patient ID"),
            _safe_component(row["study_uid"], "study UID"),
            f"{_safe_component(row.get('modality') or 'CT', 'modality')}_{series}",
        )
    )


def _root_str(download_root: str | Path) -> str:
    return str(Path(download_root).expanduser().resolve())


def series_folder(download_root: str | Path, row: dict) -> Path:
    """The folder a series is downloaded to, in idc-index's default layout.

    ``<root>/<collection>/<PatientID>/<StudyInstanceUID>/<Modality>_<SeriesInstanceUID>`` (DOWNLOAD_LAYOUT,
    what ``idc download`` writes); characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``.
    ``download_root`` is made absolute.
    """
    return Path(_series_folder_str(_root_str(download_root), row))


def with_local_paths(rows: list[dict], download_root: str | Path) -> list[dict]:
    """Copies of ``rows`` with ``local_path``, the series folder under ``download_root`` (see :func:`series_folder`)."""
    root = _root_str(download_root)
    return [{**r, "local_path": _series_folder_str(root, r)} for r in rows]


def check_outputs_free(paths: list[Path], overwrite: bool) -> None:
    """Refuse, before anything is written, if any output exists and ``overwrite`` is False."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "choose another --output-dir or pass --overwrite"
        )


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, newline="")
    os.replace(tmp, path)


def _csv_field(value) -> str:
    # RFC 4180 minimal quoting, as csv.writer does, at a fifth of its cost on a 150,000-row manifest.
    text = "" if value is None else value if isinstance(value, str) else str(value)
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _csv_text(columns, rows) -> str:
    lines = [",".join(map(_csv_field, columns))]
    lines.extend(",".join([_csv_field(r.get(c)) for c in columns]) for r in rows)
    return "\n".join(lines) + "\n"


def write_manifest_csv(
    rows: list[dict], path: str | Path, *, download_root: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Write the manifest CSV (MANIFEST_COLUMNS).

    ``local_path`` is each series' folder under ``download_root``; without one, rows must carry it already
    (from :func:`with_local_paths`).
    """
    path = Path(path)
    check_outputs_free([path], overwrite)
    if download_root is not None or not all(r.get("local_path") for r in rows):
        rows = with_local_paths(rows, download_root)
    _write_atomic(path, _csv_text(MANIFEST_COLUMNS, rows))
    return path


def s5cmd_lines(rows: list[dict], download_root: str | Path | None = None) -> tuple[list[str], int]:
    """``cp <series_aws_url> <folder>/`` per series; also the number skipped for having no URL.

    The folder is the row's ``local_path`` when ``download_root`` is None, else rebuilt under it. s5cmd
    splits each line as a POSIX shell would, so a folder with spaces is quoted.
    """
    root = None if download_root is None else _root_str(download_root)
    lines, skipped = [], 0
    for r in rows:
        url = r.get("s3_url") or ""
        if not url.startswith("s3://"):
            skipped += 1
            continue
        if not url.endswith("*"):
            url = url.rstrip("/") + "/*"
        folder = r["local_path"] if root is None else _series_folder_str(root, r)
        lines.append(f"cp {url} {shlex.quote(folder + '/')}")
    return lines, skipped


def write_s5cmd_manifest(
    rows: list[dict], path: str | Path, *, download_root: str | Path | None = None, overwrite: bool = False
) -> tuple[Path, int]:
    """Write the s5cmd manifest; run it with ``S5CMD_COMMAND``. Returns the path and the number skipped.

    The first line is a comment (s5cmd skips lines that start with ``#``) giving the command to run.
    """
    path = Path(path)
    check_outputs_free([path], overwrite)
    lines, skipped = s5cmd_lines(rows, download_root)
    header = f"# {len(lines)} IDC series for CT-FM. Download: {S5CMD_COMMAND.format(manifest=shlex.quote(str(path)))}"
    _write_atomic(path, "\n".join([header, *lines]) + "\n")
    return path, skipped


def load_paper_table_s5(path: str | Path = PAPER_TABLE_S5_PATH) -> list[dict]:
    """The paper's Table S5: rows with ``collection_id`` (IDC), ``paper_collection_id``, ``scans``, ``description``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the paper's Table S5 is missing; reinstall ctfm")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    for r in rows:
        r["scans"] = int(r["scans"])
    return rows


def compare_with_paper(
    rows: list[dict],
    *,
    paper: list[dict] | None = None,
    retired_by_collection: dict[str, int] | None = None,
) -> list[dict]:
    """Per collection: the paper's count (Table S5), ours, ours minus the paper's; then a TOTAL row.

    Collections are ordered by the paper's count, then ours. ``retired_series`` is, where known, the number
    of CT series the selected release served in that collection that IDC no longer serves.
    """
    paper = load_paper_table_s5() if paper is None else paper
    ours = Counter(r["collection"] for r in rows)
    theirs = {p["collection_id"]: p["scans"] for p in paper}
    names = sorted(set(ours) | set(theirs), key=lambda c: (-theirs.get(c, -1), -ours.get(c, 0), c))
    table = []
    for c in names:
        table.append(
            {
                "collection": c,
                "paper_scans": theirs.get(c, 0),
                "our_scans": ours.get(c, 0),
                "difference": ours.get(c, 0) - theirs.get(c, 0),
                "in_paper": "yes" if c in theirs else "no",
                "retired_series": "" if retired_by_collection is None else retired_by_collection.get(c, 0),
            }
        )
    table.append(
        {
            "collection": "TOTAL",
            "paper_scans": sum(theirs.values()),
            "our_scans": len(rows),
            "difference": len(rows) - sum(theirs.values()),
            "in_paper": "",
            "retired_series": "" if retired_by_collection is None else sum(retired_by_collection.values()),
        }
    )
    return table


def format_comparison(table: list[dict]) -> str:
    """The comparison as an aligned text table."""
    head = ("collection", "paper", "ours", "ours-paper", "in paper", "retired")
    body = [
        (
            t["collection"],
            str(t["paper_scans"]),
            str(t["our_scans"]),
            f"{t['difference']:+d}",
            t["in_paper"],
            str(t["retired_series"]),
        )
        for t in table
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [fmt(head), "  ".join("-" * w for w in widths)]
    for cells in body:
        if cells[0] == "TOTAL":
            lines.append("  ".join("-" * w for w in widths))
        lines.append(fmt(cells))
    return "\n".join(lines)


def write_comparison_csv(table: list[dict], path: str | Path, *, overwrite: bool = False) -> Path:
    path = Path(path)
    check_outputs_free([path], overwrite)
    _write_atomic(path, _csv_text(COMPARISON_COLUMNS, table))
    return path


def manifest_to_series_folders(manifest_csv: str | Path, download_root: str | Path | None = None) -> list[Path]:
    """The DICOM series folders of a manifest, in its order: the input of the pretraining preparation step.

    Without ``download_root``, the manifest's ``local_path`` column (absolute, written by this tool). With
    it, each folder is rebuilt under ``download_root`` in the same layout, for data that was downloaded or
    moved elsewhere.
    """
    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise FileNotFoundError(f"{manifest_csv}: manifest not found; build it with ctfm idc-manifest")
    with manifest_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = set(reader.fieldnames or [])
        rows = list(reader)
    if download_root is None:
        if "local_path" not in columns:
            raise ValueError(f"{manifest_csv}: no local_path column; pass download_root (the s5cmd destination)")
        empty = [i + 2 for i, r in enumerate(rows) if not r["local_path"]]
        if empty:
            raise ValueError(f"{manifest_csv}: local_path is empty on line(s) {empty[:5]}; pass download_root")
        return [Path(r["local_path"]) for r in rows]
    needed = {"collection", "patient_id", "study_uid", "series_uid"}
    if needed - columns:
        raise ValueError(f"{manifest_csv}: columns {sorted(needed - columns)} are missing; is it a ctfm manifest?")
    root = _root_str(download_root)
    return [Path(_series_folder_str(root, r)) for r in rows]


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
    check_outputs_free(list(paths.values()), overwrite)

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
        _write_atomic(paths["sql"], sql)

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
    _write_atomic(paths["report"], json.dumps(report, indent=2) + "\n")
    report["comparison"] = table
    return report


# ----------------------------------------------------------------------------------------------- CLI

DESCRIPTION = """\
Rebuild CT-FM's pretraining series list from the NCI Imaging Data Commons, with the criteria of the
paper's supplement S1: CT, public, slice thickness 1..5 mm, more than 50 instances, one instance per
position, no LOCALIZER, IDC release 14. Writes manifest.csv (one series a row, with the local folder
it downloads to: the input of the pretraining preparation step), s5cmd_manifest.txt, a comparison with
the paper's Table S5 and selection.json. The offline back end reads the index that idc-index-data
ships (seconds, no account) and names the criteria that index cannot apply; the bigquery back end runs
the paper's exact SQL (needs google-cloud-bigquery and credentials)."""

EXAMPLES = """\
  ctfm idc-manifest --backend offline --idc-version 14 --output-dir idc_ctfm
  ctfm idc-manifest --backend bigquery --idc-version 14 --metadata-idc-version 18 --print-sql"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("offline", "bigquery"),
        default="offline",
        help="offline: the idc-index-data index (default); bigquery: the paper's SQL on BigQuery",
    )
    parser.add_argument(
        "--idc-version",
        default=str(PAPER_IDC_VERSION),
        help=f"IDC release to select from, a number or 'current' (default {PAPER_IDC_VERSION}, the paper's)",
    )
    parser.add_argument(
        "--metadata-idc-version",
        default=None,
        help=f"bigquery: release the output columns are read from (default {PAPER_METADATA_IDC_VERSION} "
        f"for release {PAPER_IDC_VERSION}, as in the paper; otherwise the same as --idc-version)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="folder for manifest.csv, s5cmd_manifest.txt, table_s5_comparison.csv, selection.json",
    )
    parser.add_argument(
        "--download-dir",
        type=Path,
        default=None,
        help="where s5cmd will put the DICOM series (default OUTPUT_DIR/dicom); fills local_path",
    )
    parser.add_argument(
        "--print-sql", action="store_true", help="print the BigQuery SQL for --idc-version and exit; nothing is written"
    )
    parser.add_argument(
        "--ct-index",
        type=Path,
        default=None,
        help="offline: idc-index's ct_index.parquet, to apply slice thickness and no-localizer "
        "(one instance per series)",
    )
    parser.add_argument(
        "--volume-geometry-index",
        type=Path,
        default=None,
        help="offline: idc-index's volume_geometry_index.parquet, to approximate one instance per position",
    )
    parser.add_argument("--gcp-project", default=None, help="bigquery: Google Cloud project billed for the query")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")


def run(args: argparse.Namespace) -> int:
    if args.print_sql:
        print(render_bigquery_sql(idc_version=args.idc_version, metadata_idc_version=args.metadata_idc_version), end="")
        return 0
    if args.output_dir is None:
        raise ValueError("--output-dir is required (or pass --print-sql)")
    try:
        report = build_manifest(
            backend=args.backend,
            output_dir=args.output_dir,
            idc_version=args.idc_version,
            metadata_idc_version=args.metadata_idc_version,
            download_dir=args.download_dir,
            ct_index=args.ct_index,
            volume_geometry_index=args.volume_geometry_index,
            gcp_project=args.gcp_project,
            overwrite=args.overwrite,
        )
    except FileExistsError as err:
        print(f"ctfm idc-manifest: error: {err}", file=sys.stderr)
        return 1
    counts = report["counts"]
    print(format_comparison(report["comparison"]))
    print()
    print(
        f"{report['backend']} back end, IDC release {report['idc_version']}: {counts['series']} series, "
        f"{counts['studies']} studies, {counts['patients']} patients, {counts['collections']} collections, "
        f"{counts['series_size_gb']} GB (paper: {PAPER_TOTALS['series']} series, {PAPER_TOTALS['studies']} studies, "
        f"{PAPER_TOTALS['patients']} patients); query {report['query_seconds']} s"
    )
    for name in report["not_applied"]:
        c = report["criteria"][name]
        print(f"{c['status'].upper()}: {name} ({c['paper_sql']}): {c['how']}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"wrote {', '.join(report['outputs'].values())}")
    print(f"download: {report['download_command']}")
    return 0
