"""`ctfm fetch-sample-data`: the real sample CT from the package registries (pinned, sha256-checked)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Fetch the real CT volumes that ship inside registry packages (TotalSegmentator 2.18.0 sdist and
wheel, slicerio 1.4.0 wheel) with `pip download`, check every sha256 against the pins, and write:
abdomen_ct.nii.gz + abdomen_ct_label.nii.gz (TotalSegmentator v2 ids), abdomen_dicom/ (a real
20-file DICOM series) + abdomen_dicom_label.nii.gz, chest_ct.nrrd (LPS) + chest_ct.seg.nrrd,
brain_ct_template.nii.gz and a decathlon-style dataset.json. Archives are cached in
<cache>/downloads (cache: --cache-dir, else $CTFM_CACHE, else ~/.cache/ctfm); a second run
downloads nothing. Offline: place the archives named in the error into <cache>/downloads."""

EXAMPLES = """\
  ctfm fetch-sample-data
  ctfm fetch-sample-data --cache-dir ./ctfm_cache --output-dir ./sample_ct"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir", default=None, help="cache folder (default: $CTFM_CACHE, else ~/.cache/ctfm)"
    )
    parser.add_argument(
        "--output-dir", default=None, help="where the volumes and dataset.json go (default: <cache>/sample_ct)"
    )


def run(args: argparse.Namespace) -> int:
    from ctfm.data.sample_ct import fetch_sample_ct

    sample = fetch_sample_ct(
        cache_dir=args.cache_dir,
        output_dir=args.output_dir,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    for name, path in sample.paths().items():
        print(f"{name}: {path}")
    return 0
