"""HTCondor event logs, read once, one way: what each job went through.

Both the POST script (a run's verdict, condor/nodes.py) and `vmharness status`
(condor/status.py) read the same logs through `read_jobs`, so a job's removal reason, holds
and host are worded the same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InfraError
from ..vm.job import VMOutcome
from .job import OUTCOME_FILE, TIMEOUT_HOLD_SUBCODE, Plan


def bindings():
    try:
        import htcondor2
    except ImportError as exc:
        raise InfraError(
            f"the HTCondor Python bindings are not installed ({exc})",
            hint="pip install 'vmharness[condor]' (module htcondor2)",
        ) from None
    return htcondor2


@dataclass
class JobHistory:
    """What one HTCondor job went through, read from its event log."""

    job_id: str = ""
    node: str = ""  # the DAG node that submitted it (from the submit event's notes)
    submitted: float | None = None
    started: float | None = None  # last execute event
    ended: float | None = None
    host: str = ""
    terminated: bool = False
    return_value: int | None = None
    aborted: bool = False
    abort_reason: str = ""
    holds: list[tuple[str, int, int]] = field(default_factory=list)  # (reason, code, subcode)
    starts: int = 0
    state: str = "idle"  # idle | running | held | done | failed | removed
    since: float = 0.0  # when it entered `state`

    @property
    def finished(self) -> bool:
        return self.terminated or self.aborted

    @property
    def last_hold(self) -> str:
        return self.holds[-1][0] if self.holds else ""

    @property
    def timed_out(self) -> bool:
        return bool(self.holds) and self.holds[-1][2] == TIMEOUT_HOLD_SUBCODE


# What the VM universe helper's error codes mean (the starter puts only the code in HoldReason;
# the helper's log, VM_GAHP_LOG on the execute point, has the details).
VM_HELPER_ERRORS = {
    "VMGAHP_ERR_JOBCLASSAD_KVM_INVALID_DISK_PARAM": "the VM helper refused a disk of vm_disk: "
    "malformed, not found, or not readable (or writable, for a w disk) by the job's user",
    "VMGAHP_ERR_JOBCLASSAD_KVM_NO_DISK_PARAM": "the job names no vm_disk",
    "VMGAHP_ERR_JOBCLASSAD_NO_VM_MEMORY_PARAM": "the job has no usable vm_memory (JobVMMemory)",
    "VMGAHP_ERR_BAD_IMAGE": "qemu could not use a disk of vm_disk (wrong format?)",
    "VMGAHP_ERR_CRITICAL": "the VM helper could not start the VM on that machine",
    "VMGAHP_ERR_INTERNAL": "the VM helper failed",
}


def explain_hold(reason: str) -> str:
    """A hold reason, with what a VM helper's error code in it means and where to look."""
    for code, words in VM_HELPER_ERRORS.items():
        if code in reason and words not in reason:
            return (
                f"{reason} ({words}; the helper's log, VM_GAHP_LOG on the execute point, says why)"
            )
    return reason


def host_of(execute_host: str) -> str:
    """'<127.0.0.1:9620?addrs=...&alias=host>' -> 'host' (or the address)."""
    text = execute_host.strip("<>")
    for part in text.split("?", 1)[-1].split("&"):
        if part.startswith("alias="):
            return part[6:]
    return text.split("?", 1)[0]


