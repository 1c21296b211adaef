"""Real VMs under qemu (TCG on these machines): the whole path through the CLI, both boot ways,
faults, resume after kill -9, and the automatic retry of infrastructure failures.

Boots are the cost (tens of seconds each under TCG on 2 cores), so they are grouped: each
module fixture below runs one `vmharness` invocation (two VMs at once where runs can go
together) and several tests check its results. About a dozen boots in all.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    EXAMPLES,
    cli_env,
    kill_pids,
    qemu_pids_under,
    run_cli,
    spec_text,
    vmharness_argv,
)

pytestmark = pytest.mark.vm

CONTRACT = {
    "id",
    "platform",
    "source",
    "package_set",
    "status",
    "reason",
    "duration_s",
    "tests",
    "log_dir",
}
FINAL = {"pass", "fail", "install", "update", "cleanup", "ignore", "timeout", "died"}
RUN_TIMEOUT_S = 600  # per vmharness invocation: a hard stop if something hangs for real


def snapshot(root: Path, exclude: Path) -> dict[str, tuple[int, int]]:
    """Files under root except those whose path starts with `exclude` (run folders and their
    logs), with size and mtime: what a run must not touch."""
    out = {}
    for p in root.rglob("*"):
        if str(p).startswith(str(exclude)) or not p.is_file():
            continue
        st = p.stat()
        out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


def image_state(image) -> dict[str, tuple[int, int, int]]:
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in image.folder.iterdir()
    }


def runs_by_label(results_json: Path) -> dict[str, dict]:
    data = json.loads(results_json.read_text())
    return {r["package_set"]: r for r in data["runs"]}


def db_rows(run_dir: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(run_dir / "state.sqlite")
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def start_cli(*args: str | Path, log: Path) -> subprocess.Popen[bytes]:
    """`vmharness ARGS` in the background, in its own process group, output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            vmharness_argv(*args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            start_new_session=True,
        )


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = RUN_TIMEOUT_S) -> int:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = -9
    print(f"--- {log.name} (exit {code}) ---\n{log.read_text(errors='replace')[-5000:]}")
    return code


# -- the smoke spec, both boot ways at once --------------------------------------------------
@pytest.fixture(scope="module")
def smoke_runs(base_image, tmp_path_factory):
    """examples/smoke.yaml twice at once: direct kernel boot, and the image's own bootloader."""
    base = tmp_path_factory.mktemp("smoke")
    before = image_state(base_image)
    t0 = time.monotonic()
    procs = {}
    for boot in ("kernel", "disk"):
        out = base / boot
        procs[boot] = (
            start_cli(
                "run",
                EXAMPLES / "smoke.yaml",
                "--out",
                out,
                "--json",
                out / "r.json",
                "--boot",
                boot,
                "--retries",
                "0",
                log=base / f"{boot}.log",
            ),
            out,
        )
    done = {boot: (finish(p, base / f"{boot}.log"), out) for boot, (p, out) in procs.items()}
    print(f"smoke, both boot ways at once: {time.monotonic() - t0:.1f}s")
    assert image_state(base_image) == before, "a run modified the base image"
    kill_pids(left := qemu_pids_under(base))
    assert not left, "qemu still running after vmharness ended"
    return done


def _check_smoke(code: int, out: Path) -> dict:
    assert code == 0, f"exit {code}"
    data = json.loads((out / "r.json").read_text())
    (run,) = data["runs"]
    assert set(run) >= CONTRACT, CONTRACT - set(run)
    assert set(run["tests"]) >= {"ok", "fail", "error", "skip"}
    assert run["status"] == "pass", run["reason"]
    assert run["tests"]["ok"] == 5 and run["tests"]["fail"] == 0
    assert run["duration_s"] > 0
    log_dir = out / run["log_dir"]
    assert (log_dir / "output" / "test.log").is_file()
    assert "ok 5 -" in (log_dir / "output" / "test.log").read_text()
    assert (log_dir / "output" / "test" / "smoke.txt").is_file()
    assert (log_dir / "output" / "agent.log").is_file()
    assert (log_dir / "console.log").stat().st_size > 0
    assert json.loads((log_dir / "output" / "result.json").read_text())["test_exit_code"] == 0
    for name in ("report.html", "junit.xml", "results.json"):
        assert (out / name).is_file(), name
    return run


def test_smoke_spec_passes_end_to_end(smoke_runs) -> None:
    code, out = smoke_runs["kernel"]
    run = _check_smoke(code, out)
    print(
        f"smoke run (direct kernel boot): {run['duration_s']:.1f}s, "
        f"accelerator {run.get('accelerator')}, phases {run.get('phases')}"
    )
    assert run.get("accelerator") in ("kvm", "tcg")
    command = (out / run["log_dir"] / "work" / "qemu-command.txt").read_text()
    assert " -kernel " in command


