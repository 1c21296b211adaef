"""VM universe for real: `--style vm` jobs (and hand-written VM jobs) on the single-machine pool,
run by vmharness's own VM helper, vmharness-vm-gahp, which scripts/condor-pool configures.

Every test here is marked `condor` and uses the session's pool (tests/conftest.py: it honours
VMHARNESS_POOL_DIR and VMHARNESS_POOL_PORT, so a pool of one's own can be used). Under TCG a
boot from disk takes 20-50 s, and HTCondor's starter waits 30 s after a VM starts before it
looks at it, then every VM_STATUS_INTERVAL (30 s here): a VM job takes a minute at least.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

htcondor = pytest.importorskip("htcondor2", reason="the htcondor PyPI bindings are not installed")

from poolrun import pool_work_folder, vmharness  # noqa: E402

from vmharness.condor import gahp  # noqa: E402

pytestmark = pytest.mark.condor

REPO = Path(__file__).resolve().parents[2]
VMH = [sys.executable, "-m", "vmharness.cli"]


# -- fixtures and helpers -----------------------------------------------------------------------
class Pool:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.state = Path(env["VMHARNESS_POOL_DIR"])
        self.registry = gahp.Registry(self.state / "vm-gahp.registry")
        self.log = self.state / "local" / "log" / "VMGahpLog"

    def entries(self) -> list[dict]:
        return self.registry.entries()

    def gahp_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def exec(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO / "scripts" / "condor-pool"), "exec", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def pool(condor_pool) -> Pool:
    """The pool, with VM universe offered (scripts/condor-pool configures the helper)."""
    deadline = time.monotonic() + 90
    while True:
        ads = htcondor.Collector().query(
            htcondor.AdType.Startd,
            constraint="HasVM =?= true",
            projection=["Name", "VM_Type", "VmharnessVMGahp"],
        )
        if ads or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert ads, "no slot offers VM universe: see VMGahpLog in the pool's log folder"
    assert ads[0]["VM_Type"] == "kvm" and ads[0].get("VmharnessVMGahp")
    return Pool(condor_pool)


@pytest.fixture(scope="module")
def debian_image(pool):
    from vmharness.images.cache import ImageCache
    from vmharness.images.recipe import load_recipe

    if not shutil.which("qemu-system-x86_64") or not shutil.which("mmdebstrap"):
        pytest.skip("the VM tests need qemu-system-x86 and mmdebstrap")
    return ImageCache().get(load_recipe("debian-12"), progress=lambda m: print(f"[image] {m}"))


@pytest.fixture
def work(pool: Pool):
    """A folder for run folders and hand-written jobs (tests/poolrun.py)."""
    yield from pool_work_folder("vmh-vmu-test-")


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)


def vm_name_of(ad) -> str:
    return f"{ad['User'].replace('@', '_')}_{ad['ClusterId']}.{ad['ProcId']}"


def entry_of(pool: Pool, name: str) -> dict | None:
    return next((e for e in pool.entries() if e["name"] == name), None)


def running_qemu(entry: dict | None) -> int:
    """The entry's qemu pid if that qemu runs now, else 0."""
    if not entry or not entry.get("qemu_pid"):
        return 0
    pid = int(entry["qemu_pid"])
    return pid if gahp._alive(pid, entry.get("qemu_start")) else 0


def alive(pid: int, start: str | None) -> bool:
    return gahp._alive(pid, start)


