"""The engine's decisions, fast: one attempt (prepare -> VM -> collect -> decide), the retry
rule, and interrupts, with a fake VM executor in place of qemu.

The fake is a boundary stand-in only: the run's real input and output disks are made, and the
"guest" writes its files into the real FAT output disk with mtools, so extraction, parsing and
classification are the real ones. That VMs really run this way is proven in tests/vm.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from vmharness.engine.attempt import ImageRef, RunContext, execute, settle
from vmharness.engine.local import run_matrix
from vmharness.results.model import RunResult
from vmharness.rundir import RunFolder
from vmharness.spec import Run, expand, load_spec
from vmharness.vm.job import VMJob, VMOutcome

pytestmark = pytest.mark.skipif(
    not (shutil.which("mcopy") and shutil.which("mkfs.fat") and shutil.which("mke2fs")),
    reason="needs mtools, dosfstools and e2fsprogs (make setup)",
)

SPEC = """\
platforms: [debian-12]
sources:
  - label: image packages
    repos: [main]
package_sets:
{sets}
test:
  command: ./run-tests
  format: {fmt}
vm:
  memory: 512M
  network: none
"""

IMAGE = ImageRef(
    disk=Path("/nonexistent/base.qcow2"),
    kernel=None,
    initrd=None,
    cmdline="",
    apt_source="deb http://deb.debian.org/debian bookworm main",
    suite="bookworm",
    label="test image",
)


def make_runs(tmp_path: Path, labels: list[str], fmt: str = "exit-code") -> list[Run]:
    sets = "".join(f"  - label: {label}\n    packages: []\n" for label in labels)
    path = tmp_path / "spec.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(SPEC.format(sets=sets, fmt=fmt))
    return expand(load_spec(path))


def guest_writes(disk: Path, files: dict[str, str | bytes]) -> None:
    """What a guest would leave on its output disk, written into the real FAT image."""
    staging = disk.parent / "guest-files"
    for name, content in files.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        target.write_bytes(content)
    for entry in sorted(staging.iterdir()):
        subprocess.run(["mcopy", "-s", "-i", str(disk), str(entry), "::/"], check=True)
    shutil.rmtree(staging)


def agent_result(**fields: object) -> str:
    base = {"agent_version": "1", "kernel": "6.1", "hostname": "vmtest.localdomain"}
    return json.dumps({**base, **fields})


class FakeVM:
    """A VM executor that answers from a script: per run id, a list of outcomes, one per
    attempt; each outcome is (ended, files the guest leaves)."""

    def __init__(self, script: dict[str, list[tuple[str, dict[str, str | bytes]]]]) -> None:
        self.script = script
        self.jobs: list[VMJob] = []
        self.lock = threading.Lock()

    def __call__(self, job: VMJob) -> VMOutcome:
        run_id = job.name.removeprefix("vmharness-")
        with self.lock:
            self.jobs.append(job)
            ended, files = self.script[run_id].pop(0)
        assert job.input_disk.is_file() and job.output_disk.is_file()
        if files:
            guest_writes(job.output_disk, files)
        job.console_log.write_text("[    0.000000] Linux version 6.1\nvmharness-agent: start\n")
        return VMOutcome(ended=ended, seconds=0.1, accelerator="tcg", host="fake-host")


PASSED = ("poweroff", {"result.json": agent_result(test_exit_code=0), "test.log": "ok\n"})
FAILED = ("poweroff", {"result.json": agent_result(test_exit_code=1), "test.log": "no\n"})
NO_AGENT = ("poweroff", {})


def one_attempt(tmp_path: Path, outcome: tuple[str, dict[str, str | bytes]]) -> RunResult:
    run = make_runs(tmp_path, ["base"])[0]
    ctx = RunContext(run_dir=tmp_path / "rundir", boot="disk")
    return execute(run, IMAGE, ctx, FakeVM({run.id: [outcome]}))


# -- decide: what came back -> a verdict ----------------------------------------------------
def test_a_passing_test_is_pass_and_scratch_disks_are_removed(tmp_path: Path) -> None:
    result = one_attempt(tmp_path, PASSED)
    assert (result.status, result.exit_code) == ("pass", 0)
    log_dir = tmp_path / "rundir" / result.log_dir
    assert (log_dir / "output" / "test.log").read_text() == "ok\n"
    assert json.loads((log_dir / "run.json").read_text())["status"] == "pass"
    assert not (log_dir / "work" / "input.img").exists()
    assert not (log_dir / "work" / "output.img").exists()


def test_a_failing_exit_code_is_fail(tmp_path: Path) -> None:
    result = one_attempt(tmp_path, FAILED)
    assert (result.status, result.exit_code) == ("fail", 1)


def test_no_result_from_the_agent_is_died_with_why(tmp_path: Path) -> None:
    result = one_attempt(tmp_path, NO_AGENT)
    assert result.status == "died"
    # the console shows the agent started, and its disk holds nothing
    assert "could not write to the output disk" in result.reason


def test_install_and_update_failures_keep_their_status(tmp_path: Path) -> None:
    for phase in ("install", "update"):
        files = {"result.json": agent_result(failed_phase=phase, error="E: no such package")}
        result = one_attempt(tmp_path / phase, ("poweroff", files))
        assert result.status == phase
        assert "no such package" in result.reason


def test_an_unreachable_repository_is_died_but_not_the_execute_hosts(tmp_path: Path) -> None:
    """A repository outage looks the same from every execute host: counted against them, it
    would deny the whole pool (hosts.py). A guest whose own network never came up counts."""
    unreachable = agent_result(
        failed_phase="network",
        error="apt-get update: a repository could not be reached (Could not connect to x)",
        phases=[
            {"name": "network", "start_s": 0.4, "duration_s": 0.1, "ok": True},
            {"name": "install", "start_s": 0.5, "duration_s": 3.0, "ok": False},
        ],
    )
    result = one_attempt(tmp_path / "repo", ("poweroff", {"result.json": unreachable}))
    assert result.status == "died" and "could not be reached" in result.reason
    assert result.not_the_hosts.startswith("a package repository could not be reached")
    no_network = agent_result(
        failed_phase="network",
        error="no address on any interface",
        phases=[{"name": "network", "start_s": 0.4, "duration_s": 30.0, "ok": False}],
    )
    result = one_attempt(tmp_path / "net", ("poweroff", {"result.json": no_network}))
    assert result.status == "died" and result.not_the_hosts == ""


def test_a_vm_timeout_is_timeout_with_partial_logs(tmp_path: Path) -> None:
    result = one_attempt(tmp_path, ("timeout", {"test.log": "half"}))
    assert result.status == "timeout"
    assert "partial logs kept (1 file)" in result.reason


def test_a_vm_that_could_not_start_is_died(tmp_path: Path) -> None:
    result = one_attempt(tmp_path, ("error", {}))
    assert result.status == "died"


def test_junit_results_are_parsed_and_counted(tmp_path: Path) -> None:
    junit = (
        '<testsuite name="s" tests="2"><testcase name="a" classname="c"/>'
        '<testcase name="b" classname="c"><failure message="boom"/></testcase></testsuite>'
    )
    run = make_runs(tmp_path, ["base"], fmt="junit")[0]
    ctx = RunContext(run_dir=tmp_path / "rundir", boot="disk")
    files = {"result.json": agent_result(test_exit_code=1), "test/junit.xml": junit}
    result = execute(run, IMAGE, ctx, FakeVM({run.id: [("poweroff", files)]}))
    assert result.status == "fail"
    assert (result.counts.ok, result.counts.fail) == (1, 1)
    assert [(p.test, p.kind) for p in result.problems] == [("b", "FAIL")]
    assert "boom" in result.problems[0].reason + result.problems[0].message


# -- the retry rule ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "infra_before", "retries", "removed", "final"),
    [
        ("pass", 0, 2, False, True),
        ("fail", 0, 2, False, True),  # a test verdict is a result: never retried
        ("died", 0, 2, False, False),
        ("died", 1, 2, False, False),
        ("died", 2, 2, False, True),  # retries used up
        ("died", 0, 0, False, True),
        ("died", 0, 2, True, True),  # removed from the pool: not retried
    ],
)
def test_settle_retries_only_infrastructure_failures(
    status: str, infra_before: int, retries: int, removed: bool, final: bool
) -> None:
    result = RunResult(run_id="0001", status=status, reason="why", attempt=infra_before + 1)
    assert settle(result, infra_before=infra_before, retries=retries, removed=removed) is final
    assert result.reason.endswith("; retrying)") is (not final)


def matrix(
    tmp_path: Path, labels: list[str], vm: Callable[[VMJob], VMOutcome], retries: int, **kw
) -> tuple[RunFolder, dict[str, RunResult]]:
    runs = make_runs(tmp_path, labels)
    spec = load_spec(tmp_path / "spec.yaml")
    folder = RunFolder.create(spec, runs, tmp_path / "rundir", backend="local")
    ctx = RunContext(run_dir=folder.path, boot="disk")
    images = {"debian-12": IMAGE}
    from rich.console import Console

    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    results = run_matrix(
        folder.db, runs, images, ctx, vm, slots=2, retries=retries, console=quiet, **kw
    )
    return folder, results


def test_the_matrix_retries_died_runs_and_never_test_failures(tmp_path: Path) -> None:
    fake = FakeVM(
        {
            "0001": [NO_AGENT, PASSED],  # died once, then passed
            "0002": [FAILED],  # a test failure: one attempt only
            "0003": [NO_AGENT, NO_AGENT, NO_AGENT],  # died every time: 1 + 2 retries
        }
    )
    folder, results = matrix(tmp_path, ["a", "b", "c"], fake, retries=2)
    assert {k: r.status for k, r in results.items()} == {
        "0001": "pass",
        "0002": "fail",
        "0003": "died",
    }
    tries = {rid: sum(1 for j in fake.jobs if j.name.endswith(rid)) for rid in results}
    assert tries == {"0001": 2, "0002": 1, "0003": 3}
    assert [a["status"] for a in folder.db.attempts("0003")] == ["died"] * 3
    assert results["0003"].attempt == 3 and "retrying" not in results["0003"].reason
    # the first attempt's logs stay beside the retry's, for whoever debugs it
    assert any(p.name.startswith("0001.attempt1-") for p in (folder.path / "runs").iterdir())


def test_an_exception_on_our_side_is_died_and_retried(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(job: VMJob) -> VMOutcome:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("qemu-img: no space left on device")
        return FakeVM({job.name.removeprefix("vmharness-"): [PASSED]})(job)

    folder, results = matrix(tmp_path, ["a"], flaky, retries=1)
    assert results["0001"].status == "pass"
    first = folder.db.attempts("0001")[0]
    assert first["status"] == "died" and "no space left" in first["reason"]


def test_an_interrupt_stops_the_vms_and_resume_redoes_the_runs_in_flight(tmp_path: Path) -> None:
    stopped: list[int] = []
    started = threading.Event()

    def hangs_until_interrupted(job: VMJob) -> VMOutcome:
        started.set()
        raise KeyboardInterrupt  # as Ctrl-C reaches a worker

    with pytest.raises(KeyboardInterrupt):
        matrix(
            tmp_path,
            ["a", "b"],
            hangs_until_interrupted,
            retries=1,
            on_interrupt=lambda: stopped.append(1),
        )
    assert started.is_set() and stopped == [1]
    folder = RunFolder.open(tmp_path / "rundir")
    states = folder.db.states()
    assert all(state == "pending" for state, _ in states.values())  # no verdict was invented
    # the runs in flight are marked interrupted at once: resume runs them again
    tried = [a for rid in states for a in folder.db.attempts(rid)]
    assert tried and all(a["status"] == "interrupted" for a in tried)
    assert folder.db.recover_interrupted() == []
