"""The offline back end: the series index that ``idc-index-data`` ships (a parquet file), queried with DuckDB.

It runs in well under a second, applies every criterion the index carries and reports, by name, the ones
it cannot apply (see :data:`~ctfm.pretraining.idc.criteria.CRITERIA` and :func:`select_offline`).
"""

from __future__ import annotations

import time
from pathlib import Path

from ctfm.pretraining.idc.criteria import (
    APPLIED,
    APPROXIMATED,
    MIN_INSTANCES_EXCLUSIVE,
    NOT_APPLIED,
    PAPER_IDC_VERSION,
    PAPER_METADATA_IDC_VERSION,
    SLICE_THICKNESS_MM,
    Selection,
    parse_version,
)

# The optional idc-index tables that approximate the criteria the series index lacks, by release of idc-index-data.
OPTIONAL_INDEX_URLS = {
    name: f"https://github.com/ImagingDataCommons/idc-index-data/releases/download/{{version}}/{name}.parquet"
    for name in ("ct_index", "volume_geometry_index")
}


def index_paths() -> dict[str, Path]:
    """The parquet files that ``idc-index-data`` ships: the series index and the prior-versions index."""
    try:
        import idc_index_data
    except ImportError as err:  # the `idc` extra
        raise RuntimeError("the offline back end needs the IDC index: pip install 'ctfm[idc]'") from err
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


def connect():
    try:
        import duckdb
    except ImportError as err:  # the `idc` extra
        raise RuntimeError("the offline back end queries the IDC index with DuckDB: pip install 'ctfm[idc]'") from err
    return duckdb.connect()


def require_columns(con, parquet: Path, needed: set[str], what: str) -> None:
    if not Path(parquet).is_file():
        url = OPTIONAL_INDEX_URLS[what].format(version=index_version())
        raise FileNotFoundError(f"{parquet}: {what} not found; download it first from {url} (see docs/idc_manifest.md)")
    try:
        have = {r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(parquet)]).fetchall()}
    except Exception as err:
        raise ValueError(f"{parquet}: cannot be read as a parquet file ({err}); give the {what} parquet") from err
    missing = needed - have
    if missing:
        raise ValueError(f"{parquet}: is not the {what}: columns {sorted(missing)} are missing")


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
    version = parse_version(idc_version)
    release = index_release()
    if version is not None and version > release:
        raise ValueError(
            f"IDC version {version}: the installed idc-index-data {index_version()} indexes release {release}; "
            f"use --idc-version {release} or lower, or upgrade idc-index-data"
        )
    paths = index_paths()
    con = connect()
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
        require_columns(con, Path(ct_index), {"SeriesInstanceUID", "SliceThickness", "ImageType"}, "ct_index")
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
        require_columns(
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
    retired = retired_series(con, paths, version) if version is not None else None
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


def retired_series(con, paths: dict[str, Path], version: int) -> dict[str, int]:
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
