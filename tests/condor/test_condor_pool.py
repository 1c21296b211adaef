"""The real single-machine HTCondor pool of scripts/condor-pool, used through the PyPI bindings.

The session fixture brings the pool up (building its Debian 13 root first on Debian 12, about a
minute once) and takes it down again afterwards if it started it. The module is skipped when not
root or when the pool cannot be made here (no mmdebstrap, no htcondor package, no mirror: the
script exits 4). Jobs of this pool run as the unprivileged pool user (root's identity is mapped
to it), so every folder a job, its shadow or DAGMan writes to is made writable by that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.condor

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "condor-pool"
DAGMAN = "/usr/bin/condor_dagman"  # where the schedd runs it (inside the pool root on Debian 12)

htcondor = pytest.importorskip("htcondor2", reason="the htcondor PyPI bindings are not installed")


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _report(figures: dict[str, float], name: str, seconds: float) -> None:
    figures[name] = round(seconds, 2)
    print(f"\n[condor-pool figure] {name}: {seconds:.2f} s", file=sys.stderr)


@pytest.fixture(scope="session")
def figures() -> dict[str, float]:
    return {}


@pytest.fixture(scope="session")
def pool(condor_pool: dict[str, str]) -> dict[str, str]:
    """The pool's client environment (the shared session fixture of conftest.py)."""
    return condor_pool


@pytest.fixture
def job_dir(pool):
    """A folder under /tmp that the pool user (who runs jobs, shadows and DAGMan) may write."""
    path = Path(tempfile.mkdtemp(prefix="vmharness-pool-test-", dir="/tmp"))
    user = pool.get("VMHARNESS_POOL_USER", "vmharness")
    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def submit(pool):
    """Submit a description to the pool's schedd, return its cluster; whatever of it is still
    queued after the test (the test failed) is removed."""
    schedd = htcondor.Schedd()
    clusters: list[int] = []

    def _submit(description) -> int:
        clusters.append(schedd.submit(description).cluster())
        return clusters[-1]

    yield _submit
    for cluster in clusters:
        if schedd.query(f"ClusterId == {cluster}", projection=["ProcId"]):
            schedd.act(htcondor.JobAction.Remove, f"ClusterId == {cluster}")


