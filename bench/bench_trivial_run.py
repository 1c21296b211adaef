#!/usr/bin/env python3
"""Time each phase of one trivial run (`true`) on a cached image, as a user's run does it.

Prints: image lookup, disks, how the VM started (restore of the warm-boot snapshot, or boot to
agent start), the agent's phases, the rest (qemu start, power-off, qemu exit), extraction, and
the total; the median of --repeat runs. Says which accelerator was used and the machine's load,
since both change the figures. Needs root (the image build, if not cached).

    sudo .venv/bin/python bench/bench_trivial_run.py [--repeat 3] [--boot snapshot|kernel|disk]

With --boot snapshot (the default, as `vmharness run`) the snapshot for this VM shape is made
first if there is none, and that time is printed apart: it is paid once per image and shape.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from vmharness.engine.attempt import ImageRef, RunContext, collect, prepare
from vmharness.images.cache import ImageCache
from vmharness.images.recipe import load_recipe
from vmharness.spec import PackageSet, Platform, Run, Source, TestSettings, VMSettings
from vmharness.vm.accel import choose_accelerator
from vmharness.vm.qemu import LocalVMs


def one(
    image: ImageRef, accel: str, tmp: Path, boot: str, i: int, cpus: int, store: Path
) -> dict[str, float]:
    run = Run(
        id=f"{i:04d}",
        platform=Platform("debian-12", recipe="debian-12"),
        source=Source("image"),
        package_set=PackageSet("none"),
        test=TestSettings(command="true", timeout_s=60, format="exit-code"),
        vm=VMSettings(memory_mib=512, cpus=cpus, network="none", wall_timeout_s=300),
    )
    ctx = RunContext(run_dir=tmp, boot=boot, snapshot_store=store)
    job, phases = prepare(run, image, ctx, 1)
    outcome = LocalVMs(accel)(job)
    result = collect(run, job, outcome, ctx, 1, phases)
    if result.status != "pass":
        raise SystemExit(f"the trivial run did not pass: {result.status}: {result.reason}")
    agent = json.loads((tmp / "runs" / run.id / "output" / "result.json").read_text())
    test_s = next(p["duration_s"] for p in agent["phases"] if p["name"] == "test")
    before_test = next(p["start_s"] for p in agent["phases"] if p["name"] == "test")
    row = {"disks": phases["disks"]}
    if agent.get("restored_from_snapshot"):
        start_s = outcome.phases["restore"]
        row["restore (load state, plug disks)"] = start_s
        if "snapshot" in outcome.phases:
            row["making the snapshot (once)"] = outcome.phases["snapshot"]
    else:
        start_s = agent["boot_uptime_s"]
        row["boot to agent start"] = start_s
    row.update(
        {
            "agent before test": before_test,
            "test": test_s,
            "agent after test": agent["duration_s"] - test_s - before_test,
            "rest (qemu start, power-off, exit)": outcome.seconds - start_s - agent["duration_s"],
            "vm total (qemu start to exit)": outcome.seconds,
            "extraction": result.phases["extraction"],
        }
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--boot", choices=("snapshot", "kernel", "disk"), default="snapshot")
    ap.add_argument("--cpus", type=int, default=1, help="guest vCPUs (default 1, as a spec)")
    args = ap.parse_args()
    cache = ImageCache()
    recipe = load_recipe("debian-12")
    t0 = time.monotonic()
    image = cache.get(recipe, progress=lambda m: print(f"  building: {m}", flush=True))
    lookup = time.monotonic() - t0
    t0 = time.monotonic()
    image = cache.get(recipe)  # the figure a run sees once the image is cached
    lookup = time.monotonic() - t0
    accel = choose_accelerator(image.kernel, cache.root, say=print)
    rows: list[dict[str, float]] = []
    store = cache.root / "snapshots"
    made = None
    with tempfile.TemporaryDirectory(prefix="vmh-bench-") as tmp:
        if args.boot == "snapshot":  # make this shape's snapshot now if it is missing
            first = one(
                ImageRef.from_cache(image), accel, Path(tmp), args.boot, 0, args.cpus, store
            )
            made = first.get("making the snapshot (once)")
        for i in range(args.repeat):
            t0 = time.monotonic()
            row = one(
                ImageRef.from_cache(image), accel, Path(tmp), args.boot, i + 1, args.cpus, store
            )
            row["total"] = time.monotonic() - t0 + lookup
            rows.append(row)
    print(
        f"\ntrivial run (`true`), {args.boot} boot, {args.cpus} vCPU, accelerator {accel}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
        f"median of {len(rows)}:"
    )
    print(f"  {'image lookup':32} {lookup:7.3f} s")
    for key in rows[0]:
        values = [r[key] for r in rows]
        print(
            f"  {key:32} {statistics.median(values):7.3f} s   "
            f"(min {min(values):.3f}, max {max(values):.3f})"
        )
    print(f"  image size on disk: {image.size_bytes / 1e6:.0f} MB ({image.disk})")
    if made is not None:
        print(f"  the snapshot for this VM shape was made first, once: {made:.1f} s")


if __name__ == "__main__":
    main()
