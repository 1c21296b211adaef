#!/usr/bin/env python3
"""Runs that install packages: one run installing curl, and examples/matrix.yaml cold and warm.

1. One run of debian-12 installing `curl` from the Debian mirror (1 vCPU, 1 GiB, network
   user), steady state: a first run makes the warm-boot snapshot and fills the package cache,
   then --repeat runs are timed. Prints the agent's phases (apt-get update and install apart)
   and the total, median of the repeats.
2. With --matrix: `vmharness run examples/matrix.yaml --jobs 2` with an empty package cache
   (it is cleared: the bench says so) and again warm. Prints the wall times and what the
   package cache fetched from the mirrors during each (bytes, and how many .debs).

3. With --compare-tcg: the same curl run under the software-emulation settings of before
   (`-cpu max`, the guest with address-space randomisation) and of now (`TCG_CPU`,
   `TCG_KERNEL_FLAGS`), alternated --repeat times after a warm-up of each; prints both medians
   and their ratio.

    sudo .venv/bin/python bench/bench_install.py [--repeat 3] [--matrix] [--compare-tcg]

Needs root (images), the Debian mirror and apt-cacher-ng (`make setup`); --package-proxy none
measures the same run without the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmharness.engine.attempt import ImageRef, RunContext, collect, prepare
from vmharness.images.cache import ImageCache
from vmharness.images.recipe import load_recipe
from vmharness.spec import PackageSet, Platform, Run, Source, TestSettings, VMSettings
from vmharness.vm import qemu
from vmharness.vm.accel import choose_accelerator
from vmharness.vm.pkgproxy import PackageProxy
from vmharness.vm.qemu import LocalVMs

REPO = Path(__file__).resolve().parents[1]
APT_EXIT = re.compile(r"^\[\s*([\d.]+)s\] apt-get (update|install) exited (\d+)")
UPDATE_SKIPPED = re.compile(r"\[\s*([\d.]+)s\] apt-get (update) skipped")


def curl_run(i: int) -> Run:
    return Run(
        id=f"{i:04d}",
        platform=Platform("debian-12", recipe="debian-12"),
        source=Source("image"),
        package_set=PackageSet("curl", packages=("curl",)),
        test=TestSettings(command="curl --version", timeout_s=120, format="exit-code"),
        vm=VMSettings(memory_mib=1024, cpus=1, network="user", wall_timeout_s=900),
    )


def one(image: ImageRef, accel: str, tmp: Path, i: int, store: Path, proxy: str | None) -> dict:
    run = curl_run(i)
    ctx = RunContext(run_dir=tmp, boot="snapshot", snapshot_store=store, package_proxy=proxy)
    t0 = time.monotonic()
    job, phases = prepare(run, image, ctx, 1)
    outcome = LocalVMs(accel)(job)
    result = collect(run, job, outcome, ctx, 1, phases)
    total = time.monotonic() - t0
    if result.status != "pass":
        raise SystemExit(f"the curl run did not pass: {result.status}: {result.reason}")
    out = tmp / "runs" / run.id / "output"
    agent = json.loads((out / "result.json").read_text())
    ph = {p["name"]: p for p in agent["phases"]}
    row: dict[str, float] = {}
    if "restore" in outcome.phases:
        row["restore (load state, plug disks)"] = outcome.phases["restore"]
    for name in ("read-conditions", "udev", "network", "packages-before"):
        if name in ph:
            row[name] = ph[name]["duration_s"]
    exits = {}
    for line in (out / "agent.log").read_text().splitlines():
        m = APT_EXIT.match(line) or UPDATE_SKIPPED.match(line)
        if m:
            exits[m.group(2)] = float(m.group(1))
    start = ph["install"]["start_s"]
    row["apt-get update (or the check that skips it)"] = exits["update"] - start
    row["apt-get install"] = exits["install"] - exits["update"]
    row["packages-after-install"] = ph["packages-after-install"]["duration_s"]
    row["test"] = ph["test"]["duration_s"]
    row["agent after test (logs, sync)"] = agent["duration_s"] - (
        ph["test"]["start_s"] + ph["test"]["duration_s"]
    )
    row["rest (qemu start, power-off, extraction)"] = total - sum(row.values())
    row["total"] = total
    row["_fallback"] = float("package proxy not used" in (out / "agent.log").read_text())
    if "snapshot" in outcome.phases:
        row["_snapshot"] = outcome.phases["snapshot"]
    return row


def mirror_fetches(log: Path, offset: int) -> tuple[int, int, int]:
    """Bytes the proxy fetched from upstream since OFFSET, the .debs among them, and files."""
    if not log.exists():
        return 0, 0, 0
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    total = debs = files = 0
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) >= 5 and parts[1] == "I":
            total += int(parts[2])
            files += 1
            debs += parts[4].endswith(".deb")
    return total, debs, files


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def matrix(cache: ImageCache) -> None:
    proxy = PackageProxy(cache.root)
    for recipe in ("debian-12", "debian-13"):  # built (or found) before any timing
        cache.get(load_recipe(recipe), progress=lambda m: None)
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    argv = [str(Path(sys.executable).parent / "vmharness")]
    if not Path(argv[0]).is_file():
        argv = [sys.executable, "-m", "vmharness.cli"]
    proxy.clear()
    print(f"\nexamples/matrix.yaml, 8 runs, 2 at once; package cache {proxy.folder} cleared")
    for label in ("cold", "warm"):
        before = log_size(proxy.access_log)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.monotonic()
            proc = subprocess.run(
                [*argv, "run", str(REPO / "examples" / "matrix.yaml"), "--jobs", "2"]
                + ["--out", f"{tmp}/run", "--json", f"{tmp}/r.json"],
                env=env,
                capture_output=True,
                text=True,
            )
            wall = time.monotonic() - t0
            runs = json.loads(Path(f"{tmp}/r.json").read_text())["runs"] if proc.stdout else []
        fetched, debs, files = mirror_fetches(proxy.access_log, before)
        statuses = sorted({r["status"] for r in runs})
        per_run = sorted(r["duration_s"] for r in runs)
        print(
            f"  {label}: wall {wall:6.1f} s, exit {proc.returncode}, statuses {statuses}, "
            f"per run {per_run[0]:.0f}-{per_run[-1]:.0f} s; fetched from the mirrors "
            f"{fetched / 1e6:.2f} MB in {files} file(s), of which {debs} .deb"
        )
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-2000:])


# Software emulation as it was before guests lost ERMS/FSRM and address-space randomisation.
TCG_BEFORE = {"TCG_CPU": "max", "TCG_KERNEL_FLAGS": ""}


def compare_tcg(image: ImageRef, accel: str, tmp: Path, store: Path, url: str | None, n: int):
    now = {name: getattr(qemu, name) for name in TCG_BEFORE}
    totals: dict[str, list[float]] = {"before": [], "now": []}
    installs: dict[str, list[float]] = {"before": [], "now": []}
    try:
        for i in range(n + 1):  # the first round makes both snapshots
            for label, settings in (("before", TCG_BEFORE), ("now", now)):
                for name, value in settings.items():
                    setattr(qemu, name, value)
                row = one(image, accel, tmp, 100 + 2 * i + (label == "now"), store, url)
                if i:
                    totals[label].append(row["total"])
                    installs[label].append(row["apt-get install"])
    finally:
        for name, value in now.items():
            setattr(qemu, name, value)
    med = {label: statistics.median(values) for label, values in totals.items()}
    print(f"\nthe curl run, software emulation before / now, alternated {n} times:")
    for label, settings in (("before", TCG_BEFORE), ("now", now)):
        print(
            f"  {label:6} -cpu {settings['TCG_CPU']}, kernel +'{settings['TCG_KERNEL_FLAGS']}': "
            f"total {med[label]:.2f} s, apt-get install {statistics.median(installs[label]):.2f} s"
        )
    print(f"  before / now: {med['before'] / med['now']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--matrix", action="store_true", help="also examples/matrix.yaml cold/warm")
    ap.add_argument("--package-proxy", default="auto", help="auto (default) or none")
    ap.add_argument("--keep", metavar="DIR", help="keep the runs' folders (logs) in DIR")
    ap.add_argument(
        "--compare-tcg", action="store_true", help="also the emulation settings before/now"
    )
    args = ap.parse_args()
    cache = ImageCache()
    image = ImageRef.from_cache(cache.get(load_recipe("debian-12"), progress=lambda m: None))
    assert image.kernel is not None
    accel = choose_accelerator(image.kernel, cache.root, say=print)
    print(f"accelerator {accel}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    proxy = PackageProxy(cache.root)
    url = proxy.start().guest_url if args.package_proxy == "auto" else None
    try:
        rows = []
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = args.keep or tmp_dir
            Path(tmp).mkdir(parents=True, exist_ok=True)
            first = one(image, accel, Path(tmp), 0, cache.root / "snapshots", url)
            snap = first.get("_snapshot")
            made = f", making the snapshot {snap:.1f} s" if snap else ""
            print(f"warm-up run (makes snapshot, fills cache): {first['total']:.1f} s{made}")
            for i in range(1, args.repeat + 1):
                rows.append(one(image, accel, Path(tmp), i, cache.root / "snapshots", url))
                print(f"  run {i}: {rows[-1]['total']:.1f} s")
        print(f"\none run installing curl from the Debian mirror, steady state, proxy {url}:")
        for key in rows[0]:
            if not key.startswith("_"):
                print(f"  {key:42} {statistics.median(r[key] for r in rows):6.2f} s")
        if any(r["_fallback"] for r in rows):
            print("  (some runs fell back to the mirror: see their agent.log)")
        if args.compare_tcg and accel != "tcg":
            print(f"\n--compare-tcg: not measured, the accelerator here is {accel}")
        if args.compare_tcg and accel == "tcg":
            with tempfile.TemporaryDirectory() as tmp_dir:
                compare_tcg(image, accel, Path(tmp_dir), cache.root / "snapshots", url, args.repeat)
        if args.matrix:
            proxy.release()
            matrix(cache)
    finally:
        proxy.release()


if __name__ == "__main__":
    main()
