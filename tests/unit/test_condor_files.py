"""The files a pool run passes between its nodes and the execute point: plan.json, job.json and
outcome.json are versioned wire documents (no pool needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmharness.condor import job as jobfile
from vmharness.engine.attempt import ImageRef
from vmharness.vm.job import VMJob, VMOutcome
from vmharness.wire.codec import WireError

IMAGE = jobfile.PlanImage(
    disk=Path("/store/debian-12-0123.qcow2"),
    kernel=Path("/store/debian-12-0123.vmlinuz"),
    initrd=None,
    cmdline="console=ttyS0",
    apt_source="deb http://deb.debian.org/debian bookworm main",
    suite="bookworm",
    label="debian-12 0123",
    job_disk="debian-12-0123.qcow2",
    job_kernel="debian-12-0123.vmlinuz",
    job_initrd=None,
)
PLAN = jobfile.Plan(
    style="qemu",
    delivery="transfer",
    boot="kernel",
    held_max_s=1800,
    queue_max_s=43200,
    images={"el9": IMAGE},
)


def test_the_plan_is_a_dataclass_written_and_read_as_a_versioned_document(tmp_path: Path) -> None:
    jobfile.write_plan(tmp_path, PLAN)
    path = tmp_path / jobfile.CONDOR_DIR / jobfile.PLAN_FILE
    raw = json.loads(path.read_text())
    assert raw["format"] == 1 and raw["images"]["el9"]["job_disk"] == "debian-12-0123.qcow2"
    plan = jobfile.read_plan(tmp_path)
    assert plan == PLAN
    assert plan.images["el9"].ref == ImageRef(
        disk=IMAGE.disk,
        kernel=IMAGE.kernel,
        initrd=None,
        cmdline="console=ttyS0",
        apt_source=IMAGE.apt_source,
        suite="bookworm",
        label="debian-12 0123",
    )


def test_a_plan_of_another_version_or_shape_is_refused_naming_the_file(tmp_path: Path) -> None:
    jobfile.write_plan(tmp_path, PLAN)
    path = tmp_path / jobfile.CONDOR_DIR / jobfile.PLAN_FILE
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "format": 2}))
    with pytest.raises(WireError, match=f"^{path}: not a plan.json document of format 1"):
        jobfile.read_plan(tmp_path)
    del raw["images"]["el9"]["suite"]
    path.write_text(json.dumps(raw))
    with pytest.raises(WireError, match=r"\$\.images\.el9\.suite: missing"):
        jobfile.read_plan(tmp_path)


def test_the_job_description_round_trips_and_checks_its_format(tmp_path: Path) -> None:
    job = VMJob(
        name="vmharness-0001",
        base_disk=Path("/cache/d.qcow2"),
        kernel=Path("/cache/vmlinuz"),
        initrd=Path("/cache/initrd.img"),
        cmdline="console=ttyS0",
        input_disk=tmp_path / "input.img",
        output_disk=tmp_path / "output.img",
        workdir=tmp_path,
        console_log=tmp_path / "console.log",
        memory_mib=768,
        cpus=2,
        network="user",
        wall_timeout_s=99,
    )
    desc = jobfile.describe_job(
        job, run_id="0001", attempt=3, base="d.qcow2", kernel="k", initrd="i", phases={"a": 1.0}
    )
    path = tmp_path / jobfile.JOB_FILE
    jobfile.write_job(path, desc)
    assert jobfile.read_job(path) == desc
    back = jobfile.job_in(jobfile.read_job(path), Path("/sandbox"))
    assert (back.kernel, back.initrd, back.cmdline) == (
        Path("/sandbox/k"),
        Path("/sandbox/i"),
        "console=ttyS0",
    )
    path.write_text(json.dumps({**json.loads(path.read_text()), "memory_mib": "768"}))
    with pytest.raises(WireError, match=r"\$\.memory_mib: expected int, got str"):
        jobfile.read_job(path)
    path.write_text('{"run_id": "0001"}')
    with pytest.raises(WireError, match="not a job.json document"):
        jobfile.read_job(path)


def test_outcome_written_by_run_one_reads_back_whole(tmp_path: Path) -> None:
    path = tmp_path / jobfile.OUTCOME_FILE
    outcome = VMOutcome(
        ended="poweroff",
        seconds=12.5,
        accelerator="tcg",
        exit_code=0,
        host="ep1",
        boot="direct kernel boot",
    )
    jobfile.write_outcome(path, outcome)
    assert jobfile.read_outcome(path) == outcome
    for hostile in ('{"ended": "poweroff", "seconds": NaN, "accelerator": ""}', "[" * 100_000):
        path.write_text(hostile)
        assert jobfile.read_outcome(path) is None