def test_smoke_spec_boots_from_its_own_disk(smoke_runs) -> None:
    """Plain SeaBIOS + the bootloader on the image, as HTCondor's VM universe boots it."""
    code, out = smoke_runs["disk"]
    run = _check_smoke(code, out)
    print(f"smoke run (boot from disk): {run['duration_s']:.1f}s")
    command = (out / run["log_dir"] / "work" / "qemu-command.txt").read_text()
    assert " -kernel " not in command and " -initrd " not in command


# -- faults: one matrix, two VMs at once -----------------------------------------------------
FAULTS = """\
case "$(sed -n 's/^package_set = "\\(.*\\)"$/\\1/p' /run/vmharness/input/conditions.toml)" in
  hang) echo "stopping the agent"; kill -STOP $PPID ;;
  panic) echo c > /proc/sysrq-trigger ;;
  agent-kill) kill -9 $PPID ;;
  disk-full) dd if=/dev/zero of=$VMHARNESS_RESULTS_DIR/big bs=1M count=200; exit 4 ;;
esac
"""
FAULT_SETS = ["hang", "panic", "agent-kill", "disk-full"]


# Three vmharness processes at once, each running its runs one after another, sharing the image
# cache. Two of the VMs only idle until their wall-clock timeout, so the CPU-bound ones are about
# two at a time on 2 cores. (One `--jobs 3` process would do the same, but RunDB shares one
# sqlite connection between threads without a lock: see
# test_state.py::test_transactions_from_two_threads.)
# The `debug` run's test passes, but `vm.debug: true` keeps its VM up instead of powering off.
FAULT_GROUPS = [
    (["hang"], {}),
    (["panic", "agent-kill", "disk-full"], {}),
    (["debug"], {"debug": True}),
]


@pytest.fixture(scope="module")
def faults(base_image, tmp_path_factory):
    """Four runs, each failing its own way, with one automatic retry for infra failures.

    The test command picks its fault by the run's package-set label (read from the conditions
    file on the input disk), so one spec covers them all.
    """
    base = tmp_path_factory.mktemp("faults")
    (base / "victim.txt").write_text("must stay\n")
    groups = []
    for n, (labels, options) in enumerate(FAULT_GROUPS):
        spec = base / f"faults-{n}.yaml"
        spec.write_text(
            spec_text(
                FAULTS,
                package_sets=labels,
                timeout="60s",
                wall_timeout="90s",
                output_size="16M",
                **options,
            )
        )
        groups.append((spec, base / f"run-{n}", base / f"run-{n}.log"))
    before = snapshot(base, exclude=base / "run-")
    image_before = image_state(base_image)
    t0 = time.monotonic()
    procs = [
        start_cli(
            "run",
            spec,
            "--out",
            out,
            "--json",
            out / "r.json",
            "--jobs",
            "1",
            "--retries",
            "1",
            log=log,
        )
        for spec, out, log in groups
    ]
    codes = [finish(proc, log) for proc, (_spec, _out, log) in zip(procs, groups, strict=True)]
    print(
        f"fault runs ({sum(len(g) for g, _ in FAULT_GROUPS)} runs in {len(groups)} processes, "
        f"--retries 1): {time.monotonic() - t0:.1f}s"
    )
    after = snapshot(base, exclude=base / "run-")
    kill_pids(left := qemu_pids_under(base))
    assert not left, "qemu still running after vmharness ended"
    for code, (_spec, _out, log) in zip(codes, groups, strict=True):
        assert code in (0, 1), f"vmharness run exited {code} (see {log.name} above)"
    runs, outs = {}, {}
    for _spec, out, _log in groups:
        for label, run in runs_by_label(out / "r.json").items():
            runs[label], outs[label] = run, out
    return {
        "codes": codes,
        "outs": outs,
        "runs": runs,
        "outside_unchanged": before == after,
        "image_unchanged": image_state(base_image) == image_before,
    }


def test_faults_exit_code_and_host_untouched(faults) -> None:
    assert faults["codes"] == [1, 1, 1]  # some runs did not pass; not an infrastructure error
    assert faults["outside_unchanged"], "a run touched files outside its run folder"
    assert faults["image_unchanged"], "a run modified the base image"


