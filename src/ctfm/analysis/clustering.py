"""Anatomical clustering: t-SNE of embeddings at several perplexities, one PNG per perplexity coloured by label (Figure 6a).

The paper's method (Methods, "Semantic Concept Clustering"): project the 512-d embeddings to 2-D with
t-SNE (scikit-learn) at several perplexities and colour each point by its label (Extended Data
Figure 5 compares perplexities). Embeddings and labels as for :mod:`ctfm.analysis.retrieval` (an embed folder
or .npz, and a CSV); perplexities at or above the number of points are skipped with a note.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PERPLEXITIES = (5, 30, 50, 100)
FIGSIZE, DPI = (8, 7), 100  # every PNG is 800 x 700 pixels


def tsne_plot(points: np.ndarray, labels, path, title: str) -> Path:
    """Scatter of 2-D points coloured by label, with axes and a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=FIGSIZE)
    names = sorted(set(labels), key=str)
    cmap = plt.get_cmap("tab20", max(len(names), 1))
    labels = np.asarray(labels)
    for i, name in enumerate(names):
        sel = labels == name
        ax.scatter(points[sel, 0], points[sel, 1], s=14, color=cmap(i % 20), label=str(name))
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(title)
    ax.legend(title="label", fontsize=8, loc="best", markerscale=1.5)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def cluster(embeddings, labels, output_dir, id_column="scan_id", label_column="label", perplexities=PERPLEXITIES,
            seed=0) -> list[Path]:
    """t-SNE per perplexity; writes ``tsne_perplexity_<p>.png`` and ``tsne_points.npz``; returns the PNG paths."""
    from sklearn.manifold import TSNE
    from tqdm import tqdm

    from ctfm.analysis.retrieval import read_embeddings, read_label_table
    from ctfm.io import new_output_dir, write_text_atomic

    ids, emb = read_embeddings(embeddings)
    table = read_label_table(labels, id_column, [label_column])
    missing = [i for i in ids if i not in table]
    if missing:
        raise ValueError(f"{labels} has no row for {len(missing)} id(s), e.g. {missing[:5]}.")
    lab = [table[i][label_column] for i in ids]
    usable = [p for p in perplexities if p < len(ids)]
    if not usable:
        raise ValueError(f"every perplexity {list(perplexities)} is >= the {len(ids)} points; t-SNE needs perplexity < points.")
    out = new_output_dir(output_dir)
    pngs, points = [], {}
    for p in tqdm(usable, desc="t-SNE", unit="perplexity"):
        xy = TSNE(n_components=2, perplexity=p, random_state=seed, init="pca").fit_transform(emb)
        points[f"perplexity_{p:g}"] = xy
        pngs.append(tsne_plot(xy, lab, out / f"tsne_perplexity_{p:g}.png",
                              title=f"t-SNE of {len(ids)} CT-FM embeddings, perplexity {p:g}"))
    np.savez(out / "tsne_points.npz", ids=np.array(ids), labels=np.array(lab), **points)
    skipped = [p for p in perplexities if p not in usable]
    write_text_atomic(out / "cluster.json", json.dumps({"perplexities": usable, "skipped_perplexities": skipped,
                                                        "n_points": len(ids)}, indent=2))
    return pngs
