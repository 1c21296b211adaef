"""HTCondor backend figures, on the single-machine pool of scripts/condor-pool.

1. DAG generation + submission for the OSG's nightly matrix (1,564 runs, their real parameter
   files from ../shared/peer-data/vm-test-runs/parameters.d), every platform mapped to one small
   stand-in qcow2: run folder + database, image staging, DAG and submit files, hand-over to the
   pool's account, and the schedd accepting the DAGMan job. The DAG is removed right after.
2. Per-run overhead of the pool against the local backend, measured in one go: the same trivial
   run (`true`, debian-12 image, 512M, no network) once with `vmharness run` and once with
   `vmharness submit --style qemu --wait`, end to end as a user waits for it, and the part of
   each that was not the VM itself (wall time - the VM's seconds).

    sudo .venv/bin/python bench/bench_condor.py [--skip-overhead] [--skip-dag]

Brings the pool up if it is down (and takes it down again after). Needs root. Part 1 is skipped,
with a message, where ../shared is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARAMETERS = REPO.parent / "shared" / "peer-data" / "vm-test-runs" / "parameters.d"
POOL = REPO / "scripts" / "condor-pool"
VMH = [sys.executable, "-m", "vmharness.cli"]

TRIVIAL = """\
platforms: [debian-12]
sources:
  - label: image packages
    repos: [main]
package_sets:
  - label: none
    packages: []
test:
  command: "true"
  timeout: 1m
  format: exit-code
vm:
  memory: 512M
  network: none
  output_size: 8M
  wall_timeout: 5m
