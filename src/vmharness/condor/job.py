"""The files a pool job carries between the submit side and the execute point.

Files of one run (runs/<id>/work/ in the run folder, the VM job's initialdir):
    job.json      the job description (format below), written by prep, read by run-one and post
    input.img     input disk       output.img  output disk (the only thing the guest writes)
    outcome.json  how the VM ended (run-one writes it on the execute point; qemu style only)
and runs/<id>/condor-job.log, the VM job's HTCondor event log.

job.json (JOB_FORMAT 1): {"format", "run_id", "attempt", "name", "base_disk", "kernel",
"initrd", "cmdline", "input_disk", "output_disk", "console_log", "memory_mib", "cpus",
"network", "wall_timeout_s", "phases"}; relative paths are in the job's sandbox (transferred
files), absolute ones are on a filesystem the execute point shares. outcome.json is a VMOutcome
as JSON (`ended` poweroff|timeout|error, `seconds`, `accelerator`, `reason`, `exit_code`, `host`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..vm.job import VMJob, VMOutcome

JOB_FORMAT = 1
JOB_FILE = "job.json"
OUTCOME_FILE = "outcome.json"
JOB_LOG = "condor-job.log"  # in runs/<id>/, beside console.log
PLAN_FILE = "plan.json"  # in condor/: what the submit decided, for the nodes
CONDOR_DIR = "condor"
DAG_FILE = "runs.dag"  # in condor/
TIMEOUT_HOLD_SUBCODE = 4201  # HoldReasonSubCode of our periodic_hold (wall-clock timeout)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# -- the job description -----------------------------------------------------------------------
def job_to_json(
    job: VMJob,
    *,
    run_id: str,
    attempt: int,
    base: str,
    kernel: str | None,
    initrd: str | None,
    phases: dict[str, float],
) -> dict[str, Any]:
    """The description of a prepared VM job as the execute point sees it."""
    return {
        "format": JOB_FORMAT,
        "run_id": run_id,
        "attempt": attempt,
        "name": job.name,
        "base_disk": base,
        "kernel": kernel,
        "initrd": initrd,
        "cmdline": job.cmdline,
        "input_disk": job.input_disk.name,
        "output_disk": job.output_disk.name,
        "console_log": "console.log",
        "memory_mib": job.memory_mib,
        "cpus": job.cpus,
        "network": job.network,
        "wall_timeout_s": job.wall_timeout_s,
        "phases": {k: round(v, 3) for k, v in phases.items()},
    }


def read_job(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != JOB_FORMAT:
        raise ValueError(f"{path} is not a vmharness job description (format {JOB_FORMAT})")
    return data


def job_in(desc: dict[str, Any], sandbox: Path) -> VMJob:
    """The VMJob a description names, with relative paths taken in `sandbox`."""

    def where(name: str | None) -> Path | None:
        return None if not name else sandbox / name  # an absolute name stays as it is

    return VMJob(
        name=str(desc["name"]),
        base_disk=sandbox / desc["base_disk"],
        kernel=where(desc.get("kernel")),
        initrd=where(desc.get("initrd")),
        cmdline=str(desc.get("cmdline") or ""),
        input_disk=sandbox / desc["input_disk"],
        output_disk=sandbox / desc["output_disk"],
        workdir=sandbox / "vm",
        console_log=sandbox / desc.get("console_log", "console.log"),
        memory_mib=int(desc["memory_mib"]),
        cpus=int(desc["cpus"]),
        network=str(desc["network"]),
        wall_timeout_s=int(desc["wall_timeout_s"]),
    )


def read_outcome(path: Path) -> VMOutcome | None:
    """outcome.json as written by run-one; None when absent or not what it should be."""
    try:
        data = json.loads(path.read_text()[:65536])
        ended = data["ended"]
        if ended not in ("poweroff", "timeout", "error"):
            return None
        code = data.get("exit_code")
        return VMOutcome(
            ended=ended,
            seconds=float(data.get("seconds") or 0.0),
            accelerator=str(data.get("accelerator") or "")[:40],
            reason=str(data.get("reason") or "")[:2000],
            exit_code=code if isinstance(code, int) else None,
            host=str(data.get("host") or "")[:200],
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
