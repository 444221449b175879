"""Content-based retrieval: top-k search of query embeddings in a corpus, scored the paper's way (Figure 5).

Embeddings come from ``ctfm embed`` folders (``embeddings.csv`` + ``<scan id>.npy``, written by
:func:`ctfm.analysis.embeddings.embed_files`) or ``.npz`` files with ``embeddings`` (N, 512) and
``ids``. Labels come from a CSV (an id column and one column per label, e.g. the 3D-MIR
``cancer_flag`` and ``lesion_group``). With an OrganMNIST3D ``.npz`` (MedMNIST) the volumes are
embedded first, as the authors did (``notebooks/retrieval/organ_mnist.ipynb``): each volume whole,
its axes transposed ``(0, 3, 2, 1)``, train = corpus, val + test = queries, L2 distance.

Metrics per query, then averaged over queries (k = 3, 5, 10 by default); "relevant" means the same
label value:

- ``precision@k``: relevant in the top k / k (the 3D-MIR figures);
- ``hit_rate@k`` (HR@k): 1 when any of the top k is relevant, else 0;
- ``ap@k``: the mean of precision@i over the ranks i <= k that hold a relevant item (0 when none does);
- ``f1@k``: the harmonic mean of AP@k and HR@k, the authors' F1 and the one the paper reports
  (OrganMNIST3D F1@3 = 0.944);
- ``f1_corpus_recall@k``: the textbook variant, the harmonic mean of precision@k and recall@k =
  relevant in the top k / relevant in the whole corpus. Not the paper's: with hundreds of relevant
  items per class it stays near 0 for small k.

Search: ``metric="cosine"`` (the paper's 3D-MIR) or ``"l2"`` (the authors' OrganMNIST3D);
``index="exact"`` (default) or ``"ivf"`` (faiss inverted file, approximate, for millions of
embeddings; ``nprobe`` trades speed for recall).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

KS = (3, 5, 10)
ORGANMNIST_AXES = (0, 3, 2, 1)  # the authors transpose each (N, D, H, W) MedMNIST array this way before embedding
ORGANMNIST_METRIC = "l2"  # and rank by L2 distance (the paper's 3D-MIR search is cosine)


# --- Readers ----------------------------------------------------------------------------------
def read_embeddings(path) -> tuple[list[str], np.ndarray]:
    """``(ids, (N, D) float32)`` from a ``ctfm embed`` folder or an ``.npz`` with ``embeddings`` and ``ids``."""
    path = Path(path)
    if path.is_dir():
        index = path / "embeddings.csv"
        if not index.exists():
            raise FileNotFoundError(f"{path} has no embeddings.csv; give a folder written by `ctfm embed` or an .npz.")
        with open(index) as f:
            rows = list(csv.DictReader(f))
        return [r["scan_id"] for r in rows], np.stack([np.load(path / r["embedding"]) for r in rows]).astype(np.float32)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "embeddings" not in data:
                raise ValueError(f"{path} holds {sorted(data)}; expected arrays 'embeddings' (N, D) and 'ids' (N,).")
            emb = data["embeddings"].astype(np.float32)
            ids = [str(i) for i in data["ids"]] if "ids" in data else [str(i) for i in range(len(emb))]
        return ids, emb
    raise ValueError(f"{path}: give a `ctfm embed` folder or an .npz with 'embeddings' and 'ids'.")


def read_label_table(path, id_column: str, columns) -> dict[str, dict[str, str]]:
    """id -> {column: value} from a CSV (e.g. the 3D-MIR tables: case id, cancer_flag, lesion_group)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0]) if rows else []
    missing = [c for c in [id_column, *columns] if c not in header]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; it has {header}. Set --id-column / --label-column.")
    return {r[id_column]: {c: r[c] for c in columns} for r in rows}


