"""Bundle helpers for the tests: the user's CLI path (shared with the demo) and offline ``verify_metadata``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ctfm.cli.bundle_run import BUNDLES, bundle_command, run_bundle  # noqa: F401  (re-exported for tests)

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO.parent / "shared" / "data" / "meta_schema_20240725.json"


def verify_metadata(bundle: str | Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``monai.bundle verify_metadata`` offline: the schema is placed where it would be downloaded to."""
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
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
