"""`ctfm idc-manifest`: the command line of :mod:`ctfm.pretraining.idc`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctfm.pretraining.idc import bigquery, build, criteria, table_s5

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
        default=str(criteria.PAPER_IDC_VERSION),
        help=f"IDC release to select from, a number or 'current' (default {criteria.PAPER_IDC_VERSION}, the paper's)",
    )
    parser.add_argument(
        "--metadata-idc-version",
        default=None,
        help=f"bigquery: release the output columns are read from (default {criteria.PAPER_METADATA_IDC_VERSION} "
        f"for release {criteria.PAPER_IDC_VERSION}, as in the paper; otherwise the same as --idc-version)",
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
        print(bigquery.render_bigquery_sql(idc_version=args.idc_version, metadata_idc_version=args.metadata_idc_version), end="")
        return 0
    if args.output_dir is None:
        raise ValueError("--output-dir is required (or pass --print-sql)")
    try:
        report = build.build_manifest(
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
    print(table_s5.format_comparison(report["comparison"]))
    print()
    print(
        f"{report['backend']} back end, IDC release {report['idc_version']}: {counts['series']} series, "
        f"{counts['studies']} studies, {counts['patients']} patients, {counts['collections']} collections, "
        f"{counts['series_size_gb']} GB (paper: {criteria.PAPER_TOTALS['series']} series, {criteria.PAPER_TOTALS['studies']} studies, "
        f"{criteria.PAPER_TOTALS['patients']} patients); query {report['query_seconds']} s"
    )
    for name in report["not_applied"]:
        c = report["criteria"][name]
        print(f"{c['status'].upper()}: {name} ({c['paper_sql']}): {c['how']}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"wrote {', '.join(report['outputs'].values())}")
    print(f"download: {report['download_command']}")
    return 0
