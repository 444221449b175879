"""Run a MONAI bundle of this checkout the way a user does: ``python -m monai.bundle run`` in a subprocess.

Used by the demo and the tests, so both take the user's path. The command runs from the bundle
root with ``PYTHONPATH`` set to it, because MONAI adds the bundle root to ``sys.path`` only in
``run()``, after ``initialize`` may already need the bundle's ``scripts`` package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def bundle_command(bundle: str | Path, configs: str | list[str], overrides: dict | None = None, workflow: str = "run"):
    """The argv of ``python -m monai.bundle <workflow>``; ``overrides`` values go as JSON unless they are strings."""
    bundle = Path(bundle)
    configs = [configs] if isinstance(configs, str) else configs
    cmd = [sys.executable, "-m", "monai.bundle", workflow]
    cmd += ["--config_file", json.dumps([str(bundle / "configs" / c) for c in configs])]
    cmd += ["--meta_file", str(bundle / "configs" / "metadata.json")]
    cmd += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return cmd


def run_bundle(
    bundle: str | Path,
    configs: str | list[str],
    overrides: dict | None = None,
    timeout: float | None = None,
    workflow: str = "run",
    check: bool = True,
    capture: bool = True,
) -> subprocess.CompletedProcess:
    """Run the bundle; with ``check``, a failure raises with the command and the tail of its output.

    ``capture=False`` streams the bundle's output (progress of long runs) instead of returning it.
    """
    bundle = Path(bundle)
    cmd = bundle_command(bundle, configs, overrides, workflow)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(bundle), os.environ.get("PYTHONPATH")]))}
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=capture, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"bundle run failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{(proc.stdout or '')[-4000:]}"
            f"\n--- stderr ---\n{(proc.stderr or '')[-6000:]}"
        )
    return proc