def qemu_named(name: str) -> list[int]:
    """qemu processes started for the VM called `name` (its -name argument)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv and b"qemu-system" in argv[0] and name.encode() in argv:
                found.append(int(entry.name))
    return found


def run_keys() -> set[str]:
    """What every run in results.json carries (local runs and pool runs alike)."""
    return {
        "id",
        "platform",
        "source",
        "package_set",
        "status",
        "reason",
        "duration_s",
        "tests",
        "log_dir",
        "accelerator",
        "host",
    }


# -- 1. the smoke spec --------------------------------------------------------------------------
def test_smoke_spec_as_a_vm_universe_job(pool: Pool, debian_image, work: Path) -> None:
    rundir = work / "smoke"
    proc = vmharness(
        "submit",
        REPO / "examples" / "smoke.yaml",
        "--style",
        "vm",
        "--wait",
        "--out",
        rundir,
        "--json",
        work / "smoke.json",
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr  # the pool offers VM universe: nothing to warn about
    results = json.loads((rundir / "results.json").read_text())
    [run] = results["runs"]
    assert run_keys() <= set(run), set(run)
    assert run["status"] == "pass" and run["tests"]["ok"] == 5, run
    assert run["accelerator"] in ("tcg", "kvm")  # said by the helper (outcome.json)
    assert run["versions"]["condor_job"]
    log_dir = rundir / run["log_dir"]
    console = (log_dir / "console.log").read_text(errors="replace")
    assert "vmharness-agent" in console
    for name in ("output/result.json", "run.json", "conditions.toml", "condor-job.log"):
        assert (log_dir / name).is_file(), name
    # only the output disk, the console and outcome.json came back: never the base image
    assert not list((log_dir / "work").glob("*.qcow2"))
    assert {p.name for p in (log_dir / "work").iterdir()} <= {"job.json", "outcome.json"}
    [ad] = htcondor.Schedd().history(
        f'VmharnessRunDir == "{rundir}" && JobUniverse == 13',
        projection=["TransferOutput", "VMPARAM_vm_Disk", "Requirements", "ClusterId"],
        match=1,
    )
    assert ad["TransferOutput"] == "output.img,console.log,outcome.json"
    disks = ad["VMPARAM_vm_Disk"].split(",")
    assert disks[0].endswith(".qcow2:vda:w:qcow2")
    assert disks[1:] == ["input.img:vdb:r:raw", "output.img:vdc:w:raw"]
    assert "VmharnessVMGahp" in str(ad["Requirements"])
    log = pool.gahp_log()
    assert "accelerator" in log and "ended (poweroff)" in log
    assert not qemu_named(f"vmharness_vmharness-pool_{ad['ClusterId']}.0")
    for report in ("report.html", "junit.xml"):
        assert (rundir / report).is_file()


# -- 2. a 2 x 2 matrix with one failing test ---------------------------------------------------
MATRIX = """\
platforms: [el8, el9]
platform_map:
  el8: debian-12
  el9: debian-12
sources:
  - label: image packages
    repos: [main]
package_sets:
  - label: a
    packages: []
  - label: b
    packages: []
test:
  command: |
    c=/run/vmharness/input/conditions.toml
    if grep -q '^platform = "el9"' $c && grep -q '^package_set = "b"' $c; then
      echo "not ok 1 - el9 with b is broken"; exit 1
    fi
    echo "ok 1 - fine"
  timeout: 2m
  format: exit-code
vm:
  memory: 384M
  network: none
  output_size: 8M
  wall_timeout: 8m
"""


def test_matrix_with_a_failing_test(pool: Pool, debian_image, work: Path) -> None:
    spec = work / "matrix.yaml"
    spec.write_text(MATRIX)
    rundir = work / "matrix"
    proc = vmharness("submit", spec, "--style", "vm", "--wait", "--out", rundir, timeout=1500)
    assert proc.returncode == 1, proc.stderr  # one run did not pass
    from vmharness.rundir import RunFolder

    folder = RunFolder.open(rundir)
    runs = {r.id: r for r in folder.db.runs()}
    statuses = {
        (runs[i].platform.name, runs[i].package_set.label): r.status
        for i, r in folder.db.results().items()
    }
    assert statuses == {
        ("el8", "a"): "pass",
        ("el8", "b"): "pass",
        ("el9", "a"): "pass",
        ("el9", "b"): "fail",
    }
    failed = next(i for i, r in folder.db.results().items() if r.status == "fail")
    assert len(folder.db.attempts(failed)) == 1  # a test failure is a result: never retried
    assert (rundir / "runs" / failed / "console.log").is_file()
    assert pool.entries() == [] or all(not running_qemu(e) for e in pool.entries())


# -- 3 and 4. a hung guest (timeout) and condor_rm (died), in one DAG ---------------------------
HANG = """\
platforms: [debian-12]
sources:
  - label: image packages
    repos: [main]
package_sets:
  - label: hang
    packages: []
  - label: removed
    packages: []
test:
  # a hung guest: the agent is frozen, so nothing in the VM ends it at the test's timeout
  command: "echo started; kill -STOP $PPID; sleep 900"
  timeout: 60s
  format: exit-code
vm:
  memory: 384M
  network: none
  output_size: 8M
  wall_timeout: 100s
