"""24 trivial runs (`true`, 512M, no network, --style qemu, --boot kernel) on 1 and on 3 execute
points of this machine, in one bench run, and how fast a bad host is left.

For each pool (scripts/condor-pool up --nodes N on its own port and state folder, taken down
after): wall time of `vmharness submit --wait`, runs per execute host, the mean VM seconds per
run, and the pool's per-run overhead = wall x slots / runs - mean VM seconds (the time a slot
was held per run beyond the VM itself). Both pools get the same number of slots (3: one
startd of 3 CPUs, or three of 1), so the figures compare the spreading, not the concurrency.
Then, with --fault: a 3-node pool whose ep2 has a broken qemu; printed are the time from ep2's
second failure (its denial) to the last job that ran on it starting, and the runs per host.

    sudo .venv/bin/python bench/bench_hosts.py [--runs 24] [--skip-fault]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOL = REPO / "scripts" / "condor-pool"
VMH = [sys.executable, "-m", "vmharness.cli"]
SLOTS = 3


def spec(runs: int) -> str:
    sets = "".join(f"  - label: s{i}\n    packages: []\n" for i in range(runs))
    return f"""\
platforms: [debian-12]
sources:
  - label: image packages
    repos: [main]
package_sets:
{sets}test:
  command: "true"
  timeout: 1m
  format: exit-code
vm:
  memory: 512M
  network: none
  output_size: 8M
  wall_timeout: 4m
"""


def pool(env: dict[str, str], *args: str) -> None:
    proc = subprocess.run([str(POOL), *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"condor-pool {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def pool_env(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([str(POOL), "env"], env=env, capture_output=True, text=True).stdout
    got = dict(env)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        got[key] = value
    return got


def one(nodes: int, runs: int, work: Path, faults: list[str]) -> dict:
    base = {
        **os.environ,
        "VMHARNESS_POOL_DIR": f"/var/lib/vmharness-pool-bench{nodes}",
        "VMHARNESS_POOL_PORT": str(9690 + nodes + 3 * bool(faults)),
        "VMHARNESS_POOL_CPUS": str(SLOTS),
        "VMHARNESS_POOL_NODE_CPUS": str(SLOTS // nodes),
    }
    args = ["up", "--nodes", str(nodes)] + [a for f in faults for a in ("--fault", f)]
    pool(base, *args)
    try:
        env = pool_env(base)
        env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb")
        name = f"n{nodes}{'-fault' if faults else ''}"
        (work / f"{name}.yaml").write_text(spec(runs))
        rundir = work / name
        t0 = time.monotonic()
        proc = subprocess.run(
            [*VMH, "submit", str(work / f"{name}.yaml"), "--style", "qemu", "--boot", "kernel",
             "--out", str(rundir), "--hosts-file", str(work / "deny" / f"{name}.json"),
             "--wait"],
            env=env, capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip
        wall = time.monotonic() - t0
        if not (rundir / "results.json").is_file():
            sys.exit(f"no results for {name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        results = json.loads((rundir / "results.json").read_text())["runs"]
        db = sqlite3.connect(rundir / "state.sqlite")
        attempts = db.execute("SELECT host, status, started, ended FROM attempts").fetchall()
        vm_s = [r.get("duration_s") or 0 for r in results if r["status"] == "pass"]
        mean_vm = sum(vm_s) / max(1, len(vm_s))
        return {
            "name": name,
            "wall": wall,
            "statuses": Counter(r["status"] for r in results),
            "per_host": Counter(h for h, s, *_ in attempts if s == "pass"),
            "died_per_host": Counter(h for h, s, *_ in attempts if s == "died"),
            "mean_vm": mean_vm,
            "overhead": wall * SLOTS / runs - mean_vm,
            "attempts": attempts,
        }
    finally:
        pool(base, "down")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--skip-fault", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmh-bench-hosts-", dir="/tmp"))
    work.chmod(0o755)
    rows = [one(1, args.runs, work, []), one(3, args.runs, work, [])]
    if not args.skip_fault:
        rows.append(one(3, args.runs, work, ["ep2=qemu"]))
    print(f"\n{args.runs} trivial runs, --style qemu --boot kernel, {SLOTS} slots, this machine")
    for r in rows:
        print(
            f"{r['name']:>9}: wall {r['wall']:6.1f} s  statuses {dict(r['statuses'])}  "
            f"VM {r['mean_vm']:.1f} s/run  pool overhead {r['overhead']:.1f} s/run"
        )
        print(f"{'':>11}passed per host {dict(sorted(r['per_host'].items()))}")
        if r["died_per_host"]:
            print(f"{'':>11}died per host {dict(r['died_per_host'])}")
    if not args.skip_fault:
        bad = [a for a in rows[-1]["attempts"] if a[0] == "ep2.vmharness-pool"]
        deaths = sorted(a[3] for a in bad if a[1] == "died" and a[3])
        if len(deaths) >= 2:
            last_start = max(a[2] for a in bad)
            print(
                f"ep2: denied at its 2nd failure; the last job started there "
                f"{last_start - deaths[1]:+.1f} s after it (negative: before the denial), "
                f"{len(bad)} attempt(s) on it in all"
            )
    print(f"(run folders in {work})")


if __name__ == "__main__":
    main()
