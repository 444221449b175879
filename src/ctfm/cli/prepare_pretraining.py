"""`ctfm prepare-pretraining`: the command line of :mod:`ctfm.pretraining.prepare`."""

from __future__ import annotations

import json
import os
import sys

from ctfm.pretraining import prepare

DESCRIPTION = prepare.__doc__
EXAMPLES = """  ctfm prepare-pretraining --output-dir cache/ --workers 8 scans/*.nii.gz dicom/series_*/
  ctfm prepare-pretraining --output-dir cache/ --list idc_manifest.csv --shard $SLURM_ARRAY_TASK_ID --num-shards 64
  ctfm prepare-pretraining --output-dir cache/ --merge      # rebuild datalist.json from every shard's manifest
"""


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="*", help="DICOM series folders, NIfTI or NRRD files")
    parser.add_argument("--list", dest="lists", action="append", default=[],
                        help="file listing scans: .txt (one a line), .csv (local_path/path column), or a datalist .json")
    parser.add_argument("--output-dir", required=True, help="the cache folder (the bundle's dataset_dir)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="worker processes")
    parser.add_argument("--shard", type=int, default=0, help="this shard's index, 0..num-shards-1")
    parser.add_argument("--num-shards", type=int, default=1, help="how many shards the list is split into")
    parser.add_argument("--min-slices", type=int, default=prepare.QualityFilters.min_slices_exclusive,
                        help="keep scans with MORE than this many slices (paper: 50)")
    parser.add_argument("--slice-thickness", type=float, nargs=2, metavar=("MIN", "MAX"),
                        default=(prepare.QualityFilters.min_slice_thickness, prepare.QualityFilters.max_slice_thickness),
                        help="keep slice thickness in MIN..MAX mm (paper: 1 5)")
    parser.add_argument("--merge", action="store_true", help="only rebuild datalist.json from all shards' manifests")


def run(args) -> int:
    if args.merge:
        path = prepare.write_cache_datalist(args.output_dir)
        print(f"datalist of {len(json.loads(path.read_text())['training'])} scan(s): {path}")
        return 0
    sources = list(args.inputs)
    for listed in args.lists:
        sources += prepare.read_source_list(listed)
    if not sources:
        raise ValueError("no scans given: pass folders/files or --list FILE")
    filters = prepare.QualityFilters(args.slice_thickness[0], args.slice_thickness[1], args.min_slices)
    result = prepare.prepare_cache(sources=sources, output_dir=args.output_dir, shard=args.shard,
                                   num_shards=args.num_shards, workers=args.workers, filters=filters)
    print(f"done: {result['counts']}; manifest {result['manifest']}; datalist {result['datalist']}")
    for reason, n in sorted(result["dropped_by_reason"].items(), key=lambda kv: -kv[1]):
        print(f"  dropped {n:6d}  {reason}")
    # Scans that failed (not filtered out) are input errors: the last lines name them, and the status says so.
    failed = result["failed"]
    for row in failed[:10]:
        named = row["source"] in row["reason"]  # our errors name the file already
        print(f"failed: {row['reason']}" if named else f"failed: {row['source']}: {row['reason']}", file=sys.stderr)
    if len(failed) > 10:
        print(f"... and {len(failed) - 10} more failed scan(s), listed in {result['manifest']}", file=sys.stderr)
    return 1 if failed else 0
