"""What every benchmark writes: figures, the baseline measured in the same run, the ratio, the machine, the command."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime
from pathlib import Path

# The one anchor of the benchmark harness: like the tests' helpers it lives in the checkout, beside the bundles.
REPO = Path(__file__).resolve().parents[1]
BUNDLES = Path(os.environ.get("CTFM_BUNDLES") or REPO / "bundles")
RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, figures: dict, baseline: dict, ratio: dict, notes: str = "") -> Path:
    """Write ``results/<name>.json`` and print it as a small table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "date": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "figures": figures,
        "baseline": baseline,
        "ratio": ratio,
        "notes": notes,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2))
    width = max(len(k) for k in [*figures, *baseline, *ratio, "metric"])
    print(f"\n{name}\n{'metric':{width}s}  value")
    for section, values in (("", figures), ("baseline: ", baseline), ("ratio: ", ratio)):
        for k, v in values.items():
            print(f"{section + k:{width + 10}s}  {v}")
    print(f"-> {path}")
    return path
