"""The offline back end on the real index that `idc-index-data` ships (IDC release 25)."""

from __future__ import annotations

import re
from collections import Counter

import duckdb
import pytest

from ctfm.pretraining.idc.build import build_manifest
from ctfm.pretraining.idc.criteria import APPLIED, APPROXIMATED, CRITERIA, NOT_APPLIED
from ctfm.pretraining.idc.offline import index_release, select_offline
from ctfm.pretraining.idc.table_s5 import compare_with_paper
from idc_helpers import PAPER_NLST, PAPER_TOTAL


def test_offline_criteria_it_claims_hold_on_every_row(offline, index_parquet):
    status = {k: v["status"] for k, v in offline.criteria.items()}
    assert set(status) == set(CRITERIA)
    applied = {k for k, v in status.items() if v == APPLIED}
    assert applied == {"modality_ct", "public", "more_than_50_instances", "in_release"}
    # What the shipped index cannot apply is said, by name, with the reason.
    assert {k for k, v in status.items() if v == NOT_APPLIED} == {
        "slice_thickness_1_5mm",
        "one_instance_per_position",
        "no_localizer",
    }
    assert all(offline.criteria[k]["how"] for k in status)

    rows = offline.rows
    assert len(rows) > 100_000
    assert len({r["series_uid"] for r in rows}) == len(rows)
    for r in rows:
        assert r["modality"] == "CT"
        assert r["instance_count"] > 50
        assert r["series_init_idc_version"] <= 14
        assert re.fullmatch(r"s3://idc-open-data[a-z-]*/[0-9a-f-]{36}/\*", r["s3_url"]), r["s3_url"]
        assert r["collection"] and r["patient_id"] and r["study_uid"]

    # Independently of the tool: the same filters on the parquet give exactly these series, and they
    # do filter (series with 50 instances or fewer, or first served after release 14, exist).
    con = duckdb.connect()
    expected = con.execute(
        "SELECT count(*) FROM read_parquet(?) WHERE Modality='CT' AND instanceCount > 50 "
        "AND series_init_idc_version <= 14",
        [index_parquet],
    ).fetchone()[0]
    assert expected == len(rows)
    few, late = con.execute(
        "SELECT count(*) FILTER (WHERE instanceCount <= 50 AND series_init_idc_version <= 14), "
        "count(*) FILTER (WHERE instanceCount > 50 AND series_init_idc_version > 14) "
        "FROM read_parquet(?) WHERE Modality='CT'",
        [index_parquet],
    ).fetchone()
    assert few > 1000 and late > 1000


def test_nlst_dominates_as_in_the_paper(offline):
    counts = Counter(r["collection"] for r in offline.rows)
    (largest, n), (_, m) = counts.most_common(2)
    assert largest == "nlst"
    share = n / len(offline.rows)
    assert share > 0.5
    assert abs(share - PAPER_NLST / PAPER_TOTAL) < 0.05
    assert m < n / 10  # no other collection comes close, as in Table S5
    # Without three of the paper's filters the offline list can only be close to, and not much above, the paper's.
    assert 0.95 * PAPER_TOTAL < len(offline.rows) < 1.10 * PAPER_TOTAL


def test_release_filter_follows_idc_version(offline):
    current = select_offline(idc_version="current")
    assert current.idc_version is None and current.retired_by_collection is None
    assert len(current.rows) > len(offline.rows)
    assert max(r["series_init_idc_version"] for r in current.rows) > 14
    assert {r["series_uid"] for r in offline.rows} <= {r["series_uid"] for r in current.rows}
    with pytest.raises(ValueError, match="upgrade idc-index-data"):
        select_offline(idc_version=index_release() + 1)
    with pytest.raises(ValueError, match="release number"):
        select_offline(idc_version="v14")


def test_retired_series_explain_the_missing_cmb_collections(offline):
    # CMB collections of release 14 were replaced at release 19 under new UIDs: the paper has them,
    # the current index cannot (its series are first served after 14), and the report says why.
    assert offline.retired_by_collection["cmb_crc"] > 251
    table = {
        t["collection"]: t
        for t in compare_with_paper(offline.rows, retired_by_collection=offline.retired_by_collection)
    }
    assert table["cmb_crc"]["our_scans"] == 0 and table["cmb_crc"]["paper_scans"] == 251
    assert table["cmb_crc"]["retired_series"] >= 251


def test_optional_ct_and_geometry_indices_apply_the_missing_criteria(offline, tmp_path):
    uids = [r["series_uid"] for r in offline.rows[:5]]
    con = duckdb.connect()
    ct = tmp_path / "ct_index.parquet"
    con.execute(
        f"""COPY (SELECT * FROM (VALUES
              (?, ['ORIGINAL','PRIMARY','AXIAL'], 2.5),
              (?, ['ORIGINAL','PRIMARY','AXIAL'], 0.625),
              (?, ['ORIGINAL','PRIMARY','LOCALIZER'], 2.0),
              (?, NULL, 5.0),
              (?, ['ORIGINAL','PRIMARY','AXIAL'], 5.5)) t(SeriesInstanceUID, ImageType, SliceThickness))
            TO '{ct}' (FORMAT parquet)""",
        uids,
    )
    geo = tmp_path / "volume_geometry_index.parquet"
    con.execute(
        f"""COPY (SELECT * FROM (VALUES (?, true), (?, true), (?, true), (?, false), (?, true))
              t(SeriesInstanceUID, unique_slice_positions)) TO '{geo}' (FORMAT parquet)""",
        uids,
    )
    # Thickness 0.625 and 5.5 and the localizer go; a missing ImageType stays, as in S1; series absent
    # from ct_index go (their thickness is unknown).
    sel = select_offline(ct_index=ct)
    assert [r["series_uid"] for r in sel.rows] == [uids[0], uids[3]]
    assert sel.criteria["slice_thickness_1_5mm"]["status"] == APPROXIMATED
    assert sel.criteria["no_localizer"]["status"] == APPROXIMATED
    assert sel.criteria["one_instance_per_position"]["status"] == NOT_APPLIED

    both = select_offline(ct_index=ct, volume_geometry_index=geo)
    assert [r["series_uid"] for r in both.rows] == [uids[0]]
    assert {v["status"] for v in both.criteria.values()} == {APPLIED, APPROXIMATED}

    with pytest.raises(ValueError, match="is not the ct_index"):
        select_offline(ct_index=geo)
    with pytest.raises(FileNotFoundError, match="ct_index not found"):
        select_offline(ct_index=tmp_path / "absent.parquet")
    with pytest.raises(ValueError, match="offline back end"):
        build_manifest(backend="bigquery", output_dir=tmp_path / "o", ct_index=ct)
    with pytest.raises(ValueError, match="bigquery back end"):
        build_manifest(backend="offline", output_dir=tmp_path / "o", metadata_idc_version=18)
    assert not (tmp_path / "o").exists()
