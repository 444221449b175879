"""Bundle helpers for the tests: the user's CLI path (shared with the demo) and offline ``verify_metadata``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ctfm.bundles import bundle_command, bundles_dir, run_bundle  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[1]
BUNDLES = bundles_dir()  # $CTFM_BUNDLES: conftest.py points it at this checkout unless it is set

# MONAI's bundle metadata schema is downloaded by `verify_metadata`; the tests run offline, so it is
# read from the file this variable names, and the schema check skips where it is not set.
SCHEMA_ENV = "CTFM_BUNDLE_SCHEMA"

# What MONAI's schema (meta_schema_20240725.json) requires, checked without it, so it runs everywhere.
REQUIRED_METADATA = ("schema", "version", "monai_version", "pytorch_version", "numpy_version",
                     "required_packages_version", "task", "description", "authors", "copyright", "network_data_format")
REQUIRED_TENSOR_KEYS = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")


def metadata_problems(bundle: str | Path) -> list[str]:
    """The required keys missing from the bundle's metadata.json (top level and each network input/output)."""
    meta = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())
    problems = [f"no {key!r}" for key in REQUIRED_METADATA if key not in meta]
    io = meta.get("network_data_format", {})
    for side in ("inputs", "outputs"):
        if not io.get(side):
            problems.append(f"network_data_format has no {side}")
        for name, tensor in io.get(side, {}).items():
            problems += [f"{side}.{name} has no {key!r}" for key in REQUIRED_TENSOR_KEYS if key not in tensor]
    return problems


def verify_metadata(bundle: str | Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``monai.bundle verify_metadata`` offline, against the schema named by $CTFM_BUNDLE_SCHEMA (else a skip).

    The schema is copied to a fresh path, where MONAI would otherwise download it.
    """
    given = os.environ.get(SCHEMA_ENV)
    if not given:
        pytest.skip(f"MONAI's metadata schema is not here: set {SCHEMA_ENV} to meta_schema_20240725.json "
                    "(from Project-MONAI/MONAI-extra-test-data releases 0.8.1) to run verify_metadata offline")
    if not Path(given).is_file():
        pytest.fail(f"{SCHEMA_ENV}={given} is not a file: point it at MONAI's meta_schema_20240725.json")
    schema = tmp_path / "schema.json"
    shutil.copy(given, schema)
    meta = Path(bundle) / "configs" / "metadata.json"
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta), "--filepath", str(schema)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def use_bundle_scripts(bundle: str | Path) -> None:
    """Make ``import scripts`` mean this bundle's ``scripts/`` package, in this test process.

    Every bundle has its own top-level ``scripts`` package (the MONAI convention), so a process that
    tests several bundles must drop the one imported before, as MONAI Label does (``unload_module``).
    """
    bundle = str(Path(bundle).resolve())
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if not (Path(p) / "scripts" / "__init__.py").is_file() or p == bundle]
    if bundle not in sys.path:
        sys.path.insert(0, bundle)


def run_torchrun(bundle: str | Path, configs: list[str], overrides: dict, processes: int = 2) -> subprocess.CompletedProcess:
    """The bundle under ``torchrun`` (``torch.distributed.run``), ``processes`` CPU processes (gloo), one thread each."""
    cmd = bundle_command(bundle, configs, overrides)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={processes}",
           *cmd[1:]]
    # The caller's PYTHONPATH stays after the bundle's, so a checkout's own ctfm is the one imported.
    pythonpath = os.pathsep.join(filter(None, [str(bundle), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
