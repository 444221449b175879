"""``ctfm retrieve``: argparse over :func:`ctfm.analysis.retrieval.retrieve`."""

from __future__ import annotations

from ctfm.analysis import retrieval as analysis

DESCRIPTION = analysis.__doc__
EXAMPLES = """  ctfm retrieve --corpus train_embeddings/ --queries test_embeddings/ --labels 3d_mir_labels.csv --label-column cancer_flag lesion_group --output-dir retrieval/
  ctfm retrieve --organmnist organmnist3d_64.npz --weights ct_fm_feature_extractor/ --metric l2 --output-dir organmnist_retrieval/
"""


def add_arguments(parser) -> None:
    parser.add_argument("--corpus", help="embed folder or .npz of the corpus (gallery)")
    parser.add_argument("--queries", help="embed folder or .npz of the queries")
    parser.add_argument("--labels", help="CSV with an id column and label columns (3D-MIR: cancer_flag, lesion_group)")
    parser.add_argument("--id-column", default="scan_id", help="column of --labels that holds the scan ids")
    parser.add_argument("--label-column", nargs="+", default=["label"], help="label columns to score")
    parser.add_argument("--organmnist", help="MedMNIST OrganMNIST3D .npz: embed it, train = corpus, val+test = queries")
    parser.add_argument("--weights", help="CT-FM weights (with --organmnist)")
    parser.add_argument("--organmnist-axes", nargs=4, type=int, default=list(analysis.ORGANMNIST_AXES),
                        metavar=("N", "A", "B", "C"),
                        help="transpose of the (N, D, H, W) volumes before embedding; the authors' 0 3 2 1 by "
                        "default, 0 1 2 3 keeps MedMNIST's order")
    parser.add_argument("--k", nargs="+", type=int, default=list(analysis.KS), help="cut-offs")
    parser.add_argument("--metric", choices=("cosine", "l2"), default=None,
                        help="default: l2 with --organmnist (the authors' notebook), cosine otherwise (the paper's 3D-MIR)")
    parser.add_argument("--index", choices=("exact", "ivf"), default="exact", help="exact or approximate (faiss IVF) search")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF lists visited per query")
    parser.add_argument("--device", default="cpu", help="torch device for --organmnist embedding")
    parser.add_argument("--output-dir", required=True, help="new folder for metrics.json and neighbours.csv")


def run(args) -> int:
    result = analysis.retrieve(
        output_dir=args.output_dir, corpus=args.corpus, queries=args.queries, labels=args.labels,
        id_column=args.id_column, label_columns=args.label_column, organmnist=args.organmnist, weights=args.weights,
        organmnist_axes=args.organmnist_axes,
        ks=args.k, metric=args.metric, index=args.index, nprobe=args.nprobe, device=args.device)
    for name, values in result["metrics"].items():
        print(name + ": " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    print(f"metrics and neighbours: {args.output_dir}")
    return 0
