"""Retrieval metrics, readers, the search index, and `ctfm retrieve` (no encoder needed except the last: fast)."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest

from ctfm.analysis.retrieval import ORGANMNIST_AXES, EmbeddingIndex, read_organmnist3d, retrieval_metrics

from ._cli import CTFM, clustered


def test_retrieval_metrics_equal_hand_computed_values():
    corpus = np.array(["a", "a", "b", "b", "c"])
    # query 0 (a): ranks b, a, a -> rel 0 1 1; query 1 (c): ranks a, b, b -> nothing relevant
    neighbours = np.array([[2, 0, 1], [0, 2, 3]])
    m = retrieval_metrics(np.array(["a", "c"]), corpus, neighbours, ks=(1, 3))
    assert m["precision@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["hit_rate@3"] == pytest.approx(0.5) and m["hit_rate@1"] == 0.0
    # AP@3 of query 0: mean of P@2 = 1/2 and P@3 = 2/3
    assert m["ap@3"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 0) / 2)
    # the corpus-recall F1@3 of query 0: P = 2/3, R = 2/2 -> 0.8
    assert m["f1_corpus_recall@3"] == pytest.approx((0.8 + 0) / 2)
    # the authors' F1@3 of query 0: harmonic mean of AP@3 = 7/12 and HR@3 = 1 -> 14/19
    assert m["f1@3"] == pytest.approx((14 / 19 + 0) / 2)


def test_f1_is_the_authors_harmonic_mean_of_ap_and_hit_rate_per_query():
    """The authors' organ_mnist.ipynb: per query F1@k = 2 AP HR / (AP + HR), then the mean over queries."""
    corpus = np.array(["a", "a", "n", "a", "j", "n", "a"])  # 4 items of class a
    # query 0 (a) ranks a a n a j: the authors' own ap_k example (0.92); query 1 (a) ranks n j a a n
    neighbours = np.array([[0, 1, 2, 3, 4], [2, 4, 6, 0, 5]])
    m = retrieval_metrics(np.array(["a", "a"]), corpus, neighbours, ks=(1, 5))
    # query 0: AP@5 = (1/1 + 2/2 + 3/4) / 3 = 11/12, HR@5 = 1, F1@5 = 22/23
    # query 1: AP@5 = (1/3 + 2/4) / 2 = 5/12, HR@5 = 1, F1@5 = 10/17
    assert m["ap@5"] == pytest.approx((11 / 12 + 5 / 12) / 2)
    assert m["hit_rate@5"] == 1.0
    assert m["f1@5"] == pytest.approx((22 / 23 + 10 / 17) / 2)
    assert m["precision@5"] == pytest.approx((3 / 5 + 2 / 5) / 2)
    # corpus recall: 3/4 and 2/4 of the 4 a's -> F1 2/3 and 4/9
    assert m["f1_corpus_recall@5"] == pytest.approx((2 / 3 + 4 / 9) / 2)
    # k = 1: query 0 hits (AP = HR = F1 = 1), query 1 misses (all 0)
    assert m["ap@1"] == m["hit_rate@1"] == m["f1@1"] == pytest.approx(0.5)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_index_matches_brute_force_and_ivf_recall_is_high(metric):
    corpus, queries = clustered(4000), clustered(50, seed=1)
    exact = EmbeddingIndex(corpus, metric=metric, kind="exact")
    _, idx = exact.search(queries, 10)
    if metric == "cosine":
        unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
        brute = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T, axis=1)[:, :10]
    else:
        brute = np.argsort(((queries[:, None] - corpus[None]) ** 2).sum(-1), axis=1)[:, :10]
    assert (idx[:, 0] == brute[:, 0]).all()
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, brute)]) > 0.99
    _, approx = EmbeddingIndex(corpus, metric=metric, kind="ivf", nlist=64, nprobe=8).search(queries, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, idx)]) >= 0.95


def write_organmnist_like(path, n=(6, 2, 2), size=8):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, size, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 3, (count, 1))
    np.savez(path, **arrays)
    return arrays


def test_organmnist_reader_scales_to_unit_range_and_flattens_labels(tmp_path):
    arrays = write_organmnist_like(tmp_path / "organmnist3d.npz")
    splits = read_organmnist3d(tmp_path / "organmnist3d.npz")
    images, labels = splits["train"]
    assert images.shape == (6, 8, 8, 8) and images.max() <= 1.0
    np.testing.assert_allclose(images, arrays["train_images"] / 255.0, rtol=1e-6)
    assert labels.shape == (6,)
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="train_images"):
        read_organmnist3d(tmp_path / "bad.npz")


