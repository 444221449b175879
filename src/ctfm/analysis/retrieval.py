"""Content-based retrieval: top-k search of query embeddings in a corpus, scored the paper's way (Figure 5).

Embeddings come from ``ctfm embed`` folders (``embeddings.csv`` + ``<scan id>.npy``, written by
:func:`ctfm.analysis.embeddings.embed_files`) or ``.npz`` files with ``embeddings`` (N, 512) and ``ids``. Labels come from a CSV (``labels``: an id column
and one column per label, e.g. the 3D-MIR ``cancer_flag`` and ``lesion_group``). With
``organmnist`` the MedMNIST OrganMNIST3D ``.npz`` is embedded first (train = corpus,
val + test = queries; volumes go in whole, as the authors did).

Metrics per query, averaged (k = 3, 5, 10 by default): precision@k, hit rate@k (any relevant in
the top k), F1@k (precision@k with recall@k = relevant in top k / relevant in the corpus), and
AP@k = mean of precision@i over the ranks i <= k that hold a relevant item (0 when none does).
"Relevant" means the same label value. Search: ``metric="cosine"`` (the paper) or ``l2``;
``index="exact"`` (default) or ``ivf`` (faiss inverted file, approximate, for millions of
embeddings; ``nprobe`` trades speed for recall).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

KS = (3, 5, 10)


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


def read_organmnist3d(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MedMNIST OrganMNIST3D ``.npz`` -> split -> (volumes (N, D, H, W) float in 0..1, labels (N,))."""
    with np.load(path, allow_pickle=False) as data:
        splits = {}
        for split in ("train", "val", "test"):
            if f"{split}_images" not in data:
                raise ValueError(f"{path}: no '{split}_images'; it holds {sorted(data)}. Is this a MedMNIST .npz?")
            images = data[f"{split}_images"]
            if images.ndim != 4:
                raise ValueError(f"{path}: {split}_images has shape {images.shape}; OrganMNIST3D is (N, D, H, W).")
            scale = 255.0 if images.dtype == np.uint8 else 1.0  # MedMNIST stores 0..255; its loader divides by 255
            splits[split] = (images.astype(np.float32) / scale, data[f"{split}_labels"].reshape(-1))
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
    """Mean precision@k, hit rate@k, F1@k and AP@k over queries (definitions in the module docstring)."""
    q = np.asarray(query_labels)
    c = np.asarray(corpus_labels)
    relevant = c[neighbours] == q[:, None]  # (Q, K) rank-ordered
    n_relevant = np.array([(c == y).sum() for y in q])
    out = {}
    for k in ks:
        rel = relevant[:, :k]
        hits = rel.sum(1)
        precision = hits / k
        recall = np.where(n_relevant > 0, hits / np.maximum(n_relevant, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        prec_at_i = np.cumsum(rel, 1) / np.arange(1, k + 1)
        ap = np.where(hits > 0, (prec_at_i * rel).sum(1) / np.maximum(hits, 1), 0.0)
        out.update({f"precision@{k}": float(precision.mean()), f"hit_rate@{k}": float((hits > 0).mean()),
                    f"f1@{k}": float(f1.mean()), f"ap@{k}": float(ap.mean())})
    return out


# --- The whole job ---------------------------------------------------------------------------------
def embed_organmnist(path, weights, device="cpu") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Embed every OrganMNIST3D volume whole (the authors' way): split -> (embeddings, labels)."""
    import torch
    from tqdm import tqdm

    from ctfm.analysis.embeddings import embed_volume
    from ctfm.weights import load_pretrained

    model = load_pretrained(weights)
    out = {}
    for split, (images, labels) in read_organmnist3d(path).items():
        emb = [embed_volume(model, torch.from_numpy(v)[None], device=device).numpy()
               for v in tqdm(images, desc=f"embedding {split}", unit="volume")]
        out[split] = (np.stack(emb), labels)
    return out


def retrieve(output_dir, corpus=None, queries=None, labels=None, id_column="scan_id", label_columns=("label",),
             organmnist=None, weights=None, ks=KS, metric="cosine", index="exact", nprobe=32, device="cpu") -> dict:
    """Search every query in the corpus, score it per label column; write metrics.json and neighbours.csv."""
    from ctfm.io import csv_text, new_output_dir, write_text_atomic

    if organmnist:
        if not weights:
            raise ValueError("--organmnist needs --weights to embed the volumes.")
        splits = embed_organmnist(organmnist, weights, device)
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
    out = new_output_dir(output_dir)
    search = EmbeddingIndex(corpus_emb, metric=metric, kind=index, nprobe=nprobe)
    scores, neighbours = search.search(query_emb, max(ks))
    metrics = {name: retrieval_metrics(q, c, neighbours, ks) for name, (q, c) in label_sets.items()}
    write_text_atomic(out / "neighbours.csv", csv_text(["query", "rank", "match", "score"], (
        [query_ids[qi], r + 1, corpus_ids[j], float(s)]
        for qi, (row_idx, row_score) in enumerate(zip(neighbours, scores))
        for r, (j, s) in enumerate(zip(row_idx, row_score)))))
    result = {"metric": metric, "index": index, "k": list(ks), "n_corpus": len(corpus_emb), "n_queries": len(query_emb),
              "metrics": metrics}
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    return result
