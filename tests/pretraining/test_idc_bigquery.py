"""The BigQuery back end: its generated SQL and, with the client stubbed, its post-processing."""

from __future__ import annotations

import json
import sys

import duckdb
import pytest

from ctfm.cli import idc_manifest as cli
from ctfm.pretraining.idc import bigquery
from ctfm.pretraining.idc.bigquery import render_bigquery_sql, run_bigquery
from ctfm.pretraining.idc.offline import index_paths
from idc_helpers import PAPER_S1_LINES, parse_cli, read_csv


def test_generated_sql_states_every_criterion_of_the_paper():
    sql = render_bigquery_sql()  # the paper's releases: select from 14, read columns from 18
    assert "`bigquery-public-data.idc_v14.dicom_all`" in sql
    assert "`bigquery-public-data.idc_v18.dicom_all` AS dicom_all" in sql
    assert "{{" not in sql and "}}" not in sql
    flat = [" ".join(line.split()) for line in sql.splitlines()]
    for line in PAPER_S1_LINES:
        assert any(line in f for f in flat), line
    # Only an output column was added to the paper's text; the selection is untouched.
    assert sql.count("added by ctfm") == 1

    assert render_bigquery_sql(idc_version=20).count("idc_v20.dicom_all") == 2
    assert render_bigquery_sql(idc_version=20, metadata_idc_version=22).count("idc_v22.dicom_all") == 1
    assert render_bigquery_sql(idc_version="current").count("idc_current.dicom_all") == 2
    with pytest.raises(ValueError, match="older than"):
        render_bigquery_sql(idc_version=18, metadata_idc_version=14)


def test_sql_template_without_placeholder_is_refused(tmp_path):
    bad = tmp_path / "q.sql"
    bad.write_text("SELECT 1 FROM `bigquery-public-data.idc_v14.dicom_all` -- {{METADATA_IDC_DATASET}}")
    with pytest.raises(ValueError, match=r"\{\{IDC_DATASET\}\}"):
        render_bigquery_sql(template_path=bad)


def test_print_sql_prints_the_query_and_writes_nothing(tmp_path, capsys):
    assert cli.run(parse_cli(["--backend", "bigquery", "--print-sql", "--output-dir", str(tmp_path / "o")])) == 0
    assert capsys.readouterr().out == render_bigquery_sql()
    assert not (tmp_path / "o").exists()


def test_bigquery_without_client_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.bigquery", None)  # import fails, as when not installed
    monkeypatch.setitem(sys.modules, "google.cloud", None)
    with pytest.raises(RuntimeError) as err:
        run_bigquery("SELECT 1")
    assert "pip install google-cloud-bigquery" in str(err.value)
    assert "gcloud auth application-default login" in str(err.value)
    with pytest.raises(RuntimeError, match="google-cloud-bigquery"):
        cli.run(parse_cli(["--backend", "bigquery", "--output-dir", str(tmp_path / "o")]))
    assert not (tmp_path / "o").exists()


def test_bigquery_backend_end_to_end_with_stubbed_client(offline, tmp_path, monkeypatch):
    con = duckdb.connect()
    retired_uid = con.execute(
        "SELECT SeriesInstanceUID FROM read_parquet(?) WHERE collection_id='cmb_crc' AND Modality='CT' "
        "AND max_idc_version = 18 LIMIT 1",
        [str(index_paths()["prior_versions_index"])],
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

    monkeypatch.setattr(bigquery, "run_bigquery", fake_run)
    out = tmp_path / "bq"
    assert cli.run(parse_cli(["--backend", "bigquery", "--output-dir", str(out), "--gcp-project", "my-billing"])) == 0
    assert seen == {"sql": render_bigquery_sql(), "project": "my-billing"}
    assert (out / "selection.sql").read_text() == seen["sql"]
    manifest = {r["series_uid"]: r for r in read_csv(out / "manifest.csv")}
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