def read_jobs(log: Path) -> dict[str, JobHistory]:
    """Every job of an event log, by "cluster.proc", in the order they were submitted."""
    htcondor = bindings()
    T = htcondor.JobEventType
    jobs: dict[str, JobHistory] = {}
    if not log.is_file():
        return jobs
    for event in htcondor.JobEventLog(str(log)).events(stop_after=0):
        job_id = f"{event.cluster}.{event.proc}"
        if event.type == T.SUBMIT:
            notes = str(event.get("LogNotes", "") or "")
            node = notes.split("DAG Node:", 1)[-1].strip() if "DAG Node:" in notes else ""
            jobs[job_id] = JobHistory(
                job_id=job_id, node=node, submitted=event.timestamp, since=event.timestamp
            )
            continue
        hist = jobs.get(job_id)
        if hist is None or hist.finished:
            # (a job that ended is "aborted" again when DAGMan leaves the queue: not a removal)
            continue
        if event.type == T.EXECUTE:
            hist.started, hist.starts = event.timestamp, hist.starts + 1
            hist.host = host_of(str(event.get("ExecuteHost", "")))
            hist.state = "running"
        elif event.type == T.JOB_HELD:
            hist.holds.append(
                (
                    explain_hold(str(event.get("HoldReason", "") or "held")),
                    int(event.get("HoldReasonCode", 0) or 0),
                    int(event.get("HoldReasonSubCode", 0) or 0),
                )
            )
            hist.state = "held"
        elif event.type in (T.JOB_RELEASED, T.JOB_EVICTED):
            hist.state = "idle"
        elif event.type == T.JOB_TERMINATED:
            hist.terminated, hist.ended = True, event.timestamp
            if event.get("TerminatedNormally", True):
                hist.return_value = int(event.get("ReturnValue", 0) or 0)
            hist.state = "done" if hist.return_value == 0 else "failed"
        elif event.type == T.JOB_ABORTED:
            hist.aborted, hist.ended = True, event.timestamp
            hist.abort_reason = str(event.get("Reason", "") or "")
            hist.state = "removed"
        else:
            continue
        hist.since = event.timestamp
    return jobs


def read_history(log: Path, job_id: str = "") -> JobHistory:
    """The history of job `job_id` ("cluster.proc"; the last job in the log if empty)."""
    jobs = read_jobs(log)
    if job_id:
        return jobs.get(job_id, JobHistory(job_id=job_id))
    return next(reversed(jobs.values()), JobHistory())


def removed_by_policy(hist: JobHistory) -> bool:
    """The job was removed by the DAG's own policy (held or queued too long), not by a person."""
    return "PeriodicRemove" in hist.abort_reason  # (see submit.py's policy expressions)


def removal_reason(hist: JobHistory, plan: Plan | None = None) -> str:
    """Why a job left the queue without ending, in words."""
    why = hist.abort_reason
    if removed_by_policy(hist):
        if hist.holds:
            return (
                f"held for longer than {plan.held_max_s}s (--held-max) and removed; hold reason: "
                if plan is not None
                else "held too long and removed; hold reason: "
            ) + hist.last_hold
        queue_max = plan.queue_max_s if plan is not None else "?"
        return f"in the queue for longer than {queue_max}s (--queue-max)"
    text = f"removed ({why})" if why else "removed (condor_rm; no reason given)"
    return text + (f"; it had been held: {hist.last_hold}" if hist.holds else "")


def outcome_from(
    hist: JobHistory, outcome: VMOutcome | None, style: str, plan: Plan | None = None
) -> VMOutcome:
    """How the VM ended, from what run-one wrote (qemu style) or the job's events alone."""
    seconds = (hist.ended - hist.started) if hist.ended and hist.started else 0.0
    if hist.aborted:
        if hist.timed_out:
            return VMOutcome(
                ended="timeout",
                seconds=seconds,
                accelerator="",
                host=hist.host,
                reason=hist.last_hold,
            )
        return VMOutcome(
            ended="error",
            seconds=seconds,
            accelerator="",
            host=hist.host,
            reason=f"HTCondor job {hist.job_id}: {removal_reason(hist, plan)}",
        )
    if not hist.terminated:
        return VMOutcome(
            ended="error",
            seconds=seconds,
            accelerator="",
            host=hist.host,
            reason=f"the HTCondor job {hist.job_id or '(none)'} left no end in its "
            "event log (was it ever submitted? see condor/*.dagman.out)",
        )
    if outcome is not None:
        # The execute point's name in the pool: run-one reads the slot's Machine; the event
        # log has only an address's alias, the same for startds sharing a machine.
        outcome.host = outcome.host or hist.host
        return outcome
    if style == "vm":  # VM universe: the job ends when the guest powers off
        ok = hist.return_value == 0
        return VMOutcome(
            ended="poweroff" if ok else "error",
            seconds=seconds,
            accelerator="kvm (vm universe)",
            host=hist.host,
            reason="" if ok else f"VM universe job ended with {hist.return_value}",
        )
    return VMOutcome(
        ended="error",
        seconds=seconds,
        accelerator="",
        host=hist.host,
        reason=f"the job came back without {OUTCOME_FILE} (exit code "
        f"{hist.return_value}); see console.log",
    )
