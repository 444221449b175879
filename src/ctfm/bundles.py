"""Run a MONAI bundle of a CT-FM checkout the way a user does: ``python -m monai.bundle run`` in a subprocess.

Used by the demo and the tests, so both take the user's path. The command runs from the bundle
root with ``PYTHONPATH`` set to it, because MONAI adds the bundle root to ``sys.path`` only in
``run()``, after ``initialize`` may already need the bundle's ``scripts`` package. Because the
subprocess runs in the bundle folder, every path override is made absolute here first, against the
caller's working directory, so a relative path means what the caller meant.

The bundles are not part of the installed package: they are found in the folder given as an
argument or in ``$CTFM_BUNDLES`` (the ``bundles/`` folder of a checkout; ``make`` sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ctfm.io import absolute

BUNDLES_ENV = "CTFM_BUNDLES"

# The override ids of the three bundles' configs that name a file or folder (their configs/*.json).
PATH_IDS = frozenset({
    "bundle_root", "ckpt_dir", "ckpt_path", "ct_fm_weights", "datalist", "dataset_dir", "encoder_dir", "input",
    "output_dir", "selection_datalist", "selection_dataset_dir", "selection_output_dir",
})  # fmt: skip


def bundles_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder that holds the bundles: ``path``, else ``$CTFM_BUNDLES``; an error names both when neither is set."""
    chosen = path or os.environ.get(BUNDLES_ENV)
    if not chosen:
        raise RuntimeError(
            f"no bundles folder given: set {BUNDLES_ENV} to the bundles/ folder of a CT-FM checkout "
            f"(`make demo` sets it), or pass --bundles-dir"
        )
    folder = absolute(chosen)
    if not (folder / "ct_fm_pretrain" / "configs" / "train.json").is_file():
        source = "--bundles-dir" if path else f"${BUNDLES_ENV}"
        raise FileNotFoundError(
            f"{folder} (from {source}) holds no CT-FM bundles (no ct_fm_pretrain/configs/train.json): "
            "point it at the bundles/ folder of a CT-FM checkout"
        )
    return folder


def absolute_overrides(overrides: dict | None) -> dict:
    """``overrides`` with every path id's value (or list of values) resolved against the working directory.

    Config references and expressions (``@id``, ``$...``), ``''`` and ``None`` (meaning "none") stay as they are.
    """
    return {key: _absolute_value(value) if key in PATH_IDS else value for key, value in (overrides or {}).items()}


def _absolute_value(value):
    if isinstance(value, (list, tuple)):
        return [_absolute_value(v) for v in value]
    if isinstance(value, (str, os.PathLike)) and os.fspath(value) and not os.fspath(value).startswith(("$", "@", "%")):
        return str(absolute(value))
    return value


def bundle_command(bundle: str | Path, configs: str | list[str], overrides: dict | None = None, workflow: str = "run"):
    """The argv of ``python -m monai.bundle <workflow>``; path overrides are made absolute, values go as JSON
    unless they are strings."""
    bundle = absolute(bundle)
    configs = [configs] if isinstance(configs, str) else configs
    cmd = [sys.executable, "-m", "monai.bundle", workflow]
    cmd += ["--config_file", json.dumps([str(bundle / "configs" / c) for c in configs])]
    cmd += ["--meta_file", str(bundle / "configs" / "metadata.json")]
    cmd += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in absolute_overrides(overrides).items():
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
    """Run the bundle from its folder; with ``check``, a failure raises with the command and the tail of its output.

    ``capture=False`` streams the bundle's output (progress of long runs) instead of returning it.
    """
    bundle = absolute(bundle)
    cmd = bundle_command(bundle, configs, overrides, workflow)
    # The caller's PYTHONPATH entries are made absolute too: a relative one would not reach the bundle folder.
    caller_path = [str(absolute(p)) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(bundle), *caller_path])}
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=capture, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"bundle run failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{(proc.stdout or '')[-4000:]}"
            f"\n--- stderr ---\n{(proc.stderr or '')[-6000:]}"
        )
    return proc
