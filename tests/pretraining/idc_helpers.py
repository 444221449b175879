"""What the IDC selection tests share: the paper's numbers and S1 lines, and small readers."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ctfm.cli import idc_manifest as cli

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


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """``ctfm idc-manifest`` arguments, parsed with the command's own flags."""
    parser = argparse.ArgumentParser(prog="ctfm idc-manifest")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))