"""


def test_hung_guest_times_out_and_condor_rm_stops_the_vm(
    pool: Pool, debian_image, work: Path
) -> None:
    from vmharness.condor import status
    from vmharness.rundir import RunFolder

    spec = work / "hang.yaml"
    spec.write_text(HANG)
    rundir = work / "hang"
    proc = vmharness("submit", spec, "--style", "vm", "--out", rundir)
    assert proc.returncode == 0, proc.stderr
    schedd = htcondor.Schedd()
    query = f'VmharnessRunDir == "{rundir}" && VmharnessRun == "0002" && JobUniverse == 13'

    def running_vm():
        ads = schedd.query(query + " && JobStatus == 2", projection=["ClusterId", "ProcId", "User"])
        return ads and running_qemu(entry_of(pool, vm_name_of(ads[0]))) and ads[0]

    ad = wait_for("run 0002's VM", running_vm, timeout=300)
    name = vm_name_of(ad)
    entry = entry_of(pool, name)
    qemu = running_qemu(entry)
    start = gahp._start_time(qemu)
    # HTCondor's starter sleeps 30 s right after a VM starts and hears nothing meanwhile (a
    # condor_rm then waits for it): remove the job once the starter is listening again
    time.sleep(max(0.0, 35 - (time.time() - float(entry["started_at"]))))
    t0 = time.monotonic()
    schedd.act(htcondor.JobAction.Remove, query, reason="test: removed while running")
    wait_for("qemu to go after condor_rm", lambda: not alive(qemu, start), timeout=30, every=0.2)
    gone_s = time.monotonic() - t0
    print(f"qemu gone {gone_s:.1f}s after condor_rm")
    assert gone_s < 20
    wait_for("its registry entry to go", lambda: entry_of(pool, name) is None, timeout=60)

    folder = RunFolder.open(rundir)
    st = status.wait(folder, timeout_s=900, say=print)
    assert st.dag_state == "done"
    results = folder.db.results()
    hung, removed = results["0001"], results["0002"]
    assert hung.status == "timeout", hung.reason
    assert "wall-clock timeout" in hung.reason
    console = (rundir / "runs" / "0001" / "console.log").read_text(errors="replace")
    assert "vmharness-agent" in console  # the partial console came back
    assert removed.status == "died" and "removed" in removed.reason, removed.reason
    assert len(folder.db.attempts("0002")) == 1  # a removal is not retried
    assert not [e for e in pool.entries() if running_qemu(e)]


# -- 5. a root-only disk, a missing vm_memory: held with the helper's error ---------------------
def vm_job(work: Path, name: str, **extra: str) -> dict[str, str]:
    return {
        "universe": "vm",
        "executable": name,
        "vm_type": "kvm",
        "vm_memory": "64",
        "request_memory": "256",
        "vm_networking": "false",
        "should_transfer_files": "YES",
        "when_to_transfer_output": "ON_EXIT",
        "log": f"{work}/{name}.log",
        "initialdir": str(work),
        "My.VmharnessRunDir": json.dumps(str(work)),
        **extra,
    }


def test_root_only_disk_and_missing_vm_memory_are_held(pool: Pool, work: Path) -> None:
    schedd = htcondor.Schedd()
    shadow = schedd.submit(
        htcondor.Submit(vm_job(work, "shadow", vm_disk="/etc/shadow:vda:w:raw"))
    ).cluster()
    (work / "blank.img").write_bytes(b"\0" * (1 << 20))
    nomem = schedd.submit(
        htcondor.Submit(
            vm_job(
                work,
                "nomem",
                vm_disk="blank.img:vda:w:raw",
                transfer_input_files="blank.img",
                hold="true",
            )
        )
    ).cluster()
    # condor_submit insists on vm_memory; a job ad can still lack it (edited, or made by a tool)
    schedd.edit(f"ClusterId == {nomem}", "JobVMMemory", "undefined")
    schedd.edit(
        f"ClusterId == {nomem}",
        "Requirements",
        '(TARGET.HasVM =?= true) && TARGET.VM_Type == "kvm"',
    )
    schedd.act(htcondor.JobAction.Release, f"ClusterId == {nomem}")

    def held(cluster: int):
        ads = schedd.query(
            f"ClusterId == {cluster} && JobStatus == 5",
            projection=["HoldReason", "HoldReasonCode", "HoldReasonSubCode", "NumJobStarts"],
        )
        return ads and ads[0]

    for cluster, code in ((shadow, gahp.ERR_BAD_DISK), (nomem, gahp.ERR_NO_MEMORY)):
        ad = wait_for(f"job {cluster} to be held", lambda c=cluster: held(c), timeout=240)
        assert code in ad["HoldReason"], ad
        assert ad["HoldReasonCode"] == 6  # FailedToCreateProcess: the user's mistake, held
    log = pool.gahp_log()
    assert "/etc/shadow" in log and "may not read and write it" in log
    assert "JobVMMemory is missing" in log or "JobVMMemory is undefined" in log
    for cluster in (shadow, nomem):
        assert f"_{cluster}.0: qemu" not in log  # nothing was started, nothing opened
    # vmharness says in words what the code means
    from vmharness.condor.events import explain_hold

    assert "vm_disk" in explain_hold(f"Error from slot1: {gahp.ERR_BAD_DISK}")
    assert "vm_memory" in explain_hold(gahp.ERR_NO_MEMORY)


# -- 6. a submit file written by hand, the way the original design has it -----------------------
HAND_SUB = """\
universe                = vm
executable              = osg-test
vm_type                 = kvm
vm_memory               = 2048
vm_networking           = true
vm_no_output_vm         = false
vm_vnc                  = true
periodic_hold           = (time() - JobCurrentStartDate > 14400)
periodic_release        = ( (HoldReasonCode == 3) && (NumJobStarts < 3) ) || \\
                          ( (HoldReasonCode == 6) && regexp("VMGAHP_ERR_INTERNAL", HoldReason) )
