"""`ctfm idc-manifest`: CT-FM's pretraining selection from the Imaging Data Commons.

The offline back end runs on the real index that `idc-index-data` ships (IDC release 25); the BigQuery
back end is checked through its generated SQL and, with the client stubbed, through its post-processing.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from ctfm.cli import idc_manifest as im

PAPER_NLST = 128037
PAPER_TOTAL = 148394
# The WHERE clauses of supplement S1, verbatim: the generated SQL must contain each line.
PAPER_S1_LINES = (
    'Modality = "CT" and',
    'access = "Public"',
    "COUNT(DISTINCT(SOPInstanceUID)) AS num_instances,",
    'COUNT(DISTINCT(ARRAY_TO_STRING(ImagePositionPatient, "/"))) AS position_count,',
    "MAX(SAFE_CAST(SliceThickness AS float64)) AS max_SliceThickness,",
    "MIN(SAFE_CAST(SliceThickness AS float64)) AS min_SliceThickness,",
    'STRING_AGG(DISTINCT(SAFE_CAST("LOCALIZER" IN UNNEST(ImageType) AS string)), "") AS',
    "idc_instances_per_series.min_SliceThickness >= 1",
    "AND idc_instances_per_series.max_SliceThickness <= 5",
    "AND idc_instances_per_series.num_instances > 50",
    "AND idc_instances_per_series.num_instances/idc_instances_per_series.position_count = 1",
    'AND has_localizer = "false"',
)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ctfm idc-manifest")
    im.add_arguments(parser)
    return parser.parse_args(argv)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


@pytest.fixture(scope="module")
def offline() -> im.Selection:
    return im.select_offline(idc_version=14)


@pytest.fixture(scope="module")
def index_parquet() -> str:
    return str(im.index_paths()["idc_index"])


# ------------------------------------------------------------------------------------------ offline


def test_offline_criteria_it_claims_hold_on_every_row(offline, index_parquet):
    status = {k: v["status"] for k, v in offline.criteria.items()}
    assert set(status) == set(im.CRITERIA)
    applied = {k for k, v in status.items() if v == im.APPLIED}
    assert applied == {"modality_ct", "public", "more_than_50_instances", "in_release"}
    # What the shipped index cannot apply is said, by name, with the reason.
    assert {k for k, v in status.items() if v == im.NOT_APPLIED} == {
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
    current = im.select_offline(idc_version="current")
    assert current.idc_version is None and current.retired_by_collection is None
    assert len(current.rows) > len(offline.rows)
    assert max(r["series_init_idc_version"] for r in current.rows) > 14
    assert {r["series_uid"] for r in offline.rows} <= {r["series_uid"] for r in current.rows}
    with pytest.raises(ValueError, match="upgrade idc-index-data"):
        im.select_offline(idc_version=im.index_release() + 1)
    with pytest.raises(ValueError, match="release number"):
        im.select_offline(idc_version="v14")


def test_retired_series_explain_the_missing_cmb_collections(offline):
    # CMB collections of release 14 were replaced at release 19 under new UIDs: the paper has them,
    # the current index cannot (its series are first served after 14), and the report says why.
    assert offline.retired_by_collection["cmb_crc"] > 251
    table = {
        t["collection"]: t
        for t in im.compare_with_paper(offline.rows, retired_by_collection=offline.retired_by_collection)
    }
    assert table["cmb_crc"]["our_scans"] == 0 and table["cmb_crc"]["paper_scans"] == 251
    assert table["cmb_crc"]["retired_series"] >= 251


# -------------------------------------------------------------------------------------- Table S5


def test_paper_table_s5_transcription_matches_the_paper_and_idc(index_parquet):
    paper = im.load_paper_table_s5()
    assert len(paper) == 69
    assert sum(p["scans"] for p in paper) == PAPER_TOTAL
    assert paper[0]["collection_id"] == "nlst" and paper[0]["scans"] == PAPER_NLST
    ids = [p["collection_id"] for p in paper]
    assert len(set(ids)) == 69
    assert [p["scans"] for p in paper] == sorted((p["scans"] for p in paper), reverse=True)
    # Every collection of the paper is an IDC collection_id (the three misprints are mapped).
    known = {
        c
        for (c,) in duckdb.connect()
        .execute("SELECT DISTINCT collection_id FROM read_parquet(?)", [index_parquet])
        .fetchall()
    }
    assert set(ids) <= known
    renamed = {
        p["paper_collection_id"]: p["collection_id"] for p in paper if p["paper_collection_id"] != p["collection_id"]
    }
    assert renamed == {
        "acrinflt_breast": "acrin_flt_breast",
        "cptac_lsc": "cptac_lscc",
        "nsclc_radiomics_interobs erver1": "nsclc_radiomics_interobserver1",
    }


def test_comparison_table_counts_and_differences():
    rows = [{"collection": c} for c in ["nlst"] * 5 + ["phantom_fda"] * 2 + ["not_in_paper"]]
    paper = [
        {"collection_id": "nlst", "scans": 4},
        {"collection_id": "phantom_fda", "scans": 3},
        {"collection_id": "lung_phantom", "scans": 1},
    ]
    table = im.compare_with_paper(rows, paper=paper, retired_by_collection={"lung_phantom": 2})
    got = {
        t["collection"]: (t["paper_scans"], t["our_scans"], t["difference"], t["in_paper"], t["retired_series"])
        for t in table
    }
    assert got == {
        "nlst": (4, 5, 1, "yes", 0),
        "phantom_fda": (3, 2, -1, "yes", 0),
        "lung_phantom": (1, 0, -1, "yes", 2),
        "not_in_paper": (0, 1, 1, "no", 0),
        "TOTAL": (8, 8, 0, "", 2),
    }
    assert [t["collection"] for t in table] == ["nlst", "phantom_fda", "lung_phantom", "not_in_paper", "TOTAL"]
    text = im.format_comparison(table)
    assert "TOTAL" in text.splitlines()[-1] and "+1" in text.splitlines()[2]


# --------------------------------------------------------------------------------------------- SQL


def test_generated_sql_states_every_criterion_of_the_paper():
    sql = im.render_bigquery_sql()  # the paper's releases: select from 14, read columns from 18
    assert "`bigquery-public-data.idc_v14.dicom_all`" in sql
    assert "`bigquery-public-data.idc_v18.dicom_all` AS dicom_all" in sql
    assert "{{" not in sql and "}}" not in sql
    flat = [" ".join(line.split()) for line in sql.splitlines()]
    for line in PAPER_S1_LINES:
        assert any(line in f for f in flat), line
    # Only an output column was added to the paper's text; the selection is untouched.
    assert sql.count("added by ctfm") == 1

    assert im.render_bigquery_sql(idc_version=20).count("idc_v20.dicom_all") == 2
    assert im.render_bigquery_sql(idc_version=20, metadata_idc_version=22).count("idc_v22.dicom_all") == 1
    assert im.render_bigquery_sql(idc_version="current").count("idc_current.dicom_all") == 2
    with pytest.raises(ValueError, match="older than"):
        im.render_bigquery_sql(idc_version=18, metadata_idc_version=14)


def test_sql_template_without_placeholder_is_refused(tmp_path):
    bad = tmp_path / "q.sql"
    bad.write_text("SELECT 1 FROM `bigquery-public-data.idc_v14.dicom_all` -- {{METADATA_IDC_DATASET}}")
    with pytest.raises(ValueError, match=r"\{\{IDC_DATASET\}\}"):
        im.render_bigquery_sql(template_path=bad)


def test_print_sql_prints_the_query_and_writes_nothing(tmp_path, capsys):
    assert im.run(_parse(["--backend", "bigquery", "--print-sql", "--output-dir", str(tmp_path / "o")])) == 0
    assert capsys.readouterr().out == im.render_bigquery_sql()
    assert not (tmp_path / "o").exists()


def test_bigquery_without_client_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.bigquery", None)  # import fails, as when not installed
    monkeypatch.setitem(sys.modules, "google.cloud", None)
    with pytest.raises(RuntimeError) as err:
        im.run_bigquery("SELECT 1")
    assert "pip install google-cloud-bigquery" in str(err.value)
    assert "gcloud auth application-default login" in str(err.value)
    with pytest.raises(RuntimeError, match="google-cloud-bigquery"):
        im.run(_parse(["--backend", "bigquery", "--output-dir", str(tmp_path / "o")]))
    assert not (tmp_path / "o").exists()


def test_bigquery_backend_end_to_end_with_stubbed_client(offline, tmp_path, monkeypatch):
    con = duckdb.connect()
    retired_uid = con.execute(
        "SELECT SeriesInstanceUID FROM read_parquet(?) WHERE collection_id='cmb_crc' AND Modality='CT' "
        "AND max_idc_version = 18 LIMIT 1",
        [str(im.index_paths()["prior_versions_index"])],
    ).fetchone()[0]
    current = offline.rows[:3]
    fake = [
        {
            "SeriesInstanceUID": r["series_uid"],
            "collection_id": r["collection"],
            "PatientID": r["patient_id"],
            "StudyInstanceUID": r["study_uid"],
            "num_instances": r["instance_count"],
            "idc_url": "https://x",
        }
        for r in current
    ]
    fake.append(
        {
            "SeriesInstanceUID": retired_uid,
            "collection_id": "cmb_crc",
            "PatientID": "P1",
            "StudyInstanceUID": "1.2.9",
            "num_instances": 80,
            "idc_url": "https://x",
        }
    )
    fake.append(
        {
            "SeriesInstanceUID": "1.2.3.4",
            "collection_id": "nlst",
            "PatientID": "P2",
            "StudyInstanceUID": "1.2.5",
            "num_instances": 60,
            "idc_url": "https://x",
        }
    )
    seen = {}

    def fake_run(sql, *, project=None):
        seen.update(sql=sql, project=project)
        return fake

    monkeypatch.setattr(im, "run_bigquery", fake_run)
    out = tmp_path / "bq"
    assert im.run(_parse(["--backend", "bigquery", "--output-dir", str(out), "--gcp-project", "my-billing"])) == 0
    assert seen == {"sql": im.render_bigquery_sql(), "project": "my-billing"}
    assert (out / "selection.sql").read_text() == seen["sql"]
    manifest = {r["series_uid"]: r for r in _read_csv(out / "manifest.csv")}
    assert len(manifest) == 5
    for r in current:  # URL and description from the current index
        assert manifest[r["series_uid"]]["s3_url"] == r["s3_url"]
        assert manifest[r["series_uid"]]["series_description"] == r["series_description"]
    assert manifest[retired_uid]["s3_url"].startswith("s3://")  # from the prior-versions index
    assert manifest["1.2.3.4"]["s3_url"] == ""
    lines = [x for x in (out / "s5cmd_manifest.txt").read_text().splitlines() if not x.startswith("#")]
    assert len(lines) == 4  # the series found in neither index cannot be downloaded
    report = json.loads((out / "selection.json").read_text())
    assert report["not_applied"] == []
    assert any("neither idc-index table" in n for n in report["notes"])
    assert any("without an s3_url" in n for n in report["notes"])


# -------------------------------------------------------------------------------------- CLI, files


def test_cli_writes_the_manifests_and_the_s5_table(offline, tmp_path, capsys):
    out, dl = tmp_path / "out", tmp_path / "dicom data"
    assert im.run(_parse(["--output-dir", str(out), "--download-dir", str(dl)])) == 0
    printed = capsys.readouterr().out
    for name in ("slice_thickness_1_5mm", "one_instance_per_position", "no_localizer"):
        assert f"NOT APPLIED: {name}" in printed
    assert "s5cmd --no-sign-request --endpoint-url https://s3.amazonaws.com run" in printed

    manifest = _read_csv(out / "manifest.csv")
    assert list(manifest[0]) == list(im.MANIFEST_COLUMNS)
    assert len(manifest) == len(offline.rows)
    assert all(int(r["instance_count"]) > 50 for r in manifest)
    assert [r["series_uid"] for r in manifest] == [r["series_uid"] for r in offline.rows]
    # Descriptions with commas and quotes survive the CSV round trip.
    assert [r["series_description"] for r in manifest] == [r["series_description"] for r in offline.rows]

    # s5cmd: one cp per series, from its bucket URL into its local_path (IDC's default layout).
    # s5cmd skips '#' lines and splits the others as a POSIX shell does (the folder here has a space).
    header, *lines = (out / "s5cmd_manifest.txt").read_text().splitlines()
    assert header.startswith("# ") and "s5cmd --no-sign-request" in header
    assert len(lines) == len(manifest)
    root = str(dl.resolve())
    for line, r in zip(lines[:2000], manifest[:2000]):
        assert shlex.split(line) == ["cp", r["s3_url"], r["local_path"] + "/"]
        assert r["local_path"] == f"{root}/{r['collection']}/{r['patient_id']}/{r['study_uid']}/CT_{r['series_uid']}"

    # The pretraining preparation step reads the series folders from the manifest.
    folders = im.manifest_to_series_folders(out / "manifest.csv")
    assert folders[0] == Path(manifest[0]["local_path"]) and len(folders) == len(manifest)
    # Data moved elsewhere: the same layout, rebuilt under the new root (a few rows suffice).
    few = tmp_path / "few.csv"
    with open(out / "manifest.csv") as f:
        few.write_text("".join(f.readline() for _ in range(6)))
    moved = im.manifest_to_series_folders(few, download_root=tmp_path / "elsewhere")
    assert moved == [tmp_path.resolve() / "elsewhere" / Path(r["local_path"]).relative_to(root) for r in manifest[:5]]

    table = _read_csv(out / "table_s5_comparison.csv")
    assert list(table[0]) == list(im.COMPARISON_COLUMNS)
    by_name = {t["collection"]: t for t in table}
    assert table[0]["collection"] == "nlst" and table[-1]["collection"] == "TOTAL"
    assert int(by_name["TOTAL"]["paper_scans"]) == PAPER_TOTAL
    assert int(by_name["TOTAL"]["our_scans"]) == len(manifest)
    assert sum(1 for t in table if t["in_paper"] == "yes") == 69
    nlst = by_name["nlst"]
    assert int(nlst["paper_scans"]) == PAPER_NLST
    assert int(nlst["difference"]) == int(nlst["our_scans"]) - PAPER_NLST

    report = json.loads((out / "selection.json").read_text())
    assert report["counts"]["series"] == len(manifest)
    assert report["counts"]["largest_collection"][0] == "nlst"
    assert set(report["not_applied"]) == {"slice_thickness_1_5mm", "one_instance_per_position", "no_localizer"}
    assert report["criteria"]["no_localizer"]["paper_sql"] == im.CRITERIA["no_localizer"]


def test_existing_outputs_are_never_overwritten_silently(offline, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_text("mine\n")
    small = im.Selection(
        rows=offline.rows[:7],
        backend="offline",
        idc_version=14,
        criteria=offline.criteria,
        source="test",
        query_seconds=0.0,
        retired_by_collection={},
    )
    monkeypatch.setattr(im, "select_offline", lambda **kw: small)

    assert im.run(_parse(["--output-dir", str(out)])) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "manifest.csv").read_text() == "mine\n"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv"]  # nothing else was written either

    assert im.run(_parse(["--output-dir", str(out), "--overwrite"])) == 0
    assert len(_read_csv(out / "manifest.csv")) == 7
    assert not list(out.glob(".*.tmp*"))


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
    sel = im.select_offline(ct_index=ct)
    assert [r["series_uid"] for r in sel.rows] == [uids[0], uids[3]]
    assert sel.criteria["slice_thickness_1_5mm"]["status"] == im.APPROXIMATED
    assert sel.criteria["no_localizer"]["status"] == im.APPROXIMATED
    assert sel.criteria["one_instance_per_position"]["status"] == im.NOT_APPLIED

    both = im.select_offline(ct_index=ct, volume_geometry_index=geo)
    assert [r["series_uid"] for r in both.rows] == [uids[0]]
    assert {v["status"] for v in both.criteria.values()} == {im.APPLIED, im.APPROXIMATED}

    with pytest.raises(ValueError, match="is not the ct_index"):
        im.select_offline(ct_index=geo)
    with pytest.raises(FileNotFoundError, match="ct_index not found"):
        im.select_offline(ct_index=tmp_path / "absent.parquet")
    with pytest.raises(ValueError, match="offline back end"):
        im.build_manifest(backend="bigquery", output_dir=tmp_path / "o", ct_index=ct)
    with pytest.raises(ValueError, match="bigquery back end"):
        im.build_manifest(backend="offline", output_dir=tmp_path / "o", metadata_idc_version=18)
    assert not (tmp_path / "o").exists()


def test_series_folder_layout_and_unsafe_names(tmp_path):
    row = {"collection": "nlst", "patient_id": "A/B C", "study_uid": "1.2", "series_uid": "1.2.3", "modality": "CT"}
    assert im.series_folder(tmp_path, row) == tmp_path.resolve() / "nlst" / "A_B_C" / "1.2" / "CT_1.2.3"
    with pytest.raises(ValueError, match="cannot name a folder"):
        im.series_folder(tmp_path, {**row, "patient_id": ".."})
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        im.manifest_to_series_folders(tmp_path / "none.csv")
    bare = tmp_path / "bare.csv"
    bare.write_text("series_uid,collection,patient_id,study_uid\n1.2.3,nlst,P,1.2\n")
    with pytest.raises(ValueError, match="no local_path column"):
        im.manifest_to_series_folders(bare)
    assert im.manifest_to_series_folders(bare, download_root=tmp_path) == [tmp_path.resolve() / "nlst/P/1.2/CT_1.2.3"]


def test_cli_module_contract():
    assert im.DESCRIPTION.strip() and "S1" in im.DESCRIPTION
    examples = [line.strip() for line in im.EXAMPLES.strip().splitlines()]
    assert len(examples) == 2
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["ctfm", "idc-manifest"]
        args = _parse(argv[2:])  # each example parses with the module's own flags
        assert args.backend in ("offline", "bigquery")
    assert _parse([]).idc_version == "14"
    with pytest.raises(ValueError, match="--output-dir is required"):
        im.run(_parse([]))
