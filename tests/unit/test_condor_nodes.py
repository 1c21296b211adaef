"""A pool run's DAG nodes without a pool: the prep node writes plan-driven disks and job.json,
the "execute point" leaves an output disk, outcome.json and an event log, the POST script reads
them all back through the wire layer and records the verdict."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

htcondor = pytest.importorskip("htcondor2", reason="the htcondor PyPI bindings are not installed")

from vmharness.condor import job as jobfile  # noqa: E402
from vmharness.condor import nodes  # noqa: E402
from vmharness.condor import submit as condor  # noqa: E402
from vmharness.engine.attempt import RUN_FILE, ImageRef  # noqa: E402
from vmharness.results.model import RunResult  # noqa: E402
from vmharness.rundir import RunFolder  # noqa: E402
from vmharness.spec import expand, load_spec  # noqa: E402
from vmharness.vm.job import VMOutcome  # noqa: E402
from vmharness.wire.codec import read_document  # noqa: E402
from vmharness.wire.formats import RESULT  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (shutil.which("mcopy") and shutil.which("mkfs.fat") and shutil.which("mke2fs")),
    reason="needs mtools, dosfstools and e2fsprogs (make setup)",
)

SPEC = """\
platforms: [el9]
platform_map:
  el9: {{image: {image}}}
sources:
  - label: image packages
    repos: [main]
package_sets:
  - label: a
    packages: []
test:
  command: "true"
  format: exit-code
vm:
  memory: 512M
  output_size: 8M
"""
EVENTS = """\
000 (042.000.000) 2026-12-02 04:00:00 Job submitted from host: <127.0.0.1:9620>
    DAG Node: vm-{run_id}
...
001 (042.000.000) 2026-12-02 04:00:05 Job executing on host: <127.0.0.1:9620?alias=ep1.example>
...
005 (042.000.000) 2026-12-02 04:00:20 Job terminated.
\t(1) Normal termination (return value 0)
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Remote Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Run Local Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Remote Usage
\t\tUsr 0 00:00:00, Sys 0 00:00:00  -  Total Local Usage
\t0  -  Run Bytes Sent By Job
\t0  -  Run Bytes Received By Job
\t0  -  Total Bytes Sent By Job
\t0  -  Total Bytes Received By Job
...
"""
SOUND = json.dumps(
    {"version": 1, "test_exit_code": 0, "phases": [{"name": "test", "duration_s": 1}]}
)


@pytest.fixture
def submitted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A run folder as `vmharness submit --style qemu` leaves it, before DAGMan starts."""
    monkeypatch.setenv("PATH", os.environ["PATH"])  # the nodes add the system's sbin folders
    image = tmp_path / "img.qcow2"
    image.write_bytes(b"QFI\xfb" + b"\0" * 4096)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(SPEC.format(image=image))
    spec = load_spec(spec_file)
    runs = expand(spec)
    run_dir = tmp_path / "run"
    folder = RunFolder.create(spec, runs, run_dir, backend="condor")
    folder.db.close()
    opts = condor.SubmitOptions(style="qemu", node_python="/py", job_python="/jpy", owner=None)
    staged = condor.stage_images({"el9": ImageRef.given(image)}, run_dir / "images")
    condor.write_dag(run_dir, runs, staged, opts)
    return run_dir, runs[0].id, staged["el9"].name


def execute_point(run_dir: Path, run_id: str, result_json: str) -> None:
    """What comes back from the pool: the output disk the guest wrote, run-one's outcome.json,
    the job's event log."""
    work = run_dir / "runs" / run_id / "work"
    # HTCondor brings the disk back under another name (transfer_output_remaps): the empty
    # output.img stays for a start again
    returned = work / jobfile.RETURNED_OUTPUT
    shutil.copy(work / "output.img", returned)
    staging = work / "guest-files"
    staging.mkdir()
    (staging / "result.json").write_text(result_json)
    (staging / "agent.log").write_text("phase test: done\n")
    for entry in sorted(staging.iterdir()):
        subprocess.run(["mcopy", "-i", str(returned), str(entry), "::/"], check=True)
    shutil.rmtree(staging)
    # run-one reports the slot's Machine (from .machine.ad): the pool's name for the host
    outcome = VMOutcome(ended="poweroff", seconds=4.0, accelerator="tcg", host="ep1.pool")
    jobfile.write_outcome(work / jobfile.OUTCOME_FILE, outcome)
    (run_dir / "runs" / run_id / jobfile.JOB_LOG).write_text(EVENTS.format(run_id=run_id))


def verdict(run_dir: Path, run_id: str) -> RunResult:
    folder = RunFolder.open(run_dir)
    try:
        return folder.db.results()[run_id]
    finally:
        folder.db.close()