def test_guest_that_never_powers_off_times_out_with_partial_logs(faults) -> None:
    run = faults["runs"]["hang"]
    assert run["status"] == "timeout", run["reason"]
    assert "wall-clock timeout of 90s" in run["reason"]
    assert run["attempt"] == 1  # a timeout is a verdict, not retried
    log_dir = faults["outs"]["hang"] / run["log_dir"]
    agent_log = (log_dir / "output" / "agent.log").read_text()
    assert "phase test: start" in agent_log
    assert (log_dir / "console.log").is_file()
    assert (log_dir / "output" / "test.log").read_text().startswith("stopping the agent")


def test_debug_flag_keeps_the_vm_up_until_the_wall_timeout(faults) -> None:
    run = faults["runs"]["debug"]
    assert run["status"] == "timeout", run["reason"]
    assert "wall-clock timeout" in run["reason"]
    log_dir = faults["outs"]["debug"] / run["log_dir"]
    # the agent did the whole run and wrote everything before staying up
    result = json.loads((log_dir / "output" / "result.json").read_text())
    assert result["test_exit_code"] == 0
    console = (log_dir / "console.log").read_text(errors="replace")
    assert "debug set in the conditions" in console
    assert "powering off" not in console


def test_kernel_panic_is_died_with_console_kept(faults) -> None:
    run = faults["runs"]["panic"]
    assert run["status"] == "died"
    assert "kernel panic" in run["reason"].lower()
    log_dir = faults["outs"]["panic"] / run["log_dir"]
    console = (log_dir / "console.log").read_text(errors="replace")
    assert "Kernel panic" in console


def test_killed_agent_is_died_with_console_kept(faults) -> None:
    run = faults["runs"]["agent-kill"]
    assert run["status"] == "died"
    assert "agent" in run["reason"]
    log_dir = faults["outs"]["agent-kill"] / run["log_dir"]
    assert (log_dir / "console.log").stat().st_size > 0
    assert (log_dir / "output" / "agent.log").is_file()


def test_died_runs_are_retried_once(faults) -> None:
    """--retries 1: each `died` run had a second attempt, both recorded, and stays `died`."""
    for label in ("panic", "agent-kill"):
        run, out = faults["runs"][label], faults["outs"][label]
        assert run["attempt"] == 2, (label, run["reason"])
        rows = db_rows(
            out,
            f"SELECT attempt, status FROM attempts WHERE run_id = '{run['id']}' ORDER BY attempt",
        )
        assert rows == [(1, "died"), (2, "died")], (label, rows)
        # the first attempt's logs are kept beside the second's
        assert list((out / "runs").glob(f"{run['id']}.attempt1-*"))


def test_full_output_disk_still_gets_a_verdict(faults) -> None:
    run = faults["runs"]["disk-full"]
    assert run["status"] in FINAL, run
    assert run["reason"] is not None
    log_dir = faults["outs"]["disk-full"] / run["log_dir"]
    assert (log_dir / "console.log").is_file()
    big = log_dir / "output" / "test" / "big"
    if big.exists():  # whatever came back is bounded by the 16 MiB disk
        assert big.stat().st_size <= 16 << 20
    total = sum(p.stat().st_size for p in log_dir.rglob("*") if p.is_file())
    assert total < 64 << 20


def test_full_output_disk_keeps_the_test_verdict(faults) -> None:
    """The agent keeps room for result.json: the test's own exit code (4) decides: fail."""
    run = faults["runs"]["disk-full"]
    assert run["status"] == "fail", run["reason"]
    assert run["exit_code"] == 4
    assert run["attempt"] == 1


# -- resume after kill -9, with a failing and a timing-out test ------------------------------
RESUME = """\
case "$(sed -n 's/^package_set = "\\(.*\\)"$/\\1/p' /run/vmharness/input/conditions.toml)" in
  pass) echo fine ;;
  fail) echo "failing on purpose"; exit 3 ;;
  slow) echo "sleeping past the test timeout"; sleep 60 ;;
esac
"""