def test_organmnist_volumes_are_transposed_the_authors_way(tmp_path):
    """The authors embed ``images.transpose(0, 3, 2, 1)``: array axis 1 of the input is MedMNIST's last axis."""
    arrays = write_organmnist_like(tmp_path / "organmnist3d.npz")
    assert ORGANMNIST_AXES == (0, 3, 2, 1)
    images, _ = read_organmnist3d(tmp_path / "organmnist3d.npz", axes=ORGANMNIST_AXES)["val"]
    np.testing.assert_allclose(images[1, 2, 5, 7], arrays["val_images"][1, 7, 5, 2] / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="0 3 2 1"):
        read_organmnist3d(tmp_path / "organmnist3d.npz", axes=(1, 0, 2, 3))


def test_retrieve_cli_scores_3d_mir_like_tables(tmp_path):
    """3D-MIR look-alike: query q0 is nearest to c0 (cancer 1, group A), then c1, then c2."""
    e = np.eye(4, dtype=np.float32)
    corpus = np.stack([e[0], e[0] + 0.5 * e[1], e[1], e[2]])
    np.savez(tmp_path / "corpus.npz", embeddings=corpus, ids=np.array(["c0", "c1", "c2", "c3"]))
    np.savez(tmp_path / "queries.npz", embeddings=e[:1], ids=np.array(["q0"]))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["case_id", "cancer_flag", "lesion_group"], ["c0", 1, "A"], ["c1", 0, "B"], ["c2", 1, "A"],
                     ["c3", 0, "B"], ["q0", 1, "A"]])
    out = subprocess.run([*CTFM, "retrieve", "--corpus", str(tmp_path / "corpus.npz"), "--queries",
                          str(tmp_path / "queries.npz"), "--labels", str(tmp_path / "labels.csv"), "--id-column",
                          "case_id", "--label-column", "cancer_flag", "lesion_group", "--k", "1", "3",
                          "--output-dir", str(tmp_path / "r")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    # ranking c0, c1, c2: relevant 1, 0, 1 for both columns
    assert metrics["cancer_flag"]["precision@3"] == pytest.approx(2 / 3)
    assert metrics["lesion_group"]["ap@3"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["cancer_flag"]["precision@1"] == 1.0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["metric"] == "cosine"  # 3D-MIR: the paper's
    rows = list(csv.DictReader(open(tmp_path / "r" / "neighbours.csv")))
    assert [r["match"] for r in rows] == ["c0", "c1", "c2"]
    again = subprocess.run(out.args, capture_output=True, text=True)
    assert again.returncode == 1 and "already holds files" in again.stderr


@pytest.mark.slow
def test_retrieve_organmnist_end_to_end(tmp_path):
    """``--organmnist``: embed an OrganMNIST3D-shaped .npz with CT-FM weights, train = corpus, val + test =
    queries. Three 'organs' (a bright ball, a bright slab, a dim cube) with noise: any encoder maps
    each shape near its own kind, so the top neighbours share the query's label."""
    import torch

    from ctfm.networks import build_encoder
    from ctfm.weights import save_pretrained

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:16, :16, :16]
    shapes = [((z - 8) ** 2 + (y - 8) ** 2 + (x - 8) ** 2 < 25) * 230, (abs(z - 8) < 2) * 200 + 0 * y,
              ((abs(z - 8) < 5) & (abs(y - 8) < 5) & (abs(x - 8) < 5)) * 90]
    arrays = {}
    for split, count in (("train", 12), ("val", 3), ("test", 3)):
        labels = np.arange(count) % 3
        noise = rng.normal(0, 8, (count, 16, 16, 16))
        arrays[f"{split}_images"] = np.clip(np.stack([shapes[c] for c in labels]) + noise + 20, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None]
    np.savez(tmp_path / "organmnist3d.npz", **arrays)
    torch.manual_seed(0)
    weights = save_pretrained(build_encoder(), tmp_path / "ct_fm_RANDOM_INIT")
    out = subprocess.run([*CTFM, "retrieve", "--organmnist", str(tmp_path / "organmnist3d.npz"), "--weights",
                          str(weights), "--k", "1", "3", "--output-dir", str(tmp_path / "r")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert result["n_corpus"] == 12 and result["n_queries"] == 6
    assert result["metric"] == "l2" and result["organmnist_axes"] == [0, 3, 2, 1]  # the authors' protocol by default
    organ = result["metrics"]["organ"]
    assert organ["precision@3"] == pytest.approx(1.0) and organ["hit_rate@1"] == pytest.approx(1.0), organ
    rows = list(csv.DictReader(open(tmp_path / "r" / "neighbours.csv")))
    assert len(rows) == 6 * 3 and rows[0]["query"] == "val_0" and rows[0]["match"].startswith("train_")
    assert "organ: precision@1 1.000" in out.stdout
