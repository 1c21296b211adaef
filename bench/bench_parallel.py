#!/usr/bin/env python3
"""Wall time of N trivial runs one after another vs in parallel, measured in one go.

Both halves use the same cached image, the same scheduler and the same run pipeline as
`vmharness run`; only the number of VMs at once differs. Prints both times and the ratio
(target: at least 1.6x for 8 runs on 2 cores). Needs root (image build, if not cached).

    sudo .venv/bin/python bench/bench_parallel.py [--runs 8] [--slots 2] [--boot snapshot|kernel]

With --boot snapshot (the default, as `vmharness run`) one warm-up run first makes the
snapshot if there is none, so that neither half pays for it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from vmharness.engine.attempt import ImageRef, RunContext
from vmharness.engine.local import run_matrix
from vmharness.images.cache import ImageCache
from vmharness.images.recipe import load_recipe
from vmharness.spec import PackageSet, Platform, Run, Source, TestSettings, VMSettings
from vmharness.state import RunDB
from vmharness.vm.accel import choose_accelerator
from vmharness.vm.qemu import LocalVMs


def matrix(n: int) -> list[Run]:
    return [
        Run(
            id=f"{i:04d}",
            platform=Platform("debian-12", recipe="debian-12"),
            source=Source("image"),
            package_set=PackageSet(f"set {i}"),
            test=TestSettings(command="true", timeout_s=60, format="exit-code"),
            vm=VMSettings(memory_mib=512, cpus=1, network="none", wall_timeout_s=600),
        )
        for i in range(1, n + 1)
    ]


def timed(
    runs: list[Run],
    image: ImageRef,
    accel: str,
    slots: int,
    tmp: Path,
    boot: str,
    store: Path,
    name: str = "",
) -> float:
    run_dir = tmp / (name or f"slots-{slots}")
    run_dir.mkdir()
    db = RunDB(run_dir)
    db.add_runs(runs)
    t0 = time.monotonic()
    ctx = RunContext(run_dir=run_dir, boot=boot, snapshot_store=store)
    results = run_matrix(
        db,
        runs,
        {"debian-12": image},
        ctx,
        LocalVMs(accel),
        slots=slots,
        retries=0,
        console=Console(quiet=True),
    )
    seconds = time.monotonic() - t0
    bad = [r for r in results.values() if r.status != "pass"]
    if bad:
        raise SystemExit(f"{len(bad)} runs did not pass: {bad[0].status}: {bad[0].reason}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--slots", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--boot", choices=("snapshot", "kernel"), default="snapshot")
    args = ap.parse_args()
    cache = ImageCache()
    image = cache.get(load_recipe("debian-12"), progress=lambda m: print(f"  building: {m}"))
    accel = choose_accelerator(image.kernel, cache.root, say=print)
    runs = matrix(args.runs)
    ref, store = ImageRef.from_cache(image), cache.root / "snapshots"
    with tempfile.TemporaryDirectory(prefix="vmh-bench-par-") as tmp:
        if args.boot == "snapshot":
            timed(runs[:1], ref, accel, 1, Path(tmp), args.boot, store, name="warm-up")
        seq = timed(runs, ref, accel, 1, Path(tmp), args.boot, store)
        par = timed(runs, ref, accel, args.slots, Path(tmp), args.boot, store)
    print(
        f"\n{args.runs} trivial runs, {args.boot} boot, accelerator {accel}, "
        f"{os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.2f}:"
    )
    print(f"  one after another : {seq:7.1f} s ({seq / args.runs:.1f} s per run)")
    print(f"  {args.slots} at once         : {par:7.1f} s ({par / args.runs:.1f} s per run)")
    print(f"  speed-up          : {seq / par:7.2f}x  (target >= 1.6x)")


if __name__ == "__main__":
    main()