def read_organmnist3d(path, axes=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MedMNIST OrganMNIST3D ``.npz`` -> split -> (volumes (N, D, H, W) float in 0..1, labels (N,)).

    ``axes`` transposes each split's volume array (e.g. :data:`ORGANMNIST_AXES`, the authors' input).
    """
    if axes is not None and (sorted(axes) != [0, 1, 2, 3] or axes[0] != 0):
        raise ValueError(f"OrganMNIST3D axes {list(axes)} must keep the volume index first and permute 1, 2, 3 "
                         "(the authors' 0 3 2 1, or 0 1 2 3 for MedMNIST's order).")
    with np.load(path, allow_pickle=False) as data:
        splits = {}
        for split in ("train", "val", "test"):
            if f"{split}_images" not in data:
                raise ValueError(f"{path}: no '{split}_images'; it holds {sorted(data)}. Is this a MedMNIST .npz?")
            images = data[f"{split}_images"]
            if images.ndim != 4:
                raise ValueError(f"{path}: {split}_images has shape {images.shape}; OrganMNIST3D is (N, D, H, W).")
            scale = 255.0 if images.dtype == np.uint8 else 1.0  # MedMNIST stores 0..255; its loader divides by 255
            images = images.astype(np.float32) / scale
            splits[split] = (images if axes is None else images.transpose(axes), data[f"{split}_labels"].reshape(-1))
    return splits


# --- Search -----------------------------------------------------------------------------------
class EmbeddingIndex:
    """Top-k search by cosine (inner product of unit vectors) or L2; exact, or faiss IVF (approximate).

    Exact search uses faiss' flat index when faiss is installed, else numpy (same results).
    """

    def __init__(self, corpus: np.ndarray, metric: str = "cosine", kind: str = "exact", nlist: int | None = None,
                 nprobe: int = 32, seed: int = 0):
        if metric not in ("cosine", "l2"):
            raise ValueError(f"unknown metric {metric!r}; choose cosine or l2")
        self.metric, self.kind = metric, kind
        self.corpus = self._prepare(corpus)
        faiss = _faiss(required=kind == "ivf")
        self.index = None
        if faiss is None:
            return
        d = self.corpus.shape[1]
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        if kind == "exact":
            self.index = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
        elif kind == "ivf":
            nlist = nlist or max(1, int(np.sqrt(len(self.corpus))))  # ~1,000 lists for 1M vectors
            quantizer = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss_metric)
            sample = np.random.default_rng(seed).permutation(len(self.corpus))[: max(nlist * 40, 10_000)]
            self.index.train(self.corpus[sample])
            self.index.nprobe = nprobe
        else:
            raise ValueError(f"unknown index {kind!r}; choose exact or ivf")
        self.index.add(self.corpus)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.metric == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return x

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, indices)`` of the ``k`` nearest corpus rows per query (cosine: highest first; l2: nearest first)."""
        q = self._prepare(np.atleast_2d(queries))
        k = min(k, len(self.corpus))
        if self.index is not None:
            return self.index.search(q, k)
        if self.metric == "cosine":
            scores = q @ self.corpus.T
        else:
            scores = -((q**2).sum(1)[:, None] - 2 * q @ self.corpus.T + (self.corpus**2).sum(1)[None])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        idx = np.take_along_axis(top, order, 1)
        best = np.take_along_axis(scores, idx, 1)
        return (best if self.metric == "cosine" else -best), idx


def _faiss(required: bool):
    try:
        import faiss
    except ImportError:
        if required:
            raise ImportError("the approximate index needs faiss: pip install faiss-cpu==1.15.1") from None
        return None
    return faiss


# --- Metrics ----------------------------------------------------------------------------------
def retrieval_metrics(query_labels, corpus_labels, neighbours: np.ndarray, ks=KS) -> dict[str, float]:
    """Mean precision@k, hit_rate@k, ap@k, f1@k (the authors') and f1_corpus_recall@k over queries (module docstring).

    ``neighbours`` holds the corpus rows found for each query, best first: ``(Q, >= max(ks))``.
    """
    q = np.asarray(query_labels)
    c = np.asarray(corpus_labels)
    relevant = c[neighbours] == q[:, None]  # (Q, K) rank-ordered
    n_relevant = np.array([(c == y).sum() for y in q])
    out = {}
    for k in ks:
        rel = relevant[:, :k]
        hits = rel.sum(1)
        precision = hits / k
        hit_rate = (hits > 0).astype(float)
        prec_at_i = np.cumsum(rel, 1) / np.arange(1, k + 1)
        ap = np.where(hits > 0, (prec_at_i * rel).sum(1) / np.maximum(hits, 1), 0.0)
        recall = np.where(n_relevant > 0, hits / np.maximum(n_relevant, 1), 0.0)
        out.update({f"precision@{k}": float(precision.mean()), f"hit_rate@{k}": float(hit_rate.mean()),
                    f"ap@{k}": float(ap.mean()), f"f1@{k}": float(harmonic_mean(ap, hit_rate).mean()),
                    f"f1_corpus_recall@{k}": float(harmonic_mean(precision, recall).mean())})
    return out


