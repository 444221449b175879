"""The paper's Table S5 as shipped, and the comparison with it."""

from __future__ import annotations

import duckdb

from ctfm.pretraining.idc.table_s5 import compare_with_paper, format_comparison, load_paper_table_s5
from idc_helpers import PAPER_NLST, PAPER_TOTAL


def test_paper_table_s5_transcription_matches_the_paper_and_idc(index_parquet):
    paper = load_paper_table_s5()
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
    table = compare_with_paper(rows, paper=paper, retired_by_collection={"lung_phantom": 2})
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
    text = format_comparison(table)
    assert "TOTAL" in text.splitlines()[-1] and "+1" in text.splitlines()[2]
