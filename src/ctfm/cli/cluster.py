"""``ctfm cluster``: argparse over :func:`ctfm.analysis.clustering.cluster`."""

from __future__ import annotations

from ctfm.analysis import clustering as analysis

DESCRIPTION = analysis.__doc__
EXAMPLES = """  ctfm cluster --embeddings organ_embeddings.npz --labels organ_labels.csv --output-dir tsne/
  ctfm cluster --embeddings embeddings/ --labels labels.csv --label-column organ --perplexity 10 30 100 --output-dir tsne/
"""


def add_arguments(parser) -> None:
    parser.add_argument("--embeddings", required=True, help="ctfm embed folder or .npz with 'embeddings' and 'ids'")
    parser.add_argument("--labels", required=True, help="CSV with an id column and the label column")
    parser.add_argument("--id-column", default="scan_id")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--perplexity", nargs="+", type=float, default=list(analysis.PERPLEXITIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True, help="new folder for tsne_perplexity_<p>.png and the 2-D points")


def run(args) -> int:
    pngs = analysis.cluster(embeddings=args.embeddings, labels=args.labels, output_dir=args.output_dir,
                            id_column=args.id_column, label_column=args.label_column, perplexities=args.perplexity,
                            seed=args.seed)
    for png in pngs:
        print(f"t-SNE: {png}")
    return 0
