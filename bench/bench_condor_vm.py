"""VM universe figures: one trivial run three ways, measured in one go, one after the other.

1. locally, `vmharness run --boot disk` (the image's own bootloader, as VM universe boots it);
2. through the pool, `vmharness submit --style qemu --boot disk --wait` (a vanilla job running
   qemu itself);
3. through the pool, `vmharness submit --style vm --wait` (a VM-universe job run by the pool's
   VM helper, vmharness-vm-gahp),
each end to end as a user waits for it, with the part that was not the VM itself, and for the
pool runs where that went (event times, 1 s resolution). Under TCG a boot from disk takes
20-50 s here.

    sudo .venv/bin/python bench/bench_condor_vm.py

Uses the pool of scripts/condor-pool (VMHARNESS_POOL_DIR / VMHARNESS_POOL_PORT choose which),
bringing it up if it is down (and down again after). Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_condor import POOL, TRIVIAL, pool_env, timed, timeline  # noqa: E402


def vm_job_split(rundir: Path) -> str:
    """For the VM job: how long it executed, how long its VM ran (the helper's outcome.json),
    and so how long HTCondor's starter took to notice the end (it waits 30 s after the start,
    then asks every VM_STATUS_INTERVAL)."""
    import htcondor2 as htcondor

    T = htcondor.JobEventType
    log = rundir / "runs" / "0001" / "condor-job.log"
    started = ended = None
    for ev in htcondor.JobEventLog(str(log)).events(stop_after=0):
        if ev.type == T.EXECUTE:
            started = ev.timestamp
        elif ev.type == T.JOB_TERMINATED:
            ended = ev.timestamp
    outcome = rundir / "runs" / "0001" / "work" / "outcome.json"
    vm_s = json.loads(outcome.read_text())["seconds"] if outcome.exists() else None
    if started is None or ended is None or vm_s is None:
        return "  (no execute/terminate events or outcome.json: no split)"
    executing = ended - started
    return (
        f"  VM job executing {executing:5.0f} s = VM {vm_s:5.1f} s + the starter noticing the "
        f"end, QUIT and output transfer {executing - vm_s:5.1f} s"
    )


def main() -> int:
    if os.geteuid() != 0:
        print("skipped: needs root (the pool, the image build)")
        return 0
    _env, started = pool_env()
    work = Path(tempfile.mkdtemp(prefix="vmh-bench-vmu-", dir="/tmp"))
    work.chmod(0o755)
    spec = work / "trivial.yaml"
    spec.write_text(TRIVIAL)
    try:
        ways = [
            ("local  `run --boot disk`", ["run", str(spec), "--boot", "disk"], "local"),
            (
                "pool   `submit --style qemu --boot disk`",
                ["submit", str(spec), "--style", "qemu", "--boot", "disk", "--wait"],
                "qemu",
            ),
            ("pool   `submit --style vm`", ["submit", str(spec), "--style", "vm", "--wait"], "vm"),
        ]
        figures = {}
        for label, args, name in ways:
            wall, _ = timed([*args, "--out", str(work / name)])
            run = json.loads((work / name / "results.json").read_text())["runs"][0]
            figures[name] = (label, wall, run["phases"].get("vm", 0.0), run["accelerator"])
            print(f"{label}: {wall:.1f} s ({run['status']})", flush=True)
        print("one trivial run (`true`, 512 MiB, 1 vCPU, boot from the image's own disk):")
        local_rest = figures["local"][1] - figures["local"][2]
        for name in ("local", "qemu", "vm"):
            label, wall, vm, accel = figures[name]
            extra = "" if name == "local" else f", pool overhead {wall - vm - local_rest:+5.1f} s"
            print(
                f"  {label:42s} {wall:6.1f} s  (VM {vm:5.1f} s {accel}, rest {wall - vm:5.1f} s"
                f"{extra})"
            )
        for name in ("qemu", "vm"):
            print(f"--style {name}:")
            if name == "vm":
                print(vm_job_split(work / name))
            timeline(work / name / "condor")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if started:
            subprocess.run([str(POOL), "down"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
