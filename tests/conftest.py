"""Shared fixtures. Everything runs on the CPU with tiny shapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The demo and bundle helpers find the bundles through $CTFM_BUNDLES (make sets it); here, this checkout's.
os.environ.setdefault("CTFM_BUNDLES", str(REPO / "bundles"))


@pytest.fixture(scope="session")
def sample_ct():
    """The real sample CT, fetched once into the user cache (or $CTFM_CACHE) and reused."""
    from ctfm.data.sample_ct import fetch_sample_ct

    return fetch_sample_ct()


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # Two cores in CI: keep torch from oversubscribing when tests run subprocesses.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


@pytest.fixture(autouse=True)
def _subprocess_temporaries_in_tmp_path(monkeypatch, tmp_path):
    # A bundle run refused before its output folder exists writes its error log to the temporary folder
    # (ctfm.bundle_errors): in tests, the test's own folder, removed with the others.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
