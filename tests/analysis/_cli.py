"""What the tests of the embedding tools share: the `ctfm` command line, the coarse test grid, clustered vectors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

CTFM = [sys.executable, "-m", "ctfm.cli.main"]
SPACING = ["--spacing", "6", "6", "6"]


def ctfm(*args):
    out = subprocess.run([*CTFM, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def clustered(n, d=32, centres=20, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)).astype(np.float32)
    return c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
