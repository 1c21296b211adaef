"""The files a pool job carries between the submit side and the execute point.

Files of one run (runs/<id>/work/ in the run folder, the VM job's initialdir):
    job.json      the job description (format below), written by prep, read by run-one and post
    input.img     input disk       output.img  output disk (the only thing the guest writes)
    outcome.json  how the VM ended (run-one writes it on the execute point; qemu style only)
and runs/<id>/condor-job.log, the VM job's HTCondor event log.

job.json is a JobDescription document (wire/formats.py JOB): {"format", "run_id", "attempt",
"name", "base_disk", "kernel", "initrd", "cmdline", "input_disk", "output_disk", "console_log",
"memory_mib", "cpus", "network", "wall_timeout_s", "phases"}; relative paths are in the job's
sandbox (transferred files), absolute ones are on a filesystem the execute point shares.
outcome.json is a VMOutcome document (OUTCOME: `ended` poweroff|timeout|error, `seconds`,
`accelerator`, `reason`, `exit_code`, `host`, ...). condor/plan.json, what a submit decided for
the nodes, is a Plan document (PLAN).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..engine.attempt import ImageRef
from ..vm.job import VMJob, VMOutcome
from ..wire.codec import WireError, read_document, write_document
from ..wire.formats import JOB, OUTCOME, PLAN

JOB_FILE = "job.json"
OUTCOME_FILE = "outcome.json"
# The output disk as it comes back (transfer_output_remaps): the empty output.img the job was
# given stays as it was, so a job HTCondor starts again (after a hold or an eviction) gets an
# empty disk, never what an earlier start wrote.
RETURNED_OUTPUT = "output.returned.img"
JOB_LOG = "condor-job.log"  # in runs/<id>/, beside console.log
PLAN_FILE = "plan.json"  # in condor/: what the submit decided, for the nodes
CONDOR_DIR = "condor"
DAG_FILE = "runs.dag"  # in condor/
TIMEOUT_HOLD_SUBCODE = 4201  # HoldReasonSubCode of our periodic_hold (wall-clock timeout)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENDINGS = ("poweroff", "timeout", "error")


# -- the job description -----------------------------------------------------------------------
@dataclass(frozen=True)
class JobDescription:
    """A prepared VM job as the execute point sees it (job.json)."""

    run_id: str
    attempt: int
    name: str
    base_disk: str  # relative: in the job's sandbox; absolute: on a shared filesystem
    kernel: str | None
    initrd: str | None
    cmdline: str
    input_disk: str
    output_disk: str
    memory_mib: int
    cpus: int
    network: str
    wall_timeout_s: int
    console_log: str = "console.log"
    phases: dict[str, float] = field(default_factory=dict)  # the submit side's, so far


def describe_job(
    job: VMJob,
    *,
    run_id: str,
    attempt: int,
    base: str,
    kernel: str | None,
    initrd: str | None,
    phases: dict[str, float],
) -> JobDescription:
    return JobDescription(
        run_id=run_id,
        attempt=attempt,
        name=job.name,
        base_disk=base,
        kernel=kernel,
        initrd=initrd,
        cmdline=job.cmdline,
        input_disk=job.input_disk.name,
        output_disk=job.output_disk.name,
        memory_mib=job.memory_mib,
        cpus=job.cpus,
        network=job.network,
        wall_timeout_s=job.wall_timeout_s,
        phases={k: round(v, 3) for k, v in phases.items()},
    )


def write_job(path: Path, desc: JobDescription) -> None:
    write_document(path, JOB, desc)


def read_job(path: Path) -> JobDescription:
    """OSError when it cannot be read; WireError (a ValueError) when it is not a job.json."""
    return read_document(path, JOB, JobDescription)


def job_in(desc: JobDescription, sandbox: Path) -> VMJob:
    """The VMJob a description names, with relative paths taken in `sandbox`."""

    def where(name: str | None) -> Path | None:
        return None if not name else sandbox / name  # an absolute name stays as it is

    return VMJob(
        name=desc.name,
        base_disk=sandbox / desc.base_disk,
        kernel=where(desc.kernel),
        initrd=where(desc.initrd),
        cmdline=desc.cmdline,
        input_disk=sandbox / desc.input_disk,
        output_disk=sandbox / desc.output_disk,
        workdir=sandbox / "vm",
        console_log=sandbox / desc.console_log,
        memory_mib=desc.memory_mib,
        cpus=desc.cpus,
        network=desc.network,
        wall_timeout_s=desc.wall_timeout_s,
    )


# -- how the VM ended ---------------------------------------------------------------------------
def write_outcome(path: Path, outcome: VMOutcome) -> None:
    write_document(path, OUTCOME, outcome)


def read_outcome(path: Path) -> VMOutcome | None:
    """outcome.json as run-one (or its shell wrapper) wrote it on the execute point; None when
    absent or not what it should be. A field of the wrong type takes its default."""
    try:
        got = read_document(path, OUTCOME, VMOutcome, lenient=True)
    except (OSError, WireError):
        return None
    if got.ended not in ENDINGS:
        return None
    return replace(
        got, accelerator=got.accelerator[:40], reason=got.reason[:2000], host=got.host[:200]
    )


# -- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanImage:
    """A platform's staged base image: where the submit side has it, how a job names it."""

    disk: Path
    kernel: Path | None
    initrd: Path | None
    cmdline: str
    apt_source: str
    suite: str
    label: str
    job_disk: str  # relative: transferred into the sandbox; absolute: shared
    job_kernel: str | None
    job_initrd: str | None

    @property
    def ref(self) -> ImageRef:
        return ImageRef(
            disk=self.disk,
            kernel=self.kernel,
            initrd=self.initrd,
            cmdline=self.cmdline,
            apt_source=self.apt_source,
            suite=self.suite,
            label=self.label,
        )


@dataclass(frozen=True)
class Plan:
    """What a submit decided, for the DAG's nodes (condor/plan.json)."""

    style: str  # vm | qemu
    delivery: str  # transfer | shared | url
    boot: str  # kernel | disk (VM universe: always disk)
    held_max_s: int
    queue_max_s: int
    images: dict[str, PlanImage] = field(default_factory=dict)  # by platform name
    # `submit --package-proxy`: the HTTP proxy apt in every job's guest fetches through (a
    # site's caching proxy); None: straight from the mirrors.
    package_proxy: str | None = None
    hosts_file: str = ""  # the execute-host deny-list the POST scripts keep (hosts.py); "": none
    deny_policy: str = ""  # hosts.Policy.parse text; "": the defaults


def write_plan(run_dir: Path, plan: Plan) -> None:
    write_document(run_dir / CONDOR_DIR / PLAN_FILE, PLAN, plan)


def read_plan(run_dir: Path) -> Plan:
    """OSError when it cannot be read; WireError (a ValueError) when it is not a plan.json."""
    return read_document(run_dir / CONDOR_DIR / PLAN_FILE, PLAN, Plan)