def _wait_for(what: str, check, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            raise AssertionError(f"vmharness ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def resumed(base_image, tmp_path_factory):
    """A 3-run matrix killed with SIGKILL (vmharness and its VMs) during run 2, then resumed."""
    base = tmp_path_factory.mktemp("resume")
    spec = base / "resume.yaml"
    spec.write_text(
        spec_text(RESUME, package_sets=["pass", "slow", "fail"], timeout="10s", wall_timeout="3m")
    )
    out = base / "run"
    t0 = time.monotonic()
    proc = start_cli(
        "run", spec, "--out", out, "--jobs", "1", "--retries", "1", log=base / "first.log"
    )
    try:
        first_done = out / "runs" / "0001" / "run.json"

        def run1_recorded() -> bool:
            if not first_done.exists():
                return False
            rows = db_rows(out, "SELECT state FROM runs WHERE id = '0001'")
            return rows == [("done",)]

        _wait_for("run 0001's verdict", run1_recorded, 300, proc)
        _wait_for("run 0002's VM", lambda: bool(qemu_pids_under(out / "runs" / "0002")), 120, proc)
        time.sleep(3)  # well inside run 0002
    finally:
        # kill -9 of vmharness's whole process group, and of its VMs (their own sessions), as
        # a reboot would
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kill_pids(qemu_pids_under(out))
    finish(proc, base / "first.log")
    killed_at = time.monotonic() - t0
    run1 = (first_done.read_bytes(), first_done.stat().st_mtime_ns)
    states_after_kill = dict(db_rows(out, "SELECT id, state FROM runs"))
    deadline = time.monotonic() + 10
    while qemu_pids_under(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not qemu_pids_under(out), "the killed VMs are still running"

    t1 = time.monotonic()
    proc = start_cli(
        "resume", out, "--jobs", "1", "--json", out / "r.json", log=base / "resume.log"
    )
    code = finish(proc, base / "resume.log")
    assert code in (0, 1), f"vmharness resume exited {code} (see its output above)"
    print(f"resume: killed after {killed_at:.1f}s, resume took {time.monotonic() - t1:.1f}s")
    kill_pids(left := qemu_pids_under(base))
    assert not left, "qemu still running after vmharness ended"
    return {
        "code": code,
        "out": out,
        "run1_before": run1,
        "states_after_kill": states_after_kill,
        "resume_log": (base / "resume.log").read_text(errors="replace"),
    }


def test_resume_finishes_every_run_exactly_once(resumed) -> None:
    out = resumed["out"]
    assert resumed["states_after_kill"] == {"0001": "done", "0002": "running", "0003": "pending"}
    assert resumed["code"] == 1  # a fail and a timeout among them
    assert "interrupted" in resumed["resume_log"]
    rows = db_rows(out, "SELECT id, state, attempts, status FROM runs ORDER BY id")
    assert [(i, s) for i, s, _, _ in rows] == [("0001", "done"), ("0002", "done"), ("0003", "done")]
    attempts = db_rows(out, "SELECT run_id, attempt, status FROM attempts ORDER BY run_id, attempt")
    finals: dict[str, int] = {}
    for run_id, _attempt, status in attempts:
        if status in FINAL:
            finals[run_id] = finals.get(run_id, 0) + 1
    assert finals == {"0001": 1, "0002": 1, "0003": 1}, attempts
    # the interrupted run: its cut-short attempt recorded as such, then one real attempt
    assert [s for r, _a, s in attempts if r == "0002"] == ["interrupted", "timeout"]
    data = json.loads((out / "r.json").read_text())
    assert len(data["runs"]) == 3 and all(r["status"] in FINAL for r in data["runs"])


def test_resume_does_not_rerun_a_finished_run(resumed) -> None:
    out = resumed["out"]
    (attempts,) = db_rows(out, "SELECT attempts FROM runs WHERE id = '0001'")[0]
    assert attempts == 1
    assert db_rows(out, "SELECT attempt FROM attempts WHERE run_id = '0001'") == [(1,)]
    run_json = out / "runs" / "0001" / "run.json"
    assert (run_json.read_bytes(), run_json.stat().st_mtime_ns) == resumed["run1_before"]
    assert not list((out / "runs").glob("0001.attempt*")), "run 0001's folder was redone"
    assert json.loads(run_json.read_text())["status"] == "pass"


def test_failing_test_is_fail_and_not_retried(resumed) -> None:
    runs = runs_by_label(resumed["out"] / "r.json")
    run = runs["fail"]
    assert run["status"] == "fail"
    assert run["exit_code"] == 3
    assert run["attempt"] == 1  # test failures are results: never retried automatically


def test_test_timeout_is_timeout_with_the_agents_reason(resumed) -> None:
    runs = runs_by_label(resumed["out"] / "r.json")
    run = runs["slow"]
    assert run["status"] == "timeout"
    assert "timeout of 10s" in run["reason"] and "agent" in run["reason"]
    log = (resumed["out"] / run["log_dir"] / "output" / "test.log").read_text()
    assert "sleeping past the test timeout" in log
    assert "killed after its timeout" in log


def test_report_rebuilds_from_the_run_folder(resumed, tmp_path: Path) -> None:
    proc = run_cli("report", resumed["out"], "--json", tmp_path / "again.json", timeout=120)
    assert proc.returncode == 1
    again = json.loads((tmp_path / "again.json").read_text())
    first = json.loads((resumed["out"] / "r.json").read_text())
    assert [(r["id"], r["status"]) for r in again["runs"]] == [
        (r["id"], r["status"]) for r in first["runs"]
    ]
