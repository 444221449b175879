"""Fixtures of the pretraining tests: the offline IDC selection is made once per session."""

from __future__ import annotations

import pytest

from ctfm.pretraining.idc.criteria import Selection
from ctfm.pretraining.idc.offline import index_paths, select_offline


@pytest.fixture(scope="session")
def offline() -> Selection:
    return select_offline(idc_version=14)


@pytest.fixture(scope="session")
def index_parquet() -> str:
    return str(index_paths()["idc_index"])