def harmonic_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise 2ab / (a + b), and 0 where both are 0."""
    return np.where(a + b > 0, 2 * a * b / np.maximum(a + b, 1e-12), 0.0)


# --- The whole job ---------------------------------------------------------------------------------
def embed_organmnist(path, weights, device="cpu", axes=ORGANMNIST_AXES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Embed every OrganMNIST3D volume whole, transposed by ``axes`` (the authors' way): split -> (embeddings, labels)."""
    import torch
    from tqdm import tqdm

    from ctfm.analysis.embeddings import embed_volume
    from ctfm.weights import load_pretrained

    model = load_pretrained(weights)
    out = {}
    for split, (images, labels) in read_organmnist3d(path, axes=axes).items():
        emb = [embed_volume(model, torch.from_numpy(v)[None], device=device).numpy()
               for v in tqdm(images, desc=f"embedding {split}", unit="volume")]
        out[split] = (np.stack(emb), labels)
    return out


def retrieve(output_dir, corpus=None, queries=None, labels=None, id_column="scan_id", label_columns=("label",),
             organmnist=None, weights=None, organmnist_axes=ORGANMNIST_AXES, ks=KS, metric=None, index="exact",
             nprobe=32, device="cpu") -> dict:
    """Search every query in the corpus, score it per label column; write metrics.json and neighbours.csv.

    ``metric`` defaults to the authors' choice: L2 for OrganMNIST3D, cosine otherwise (3D-MIR).
    """
    from ctfm.io import csv_text, new_output_dir, write_text_atomic

    if organmnist:
        if not weights:
            raise ValueError("--organmnist needs --weights to embed the volumes.")
        splits = embed_organmnist(organmnist, weights, device, axes=organmnist_axes)
        corpus_emb, corpus_lab = splits["train"]
        query_emb = np.concatenate([splits["val"][0], splits["test"][0]])
        query_lab = np.concatenate([splits["val"][1], splits["test"][1]])
        corpus_ids = [f"train_{i}" for i in range(len(corpus_emb))]
        query_ids = [f"val_{i}" for i in range(len(splits["val"][0]))] + [f"test_{i}" for i in range(len(splits["test"][0]))]
        label_sets = {"organ": (query_lab, corpus_lab)}
    else:
        if not (corpus and queries and labels):
            raise ValueError("give --corpus, --queries and --labels (or --organmnist with --weights).")
        corpus_ids, corpus_emb = read_embeddings(corpus)
        query_ids, query_emb = read_embeddings(queries)
        table = read_label_table(labels, id_column, label_columns)
        unlabelled = [i for i in [*corpus_ids, *query_ids] if i not in table]
        if unlabelled:
            raise ValueError(f"{labels} has no row for {len(unlabelled)} scan id(s), e.g. {unlabelled[:5]}; "
                             f"add them or check --id-column ({id_column}).")
        label_sets = {c: (np.array([table[i][c] for i in query_ids]), np.array([table[i][c] for i in corpus_ids]))
                      for c in label_columns}
    metric = metric or (ORGANMNIST_METRIC if organmnist else "cosine")
    out = new_output_dir(output_dir)
    search = EmbeddingIndex(corpus_emb, metric=metric, kind=index, nprobe=nprobe)
    scores, neighbours = search.search(query_emb, max(ks))
    metrics = {name: retrieval_metrics(q, c, neighbours, ks) for name, (q, c) in label_sets.items()}
    write_text_atomic(out / "neighbours.csv", csv_text(["query", "rank", "match", "score"], (
        [query_ids[qi], r + 1, corpus_ids[j], float(s)]
        for qi, (row_idx, row_score) in enumerate(zip(neighbours, scores))
        for r, (j, s) in enumerate(zip(row_idx, row_score)))))
    result = {"metric": metric, "index": index, "k": list(ks), "n_corpus": len(corpus_emb), "n_queries": len(query_emb),
              **({"organmnist_axes": list(organmnist_axes or range(4))} if organmnist else {}), "metrics": metrics}
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    return result
