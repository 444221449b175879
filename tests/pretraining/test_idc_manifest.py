"""`ctfm idc-manifest`: the manifest files, the folder layout and the command's contract."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from ctfm.cli import idc_manifest as cli
from ctfm.pretraining.idc import build
from ctfm.pretraining.idc.criteria import CRITERIA, Selection
from ctfm.pretraining.idc.layout import series_folder
from ctfm.pretraining.idc.manifest import MANIFEST_COLUMNS, manifest_to_series_folders
from ctfm.pretraining.idc.table_s5 import COMPARISON_COLUMNS
from idc_helpers import PAPER_NLST, PAPER_TOTAL, parse_cli, read_csv


def test_cli_writes_the_manifests_and_the_s5_table(offline, tmp_path, capsys):
    out, dl = tmp_path / "out", tmp_path / "dicom data"
    assert cli.run(parse_cli(["--output-dir", str(out), "--download-dir", str(dl)])) == 0
    printed = capsys.readouterr().out
    for name in ("slice_thickness_1_5mm", "one_instance_per_position", "no_localizer"):
        assert f"NOT APPLIED: {name}" in printed
    assert "s5cmd --no-sign-request --endpoint-url https://s3.amazonaws.com run" in printed

    manifest = read_csv(out / "manifest.csv")
    assert list(manifest[0]) == list(MANIFEST_COLUMNS)
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
    folders = manifest_to_series_folders(out / "manifest.csv")
    assert folders[0] == Path(manifest[0]["local_path"]) and len(folders) == len(manifest)
    # Data moved elsewhere: the same layout, rebuilt under the new root (a few rows suffice).
    few = tmp_path / "few.csv"
    with open(out / "manifest.csv") as f:
        few.write_text("".join(f.readline() for _ in range(6)))
    moved = manifest_to_series_folders(few, download_root=tmp_path / "elsewhere")
    assert moved == [tmp_path.resolve() / "elsewhere" / Path(r["local_path"]).relative_to(root) for r in manifest[:5]]

    table = read_csv(out / "table_s5_comparison.csv")
    assert list(table[0]) == list(COMPARISON_COLUMNS)
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
    assert report["criteria"]["no_localizer"]["paper_sql"] == CRITERIA["no_localizer"]


def test_existing_outputs_are_never_overwritten_silently(offline, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.csv").write_text("mine\n")
    small = Selection(
        rows=offline.rows[:7],
        backend="offline",
        idc_version=14,
        criteria=offline.criteria,
        source="test",
        query_seconds=0.0,
        retired_by_collection={},
    )
    monkeypatch.setattr(build, "select_offline", lambda **kw: small)

    assert cli.run(parse_cli(["--output-dir", str(out)])) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "manifest.csv").read_text() == "mine\n"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv"]  # nothing else was written either

    assert cli.run(parse_cli(["--output-dir", str(out), "--overwrite"])) == 0
    assert len(read_csv(out / "manifest.csv")) == 7
    assert not list(out.glob(".*.tmp*"))
    assert not list(out.glob(".*"))  # no temporary file of an atomic write is left behind


def test_series_folder_layout_and_unsafe_names(tmp_path):
    row = {"collection": "nlst", "patient_id": "A/B C", "study_uid": "1.2", "series_uid": "1.2.3", "modality": "CT"}
    assert series_folder(tmp_path, row) == tmp_path.resolve() / "nlst" / "A_B_C" / "1.2" / "CT_1.2.3"
    with pytest.raises(ValueError, match="cannot name a folder"):
        series_folder(tmp_path, {**row, "patient_id": ".."})
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        manifest_to_series_folders(tmp_path / "none.csv")
    bare = tmp_path / "bare.csv"
    bare.write_text("series_uid,collection,patient_id,study_uid\n1.2.3,nlst,P,1.2\n")
    with pytest.raises(ValueError, match="no local_path column"):
        manifest_to_series_folders(bare)
    assert manifest_to_series_folders(bare, download_root=tmp_path) == [tmp_path.resolve() / "nlst/P/1.2/CT_1.2.3"]


def test_cli_module_contract():
    assert cli.DESCRIPTION.strip() and "S1" in cli.DESCRIPTION
    examples = [line.strip() for line in cli.EXAMPLES.strip().splitlines()]
    assert len(examples) == 2
    for line in examples:
        argv = shlex.split(line)
        assert argv[:2] == ["ctfm", "idc-manifest"]
        args = parse_cli(argv[2:])  # each example parses with the module's own flags
        assert args.backend in ("offline", "bigquery")
    assert parse_cli([]).idc_version == "14"
    with pytest.raises(ValueError, match="--output-dir is required"):
        cli.run(parse_cli([]))
