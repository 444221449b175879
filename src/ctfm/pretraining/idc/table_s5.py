"""The paper's Table S5 (CT series per IDC collection), shipped in the package, and the comparison with it."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from ctfm.io import csv_text, refuse_existing, write_text_atomic
from ctfm.registry import resource

PAPER_TABLE_S5_PATH = resource("idc/paper_table_s5.csv")
COMPARISON_COLUMNS = ("collection", "paper_scans", "our_scans", "difference", "in_paper", "retired_series")


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
    refuse_existing([path], overwrite)
    write_text_atomic(path, csv_text(COMPARISON_COLUMNS, table))
    return path
