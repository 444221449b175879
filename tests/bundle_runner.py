"""Run a MONAI bundle the way a user does: ``python -m monai.bundle run`` in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO.parent / "shared" / "data" / "meta_schema_20240725.json"


def run_bundle(
    bundle: str | Path,
    configs: str | list[str],
    overrides: dict | None = None,
    timeout: int = 900,
    workflow: str = "run",
    check: bool = True,
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <workflow> --config_file [...] --key value ...`` from the bundle root.

    ``overrides`` values are passed as JSON (so lists and strings survive fire's parsing).
    Raises with the tail of stdout/stderr when the run fails and ``check`` is set.
    """
    bundle = Path(bundle)
    configs = [configs] if isinstance(configs, str) else configs
    config_arg = json.dumps([str(bundle / "configs" / c) for c in configs])
    cmd = [sys.executable, "-m", "monai.bundle", workflow, "--config_file", config_arg]
    cmd += ["--meta_file", str(bundle / "configs" / "metadata.json")]
    cmd += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    env = {**os.environ, "PYTHONPATH": str(bundle), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"bundle run failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-4000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def verify_metadata(bundle: str | Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``monai.bundle verify_metadata`` offline: the schema is placed where it would be downloaded to."""
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    meta = Path(bundle) / "configs" / "metadata.json"
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta), "--filepath", str(schema)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)
