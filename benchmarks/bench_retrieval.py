"""Retrieval at scale: one query against 1,000,000 x 512 embeddings, exact (numpy) vs faiss IVF.

Corpus: random vectors with cluster structure (4,096 Gaussian clusters in 512-d, unit-normalised),
standing in for CT-FM embeddings. Target: < 50 ms per single query with recall@10 >= 0.95 against
exact search. ``python benchmarks/bench_retrieval.py --n 100000`` for a quicker run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import write_result
from ctfm.analysis.retrieval import EmbeddingIndex


def clustered_corpus(n: int, d: int = 512, clusters: int = 4096, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        out[start:start + m] = centres[rng.integers(0, clusters, m)] + 0.5 * rng.normal(size=(m, d)).astype(np.float32)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--nprobe", type=int, default=32)
    args, _ = parser.parse_known_args()  # `python -m benchmarks` passes the benchmark names on
    # queries are held-out members of the same clusters: new scans that resemble scans of the corpus
    data = clustered_corpus(args.n + args.queries)
    corpus, queries = data[: args.n], data[args.n:]
    del data
    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)

    def exact_numpy(q):  # the baseline: one matrix-vector product over the whole corpus
        s = unit @ (q / np.linalg.norm(q))
        top = np.argpartition(-s, 10)[:10]
        return top[np.argsort(-s[top])]

    t = time.perf_counter()
    truth = [exact_numpy(q) for q in queries]
    exact_ms = (time.perf_counter() - t) / len(queries) * 1000
    t = time.perf_counter()
    index = EmbeddingIndex(corpus, metric="cosine", kind="ivf", nprobe=args.nprobe)
    build_s = time.perf_counter() - t
    times, found = [], []
    for q in queries:  # single queries, as a user's search would issue them
        t = time.perf_counter()
        _, idx = index.search(q[None], 10)
        times.append((time.perf_counter() - t) * 1000)
        found.append(idx[0])
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
    ivf_ms = float(np.median(times))
    write_result(
        "retrieval",
        figures={"corpus": args.n, "dim": 512, "ivf_ms_per_query_median": round(ivf_ms, 2),
                 "ivf_ms_per_query_p95": round(float(np.percentile(times, 95)), 2), "recall_at_10": round(recall, 4),
                 "ivf_build_s": round(build_s, 1), "nprobe": args.nprobe, "nlist": index.index.nlist},
        baseline={"exact_numpy_ms_per_query": round(exact_ms, 2)},
        ratio={"speedup_vs_exact": round(exact_ms / ivf_ms, 1)},
        notes="random clustered corpus (4096 clusters, unit vectors); faiss-cpu IVF-Flat, inner product",
    )


if __name__ == "__main__":
    main()