periodic_remove         = ( (JobStatus == 5) && (HoldReasonCode =?= 3) && \\
                          (NumJobStarts >= 3) ) || (time() - QDate >  43200)
request_disk            = 3GB
log                     = osg-test.log
should_transfer_files   = YES
transfer_input_files    = debian-12.dsk,input.img,output.img
vm_disk                 = debian-12.dsk:vda:w:raw,input.img:vdb:r:raw,output.img:vdc:w:raw
when_to_transfer_output = ON_EXIT
transfer_output_files   = output.img
transfer_output_remaps  = "output.img = result-image.img"
+VmharnessRunDir        = "{work}"
queue
"""

CONDITIONS = """\
version = 1
run_id = "0001"
platform = "debian-12"
source = "image packages"
package_set = "base system"
network = false
debug = false

[repositories]
install = []
upgrade = []

[packages]
install = []

[test]
command = "echo hand-made; test -r /run/vmharness/input/conditions.toml"
timeout = 300
suite = false
"""


def test_a_hand_written_submit_file(pool: Pool, debian_image, work: Path) -> None:
    """The disks as the README says to make them by hand, the job as the OSG writes it."""
    inp = work / "in"
    inp.mkdir()
    (inp / "conditions.toml").write_text(CONDITIONS)
    for cmd in (
        ["mke2fs", "-q", "-F", "-t", "ext2", "-L", "VMHINPUT", "-m", "0", "-E"]
        + ["root_owner=0:0", "-d", str(inp), str(work / "input.img"), "8M"],
        ["mkfs.fat", "-F", "16", "-n", "VMHOUTPUT", "-C", str(work / "output.img"), "65536"],
        ["qemu-img", "convert", "-O", "raw", str(debian_image.disk), str(work / "debian-12.dsk")],
    ):
        subprocess.run(cmd, check=True, capture_output=True)
    for name in ("input.img", "output.img", "debian-12.dsk"):
        (work / name).chmod(0o644)
    (work / "osg-test.sub").write_text(HAND_SUB.format(work=work))
    os.chown(work, *_pool_ids())
    sub = pool.exec("sh", "-c", f"cd {work} && condor_submit osg-test.sub")
    assert sub.returncode == 0, sub.stdout + sub.stderr
    schedd = htcondor.Schedd()
    gone = wait_for(
        "the hand-written job to finish",
        lambda: not schedd.query(f'VmharnessRunDir == "{work}"', projection=["ClusterId"]),
        timeout=900,
        every=5,
    )
    assert gone
    [ad] = schedd.history(
        f'VmharnessRunDir == "{work}"',
        projection=["ExitCode", "JobStatus", "HoldReason", "JobVMVNCConsole", "ClusterId"],
        match=1,
    )
    assert ad["JobStatus"] == 4 and ad.get("ExitCode") == 0, ad
    result = work / "result-image.img"
    assert result.is_file()  # the output disk came back under its result name
    assert not (work / "output.img.new").exists()
    from vmharness.images.extract import extract

    out = work / "extracted"
    extraction = extract(result, out, total_limit=64 << 20)
    assert extraction.error is None, extraction.error
    data = json.loads((out / "result.json").read_text())
    assert data.get("test_exit_code", data.get("exit_code")) == 0, data
    assert "hand-made" in (out / "test.log").read_text()
    log = pool.gahp_log()
    assert "not implemented, ignored: vm_vnc" in log
    assert "network user" in log  # vm_networking = true: qemu user-mode NAT


def _pool_ids() -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam(os.environ.get("VMHARNESS_POOL_USER", "vmharness"))
    return pw.pw_uid, pw.pw_gid


# -- 7. nothing left behind: vacate, periodic hold, a helper crash, a startd restart ------------
def test_nothing_is_left_behind(pool: Pool, work: Path) -> None:
    """Blank disks: SeaBIOS finds nothing to boot and waits, so qemu runs without a guest."""
    schedd = htcondor.Schedd()
    (work / "blank.img").write_bytes(b"\0" * (1 << 20))
    os.chown(work, *_pool_ids())
    base = {"vm_disk": "blank.img:vda:w:raw", "transfer_input_files": "blank.img"}
    jobs = {
        "hold": schedd.submit(
            htcondor.Submit(
                vm_job(
                    work,
                    "hold",
                    periodic_hold="JobStatus == 2 && time() - JobCurrentStartExecutingDate > 20",
                    **base,
                )
            )
        ).cluster(),
        "vacate": schedd.submit(htcondor.Submit(vm_job(work, "vacate", **base))).cluster(),
        "crash": schedd.submit(htcondor.Submit(vm_job(work, "crash", **base))).cluster(),
    }
    user = schedd.query(f"ClusterId == {jobs['hold']}", projection=["User"])[0]["User"]
    names = {k: f"{user.replace('@', '_')}_{c}.0" for k, c in jobs.items()}

    def vms_up():
        found = {k: entry_of(pool, n) for k, n in names.items()}
        return all(running_qemu(e) for e in found.values()) and found

    entries = wait_for("three VMs", vms_up, timeout=240)
    qemus = {k: (int(e["qemu_pid"]), e["qemu_start"]) for k, e in entries.items()}

    # a crash of the helper: qemu dies with it at once. HTCondor's starter then gives up (the
    # job is requeued); the crashed helper's registry entry is cleared by the next helper that
    # runs on the machine (here: the job's next start), or by kill mode
    dead_helper = int(entries["crash"]["helper_pid"])
    os.kill(dead_helper, signal.SIGKILL)
    wait_for("qemu to die with its helper", lambda: not alive(*qemus["crash"]), timeout=15)
    wait_for(
        "the crashed helper's entry to go",
        lambda: all(int(e["helper_pid"]) != dead_helper for e in pool.entries()),
        timeout=120,
    )

    # condor_vacate_job: the VM is stopped (and the job will run again)
    schedd.act(htcondor.JobAction.Vacate, f"ClusterId == {jobs['vacate']}")
    wait_for("the vacated VM to stop", lambda: not alive(*qemus["vacate"]), timeout=60)

    # the periodic hold (the wall-clock timeout of a hand-written job)
    wait_for("the periodic hold", lambda: not alive(*qemus["hold"]), timeout=180)
    wait_for(
        "the job to be held (policy: code 3)",
        lambda: schedd.query(
            f"ClusterId == {jobs['hold']} && JobStatus == 5 && HoldReasonCode == 3",
            projection=["ClusterId"],
        ),
        timeout=60,
    )
    wait_for("the held job's entry to go", lambda: entry_of(pool, names["hold"]) is None, 60)

    # a restart of the startd, with the vacated job running again
    again = wait_for(
        "the vacated job to run again",
        lambda: running_qemu(entry_of(pool, names["vacate"])) and entry_of(pool, names["vacate"]),
        timeout=240,
    )
    rerun = (int(again["qemu_pid"]), again["qemu_start"])
    restart = pool.exec("condor_restart", "-fast", "-daemon", "startd")
    assert restart.returncode == 0, restart.stdout + restart.stderr
    # (-fast: a graceful restart lets the jobs retire first, which took HTCondor 1.5 to 5 min
    # here before it told the starters; they stopped their VMs at once then)
    wait_for("the VM to stop with its startd", lambda: not alive(*rerun), timeout=120)

    schedd.act(htcondor.JobAction.Remove, f'VmharnessRunDir == "{work}"')
    # the job whose starter the fast restart killed waits for it to reconnect (its lease, 40
    # min by default): its VM is gone already; -forcex lets the job go too
    time.sleep(5)
    schedd.act(htcondor.JobAction.RemoveX, f'VmharnessRunDir == "{work}" && JobStatus == 3')
    wait_for(
        "every job to leave the queue",
        lambda: not schedd.query(f'VmharnessRunDir == "{work}"', projection=["ClusterId"]),
        timeout=120,
    )
    wait_for(
        "no registry entry and no qemu of these jobs",
        lambda: all(entry_of(pool, n) is None and not qemu_named(n) for n in names.values()),
        timeout=60,
    )
    print(textwrap.indent(pool.gahp_log()[-3000:], "  "))
    # leave the pool as found: the restarted startd offers VM universe again
    wait_for(
        "the restarted startd to offer VM universe",
        lambda: htcondor.Collector().query(
            htcondor.AdType.Startd, constraint="HasVM =?= true", projection=["Name"]
        ),
        timeout=120,
    )
