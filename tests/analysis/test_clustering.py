"""t-SNE plots (`ctfm cluster`): one readable PNG per usable perplexity."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
from PIL import Image

from ._cli import CTFM, clustered


def test_cluster_writes_one_readable_png_per_perplexity(tmp_path):
    emb = clustered(30, d=16, centres=3)
    ids = [f"s{i}" for i in range(30)]
    np.savez(tmp_path / "e.npz", embeddings=emb, ids=np.array(ids))
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scan_id", "organ"])
        w.writerows([i, ["liver", "spleen", "kidney"][n % 3]] for n, i in enumerate(ids))
    out = subprocess.run([*CTFM, "cluster", "--embeddings", str(tmp_path / "e.npz"), "--labels",
                          str(tmp_path / "labels.csv"), "--label-column", "organ", "--perplexity", "5", "10", "100",
                          "--output-dir", str(tmp_path / "t")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pngs = sorted((tmp_path / "t").glob("tsne_perplexity_*.png"))
    assert [p.name for p in pngs] == ["tsne_perplexity_10.png", "tsne_perplexity_5.png"]  # 100 >= 30 points: skipped
    for p in pngs:
        img = np.asarray(Image.open(p).convert("RGB"))
        assert img.shape == (700, 800, 3)
        assert (np.abs(img[..., 0].astype(int) - img[..., 2]) > 60).any()  # coloured points, not only axes
    assert json.loads((tmp_path / "t" / "cluster.json").read_text())["skipped_perplexities"] == [100.0]