def _wait_for_terminate(log: Path, cluster: int, timeout: float) -> object:
    """The terminate event of CLUSTER.0 from its event log, or fail after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while not log.exists():
        assert time.monotonic() < deadline, f"no event log {log} after {timeout} s"
        time.sleep(0.1)
    events = htcondor.JobEventLog(str(log))
    seen = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"job {cluster} did not finish in {timeout} s; events: {seen}"
        for event in events.events(stop_after=max(1, int(left))):
            if event.cluster != cluster:
                continue
            seen.append(event.type)
            if event.type == htcondor.JobEventType.JOB_TERMINATED:
                return event
            if event.type in (htcondor.JobEventType.JOB_HELD, htcondor.JobEventType.JOB_ABORTED):
                pytest.fail(f"job {cluster} {event.type}: {dict(event)}")


def test_status_and_collector(pool):
    status = _run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "pool: up" in status.stdout
    ads = htcondor.Collector().query(htcondor.AdType.Startd, projection=["Name", "Cpus"])
    assert ads, "no slot advertised"
    assert htcondor.Schedd().query(projection=["ClusterId"]) is not None


def test_up_twice_is_fine(pool):
    again = _run("up", timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already up" in again.stderr


def test_vanilla_job_runs_and_returns_output(pool, submit, job_dir, figures):
    (job_dir / "in.txt").write_text("payload\n")
    script = job_dir / "job.sh"
    script.write_text('#!/bin/sh\necho "ran as $(id -un)"\ncat in.txt\necho made > result.txt\n')
    script.chmod(0o755)
    log = job_dir / "job.log"
    description = htcondor.Submit(
        {
            "executable": str(script),
            "output": str(job_dir / "job.out"),
            "error": str(job_dir / "job.err"),
            "log": str(log),
            "should_transfer_files": "YES",
            "when_to_transfer_output": "ON_EXIT",
            "transfer_input_files": str(job_dir / "in.txt"),
            "transfer_output_files": "result.txt",
            "initialdir": str(job_dir),
            "request_cpus": "1",
            "request_memory": "64MB",
            "request_disk": "10MB",
        }
    )
    t0 = time.monotonic()
    cluster = submit(description)
    event = _wait_for_terminate(log, cluster, timeout=120)
    _report(figures, "trivial vanilla job, submit to terminate event", time.monotonic() - t0)

    assert event["ReturnValue"] == 0, dict(event)
    out = (job_dir / "job.out").read_text()
    assert "ran as " + pool.get("VMHARNESS_POOL_USER", "vmharness") in out
    assert "payload" in out
    assert (job_dir / "result.txt").read_text() == "made\n"


def test_two_node_dag_succeeds(pool, submit, job_dir, figures):
    dags = pytest.importorskip("htcondor2.dags")
    dag = dags.DAG()
    first = dag.layer(
        name="first",
        submit_description=htcondor.Submit(
            {
                "executable": "/bin/sh",
                "arguments": "\"-c 'echo one > first.txt'\"",
                "should_transfer_files": "NO",
                "request_memory": "32MB",
            }
        ),
    )
    first.child_layer(
        name="second",
        submit_description=htcondor.Submit(
            {
                "executable": "/bin/sh",
                "arguments": "\"-c 'cat first.txt > second.txt; echo two >> second.txt'\"",
                "should_transfer_files": "NO",
                "request_memory": "32MB",
            }
        ),
    )
    dag_file = dags.write_dag(dag, job_dir, dag_file_name="two.dag")
    for path in job_dir.iterdir():  # DAGMan, as the pool user, rewrites nothing of these
        path.chmod(0o644)

    cwd = os.getcwd()
    os.chdir(job_dir)  # the DAG's submit description names its files relative to here
    try:
        description = htcondor.Submit.from_dag(
            str(dag_file),
            # The bindings (25.x) are newer than Debian's condor_dagman (23.x).
            {"DagmanPath": pool.get("VMHARNESS_POOL_DAGMAN", DAGMAN), "AllowVersionMismatch": True},
        )
    finally:
        os.chdir(cwd)
    description["initialdir"] = str(job_dir)
    t0 = time.monotonic()
    cluster = submit(description)
    event = _wait_for_terminate(job_dir / "two.dag.dagman.log", cluster, timeout=180)
    _report(figures, "2-node DAG, submit to DAGMan exit", time.monotonic() - t0)

    dagman_out = (job_dir / "two.dag.dagman.out").read_text()
    assert event["ReturnValue"] == 0, dagman_out[-2000:]
    assert "All jobs Completed!" in dagman_out or "EXITING WITH STATUS 0" in dagman_out
    assert (job_dir / "second.txt").read_text() == "one\ntwo\n"


def test_execute_side_has_qemu_disk_tools_and_vmharness(pool, submit, job_dir):
    """What a --style qemu job needs where it runs: qemu, the disk tools, and vmharness itself
    importable by the pool's job Python (VMHARNESS_POOL_PYTHON)."""
    python = pool["VMHARNESS_POOL_PYTHON"]
    script = job_dir / "probe.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        "qemu-system-x86_64 --version | head -n 1\n"
        "qemu-img --version | head -n 1\n"
        "command -v mke2fs debugfs mkfs.vfat mcopy\n"
        f"{python} -c 'import vmharness.vm.qemu, qemu.qmp'\n"
        "echo vmharness importable\n"
    )
    script.chmod(0o755)
    log = job_dir / "probe.log"
    cluster = submit(
        htcondor.Submit(
            {
                "executable": str(script),
                "output": str(job_dir / "probe.out"),
                "error": str(job_dir / "probe.err"),
                "log": str(log),
                "should_transfer_files": "NO",
                "request_memory": "64MB",
            }
        )
    )
    event = _wait_for_terminate(log, cluster, timeout=120)
    out = (job_dir / "probe.out").read_text()
    err = (job_dir / "probe.err").read_text()
    assert event["ReturnValue"] == 0, out + err
    assert "QEMU emulator version" in out
    assert "vmharness importable" in out
