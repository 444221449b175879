"""``python -m benchmarks [bench_name ...] [options]``: run CPU benchmarks (all of them: ``make bench``).

Arguments that name a ``bench_*.py`` file pick the benchmarks; the others are that benchmark's own
options (``python -m benchmarks bench_search --smoke``), which each script reads from ``sys.argv``.
"""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
AVAILABLE = sorted(p.stem for p in HERE.glob("bench_*.py"))

if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:2]):
        print(__doc__ + "\nbenchmarks: " + ", ".join(AVAILABLE))
        sys.exit(0)
    names = [a for a in sys.argv[1:] if a in AVAILABLE]
    unknown = [a for a in sys.argv[1:] if a.startswith("bench_") and a not in AVAILABLE]
    if unknown:
        sys.exit(f"unknown benchmark {unknown[0]!r}; available: {', '.join(AVAILABLE)}")
    for name in names or AVAILABLE:
        print(f"=== {name} ===", flush=True)
        runpy.run_path(str(HERE / f"{name}.py"), run_name="__main__")