def test_prep_and_post_pass_the_runs_files_through_the_wire(submitted) -> None:
    run_dir, run_id, disk_name = submitted
    plan = jobfile.read_plan(run_dir)
    assert plan.style == "qemu" and plan.images["el9"].job_disk == disk_name
    assert nodes.node_prep(run_dir, run_id) == 0
    work = run_dir / "runs" / run_id / "work"
    desc = jobfile.read_job(work / jobfile.JOB_FILE)
    assert (desc.run_id, desc.attempt, desc.base_disk, desc.kernel) == (run_id, 1, disk_name, None)
    assert nodes.node_pre(run_dir, f"vm-{run_id}") == 0  # first try: the prep node's disks stay
    assert jobfile.read_job(work / jobfile.JOB_FILE) == desc

    execute_point(run_dir, run_id, SOUND)
    assert nodes.node_post(run_dir, f"vm-{run_id}", 0, 2, "42.0") == nodes.POST_OK
    got = verdict(run_dir, run_id)
    assert got.status == "pass", got.reason
    # the slot's Machine, not the address alias the event log has (startds may share one)
    assert (got.host, got.accelerator, got.versions["condor_job"]) == ("ep1.pool", "tcg", "42.0")
    assert got.phases["guest:test"] == 1.0 and "disks" in got.phases
    stored = read_document(run_dir / "runs" / run_id / RUN_FILE, RESULT, RunResult)
    assert stored == got
    assert not (work / "output.img").exists() and not (work / jobfile.RETURNED_OUTPUT).exists()


def test_post_gives_a_hostile_result_json_its_verdict_and_asks_for_a_retry(submitted) -> None:
    run_dir, run_id, _ = submitted
    assert nodes.node_prep(run_dir, run_id) == 0
    execute_point(run_dir, run_id, '{"version": 1, "test_exit_code": 1e999}')
    assert nodes.node_post(run_dir, f"vm-{run_id}", 0, 2, "42.0") == nodes.POST_RETRY
    got = verdict(run_dir, run_id)
    assert got.status == "died"
    assert got.reason.startswith("result.json from the guest is not valid: the number 1e999")


def test_post_without_a_readable_job_json_says_why(submitted) -> None:
    run_dir, run_id, _ = submitted
    assert nodes.node_prep(run_dir, run_id) == 0
    work = run_dir / "runs" / run_id / "work"
    (work / jobfile.JOB_FILE).write_text('{"format": 9}')
    execute_point(run_dir, run_id, SOUND)
    assert nodes.node_post(run_dir, f"vm-{run_id}", 2, 2, "42.0") == nodes.POST_FAILED
    got = verdict(run_dir, run_id)
    assert got.status == "died"
    assert "job description is missing" in got.reason and "not a job.json document" in got.reason


def test_run_one_names_the_host_by_the_slots_machine(tmp_path, monkeypatch) -> None:
    from vmharness.condor.execute import pool_name

    ad = tmp_path / ".machine.ad"
    ad.write_text('Cpus = 1\nMachine = "ep3.vmharness-pool"\nName = "slot1@ep3"\n')
    monkeypatch.setenv("_CONDOR_MACHINE_AD", str(ad))
    assert pool_name() == "ep3.vmharness-pool"
    monkeypatch.setenv("_CONDOR_MACHINE_AD", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".machine.ad").write_text("Machine = 42\n")  # not a string: no name
    assert pool_name() == ""


def test_what_a_post_script_died_of_is_kept_and_named_at_the_end(submitted) -> None:
    """DAGMan keeps only the exit code of a POST script: the error itself goes to the run
    folder, and the run that got no verdict points there."""
    run_dir, run_id, _ = submitted
    assert nodes.node_prep(run_dir, run_id) == 0
    with pytest.raises(SystemExit, match="no run 9999"):
        nodes.node_post(run_dir, "vm-9999", 0, 2, "42.0")
    kept = (run_dir / "condor" / nodes.NODE_ERRORS).read_text()
    assert "== " in kept and " post vm-9999 0 2 42.0\n" in kept
    assert "SystemExit: vmharness: no run 9999" in kept
    folder = RunFolder.open(run_dir)
    try:
        assert nodes.close_unfinished(folder) == [run_id]
        reason = folder.db.results()[run_id].reason
    finally:
        folder.db.close()
    assert nodes.NODE_ERRORS in reason and "no verdict when the DAG ended" in reason


def test_a_job_started_again_is_given_an_empty_output_disk(submitted) -> None:
    """A job HTCondor starts again (after a failed transfer, a hold, an eviction) gets the
    disks it was submitted with: what a start wrote comes back under another name."""
    run_dir, _run_id, _ = submitted
    sub = (run_dir / "condor" / "vm.sub").read_text()
    remaps = next(line for line in sub.splitlines() if line.startswith("transfer_output_remaps"))
    assert f"output.img = {jobfile.RETURNED_OUTPUT}" in remaps
    assert "console.log = " in remaps
    for style in ("vm", "qemu"):
        opts = condor.SubmitOptions(style=style, node_python="/py", job_python="/jpy", owner=None)
        desc = condor.vm_description(run_dir, opts)
        assert f"output.img = {jobfile.RETURNED_OUTPUT}" in desc["transfer_output_remaps"]