"""


def pool_env() -> tuple[dict[str, str], bool]:
    started = False
    if subprocess.run([str(POOL), "status"], capture_output=True).returncode != 0:
        print("starting the pool (scripts/condor-pool up)")
        up = subprocess.run([str(POOL), "up"], capture_output=True, text=True)
        if up.returncode != 0:
            raise SystemExit(f"no pool: {up.stderr.strip()[-500:]}")
        started = True
    env = {}
    out = subprocess.run([str(POOL), "env"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    os.environ.update(env)
    return env, started


def bench_dag(work: Path) -> None:
    if not PARAMETERS.is_dir():
        print(
            f"DAG bench skipped: {PARAMETERS} is absent (the OSG parameter files are in "
            "../shared, which a fresh clone does not have)"
        )
        return
    import htcondor2 as htcondor

    from vmharness.condor import submit as condor
    from vmharness.engine.local import images_for
    from vmharness.images.cache import ImageCache
    from vmharness.rundir import RunFolder
    from vmharness.spec import expand, load_spec

    htcondor.reload_config()
    standin = work / "standin.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(standin), "1G"], check=True)
    names = load_spec(PARAMETERS).platforms
    mapping = {p.name: {"image": str(standin)} for p in names}

    t0 = time.perf_counter()
    spec = load_spec(PARAMETERS, platform_map=mapping)
    runs = expand(spec)
    t1 = time.perf_counter()
    schedd = condor.connect(None)
    t2 = time.perf_counter()
    folder = RunFolder.create(spec, runs, work / "osg-run", backend="condor")
    t3 = time.perf_counter()
    from rich.console import Console

    images = images_for(runs, ImageCache(), Console(file=open(os.devnull, "w")))  # noqa: SIM115
    opts = condor.SubmitOptions(style="vm")
    done = condor.submit(folder, runs, images, opts, schedd)
    t4 = time.perf_counter()
    try:
        dag = done.dag_file.read_text()
        print(
            f"OSG matrix: {len(runs)} runs on {len(names)} platforms -> "
            f"{dag.count(chr(10) + 'JOB ')} DAG nodes + FINAL, "
            f"{len(dag) / 1e6:.2f} MB DAG file; DAGMan job {done.cluster}"
        )
        print(f"  load + expand the spec      {(t1 - t0) * 1000:7.0f} ms")
        print(f"  find the schedd             {(t2 - t1) * 1000:7.0f} ms")
        print(f"  run folder + database       {(t3 - t2) * 1000:7.0f} ms")
        print(f"  stage images                {done.seconds['images'] * 1000:7.0f} ms")
        print(f"  write DAG + hand over       {done.seconds['dag'] * 1000:7.0f} ms")
        print(f"  submit the DAGMan job       {done.seconds['submit'] * 1000:7.0f} ms")
        print(
            f"  generation + submission     {(t4 - t2):7.2f} s   (spec to accepted: "
            f"{t4 - t0:.2f} s)"
        )
        out = done.dag_file.with_name(done.dag_file.name + ".dagman.out")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = out.read_text(errors="replace") if out.exists() else ""
            if "Submitting HTCondor Node" in text or "ERROR:" in text or "EXITING" in text:
                break
            time.sleep(0.2)
        if "Submitting HTCondor Node" in text:
            print(
                f"  DAGMan parsed it and began submitting nodes "
                f"{time.perf_counter() - t4:.1f} s after the submission"
            )
        else:
            print(f"  DAGMan did not begin submitting: {text[-1500:]}")
    finally:
        condor.remove(folder, schedd, reason="bench_condor: generation benchmark only")
        deadline = time.monotonic() + 120
        constraint = f'VmharnessRunDir == "{folder.path.resolve()}"'
        while schedd.query(constraint, projection=["ClusterId"]):
            if time.monotonic() > deadline:
                print("warning: the benchmark's DAG jobs are still leaving the queue")
                break
            time.sleep(1)


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*VMH, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, COLUMNS="200", NO_COLOR="1", TERM="dumb"),
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(
            f"vmharness {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return seconds, proc


def bench_overhead(work: Path) -> None:
    spec = work / "trivial.yaml"
    spec.write_text(TRIVIAL)
    # Pool jobs boot their VM; so does the local run here (not a snapshot restore), so that
    # the difference is the pool's own overhead.
    local_s, _ = timed(["run", str(spec), "--boot", "kernel", "--out", str(work / "local")])
    pool_s, _ = timed(
        ["submit", str(spec), "--style", "qemu", "--out", str(work / "pool"), "--wait"]
    )
    figures = {}
    for name, wall in (("local", local_s), ("pool", pool_s)):
        run = json.loads((work / name / "results.json").read_text())["runs"][0]
        figures[name] = (wall, run["phases"]["vm"], run["accelerator"])
    (lw, lvm, la), (pw, pvm, pa) = figures["local"], figures["pool"]
    print(f"one trivial run, end to end (accelerator local {la}, pool {pa}):")
    print(
        f"  local  `vmharness run`                 {lw:6.1f} s  (VM {lvm:5.1f} s, "
        f"rest {lw - lvm:5.1f} s)"
    )
    print(
        f"  pool   `vmharness submit --wait`       {pw:6.1f} s  (VM {pvm:5.1f} s, "
        f"rest {pw - pvm:5.1f} s)"
    )
    print(
        f"  ratio pool/local: wall {pw / lw:.2f}x; overhead beyond the VM "
        f"{(pw - pvm) / max(lw - lvm, 0.01):.1f}x ({pw - pvm - (lw - lvm):+.1f} s per run)"
    )
    timeline(work / "pool" / "condor")


def timeline(cdir: Path) -> None:
    """Where the pool's time went, from DAGMan's and the nodes' event logs (1 s resolution)."""
    import htcondor2 as htcondor

    T = htcondor.JobEventType
    marks: list[tuple[float, str]] = []
    for ev in htcondor.JobEventLog(str(cdir / "runs.dag.dagman.log")).events(stop_after=0):
        if ev.type in (T.SUBMIT, T.EXECUTE, T.JOB_TERMINATED):
            marks.append((ev.timestamp, f"DAGMan {ev.type.name.lower()}"))
    node_of = {}
    for ev in htcondor.JobEventLog(str(cdir / "runs.dag.nodes.log")).events(stop_after=0):
        if ev.type == T.SUBMIT:
            node_of[ev.cluster] = str(ev.get("LogNotes", "")).split(":")[-1].strip()
        name = node_of.get(ev.cluster, "?")
        if ev.type in (T.SUBMIT, T.EXECUTE, T.JOB_TERMINATED, T.POST_SCRIPT_TERMINATED):
            marks.append((ev.timestamp, f"{name} {ev.type.name.lower()}"))
    marks.sort(key=lambda m: m[0])
    t0 = marks[0][0]
    print("  pool timeline (s after the DAGMan job was queued):")
    for when, what in marks:
        print(f"    {when - t0:5.0f}  {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-dag", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("skipped: needs root (the pool, the image build)")
        return 0
    _env, started = pool_env()
    work = Path(tempfile.mkdtemp(prefix="vmh-bench-condor-", dir="/tmp"))
    work.chmod(0o755)
    try:
        if not args.skip_dag:
            bench_dag(work)
        if not args.skip_overhead:
            bench_overhead(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if started:
            subprocess.run([str(POOL), "down"], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
