"""Time loading + expanding the OSG's real nightly matrix (1,564 runs), 20 times.

    .venv/bin/python bench/bench_matrix_expand.py [PARAMETERS_DIR]

Prints figures; not a timed test. Skips (exit 0) where ../shared/peer-data is absent.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from vmharness.spec import expand, load_spec

REPEAT = 20
DEFAULT_DIR = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "peer-data"
    / "vm-test-runs"
    / "parameters.d"
)


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR
    if not folder.is_dir():
        print(f"skipped: {folder} is absent (the OSG parameter files live in ../shared)")
        return 0
    load_times: list[float] = []
    expand_times: list[float] = []
    runs = []
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        spec = load_spec(folder)
        t1 = time.perf_counter()
        runs = expand(spec)
        t2 = time.perf_counter()
        load_times.append(t1 - t0)
        expand_times.append(t2 - t1)
    total = [a + b for a, b in zip(load_times, expand_times, strict=True)]
    print(f"matrix: {folder} -> {len(runs)} runs")
    print(f"{REPEAT} x (load + expand): {sum(total):.3f} s in all")
    print(
        f"per time: load {statistics.median(load_times) * 1000:.1f} ms, "
        f"expand {statistics.median(expand_times) * 1000:.1f} ms, "
        f"total {statistics.median(total) * 1000:.1f} ms median, "
        f"{max(total) * 1000:.1f} ms worst"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
