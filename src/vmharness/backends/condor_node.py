"""What a submitted DAG runs: the steps of one run on the pool, and the job's own command.

Submit side (run by DAGMan as the pool's user, see docs/condor.md):
    prep   local-universe node: make the run's disks (runner.prepare) and its job description
    pre    PRE script of the VM node: the same again when DAGMan retries the node (or reruns it
           from a rescue DAG); nothing on the first try
    post   POST script of the VM node: read the job's events and what came back, decide the
           verdict (runner.collect), record the attempt; exit 1 asks DAGMan to retry
    final  FINAL node: write the reports (the DAG succeeds when tests fail: those are results)
Execute side:
    run-one  the --style qemu job: boot one prepared VM exactly as the local backend does

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

import contextlib
import fcntl
import json
import os
import platform as host_platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .base import VMJob, VMOutcome

JOB_FORMAT = 1
JOB_FILE = "job.json"
OUTCOME_FILE = "outcome.json"
JOB_LOG = "condor-job.log"  # in runs/<id>/, beside console.log
PLAN_FILE = "plan.json"  # in condor/: what the submit decided, for the nodes
CONDOR_DIR = "condor"
TIMEOUT_HOLD_SUBCODE = 4201  # HoldReasonSubCode of our periodic_hold (wall-clock timeout)
# POST script exit codes; the VM node has RETRY N UNLESS-EXIT 2.
POST_OK, POST_RETRY, POST_FAILED = 0, 1, 2
REPORT_REFRESH_S = 30  # POST scripts refresh the reports at most this often
EVENT_WAIT_S = 20  # how long post waits for the job's final event to reach its log
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


# -- execute side -------------------------------------------------------------------------------
def run_one(job_file: Path, say=lambda _m: None) -> int:
    """Boot the VM a job description names, as the local backend does; write outcome.json.

    Runs in the job's sandbox. Everything but the output disk, the console log and
    outcome.json is removed afterwards, so nothing else travels back.
    """
    from . import local

    sandbox = job_file.resolve().parent
    outcome_path = sandbox / OUTCOME_FILE
    outcome_path.unlink(missing_ok=True)
    t0 = time.monotonic()
    try:
        job = job_in(read_job(job_file), sandbox)
        job.console_log.touch()
        if job.kernel is not None:
            cache = Path(
                os.environ.get("VMHARNESS_CACHE")
                or Path(tempfile.gettempdir()) / f"vmharness-{os.getuid()}"
            )
            accel = local.choose_accelerator(job.kernel, cache, say=say)
        else:  # booting the image's own loader: no kernel to probe KVM with
            accel = "kvm" if os.environ.get(local.ACCEL_ENV) == "kvm" else "tcg"
            say(f"accelerator {accel} (no kernel to probe KVM with)")
        outcome = local.run_vm(job, accel)
    except Exception as exc:  # noqa: BLE001 - whatever it was, the submit side must learn it
        outcome = VMOutcome(
            ended="error",
            seconds=time.monotonic() - t0,
            accelerator="",
            reason=f"vmharness run-one failed: {exc}",
            host=host_platform.node(),
        )
    finally:
        shutil.rmtree(sandbox / "vm", ignore_errors=True)
    _write_json(outcome_path, {"format": JOB_FORMAT, **asdict(outcome)})
    return 0


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


# -- the job's history, from its event log ----------------------------------------------------
@dataclass
class JobHistory:
    """What one HTCondor job went through, read from its event log."""

    job_id: str = ""
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

    @property
    def finished(self) -> bool:
        return self.terminated or self.aborted

    @property
    def last_hold(self) -> str:
        return self.holds[-1][0] if self.holds else ""

    @property
    def timed_out(self) -> bool:
        return bool(self.holds) and self.holds[-1][2] == TIMEOUT_HOLD_SUBCODE


def host_of(execute_host: str) -> str:
    """'<127.0.0.1:9620?addrs=...&alias=host>' -> 'host' (or the address)."""
    text = execute_host.strip("<>")
    for part in text.split("?", 1)[-1].split("&"):
        if part.startswith("alias="):
            return part[6:]
    return text.split("?", 1)[0]


def read_history(log: Path, job_id: str = "") -> JobHistory:
    """The history of job `job_id` ("cluster.proc"; the last job in the log if empty)."""
    import htcondor2 as htcondor

    T = htcondor.JobEventType
    hist = JobHistory(job_id=job_id)
    if not log.is_file():
        return hist
    want = tuple(int(x) for x in job_id.split(".")) if job_id else None
    for event in htcondor.JobEventLog(str(log)).events(stop_after=0):
        key = (event.cluster, event.proc)
        if want is None and event.type == T.SUBMIT:
            want, hist = key, JobHistory(job_id=f"{key[0]}.{key[1]}")
        if key != want:
            continue
        if event.type == T.SUBMIT:
            hist.submitted = event.timestamp
        elif event.type == T.EXECUTE:
            hist.started, hist.starts = event.timestamp, hist.starts + 1
            hist.host = host_of(str(event.get("ExecuteHost", "")))
        elif event.type == T.JOB_HELD:
            hist.holds.append(
                (
                    str(event.get("HoldReason", "held")),
                    int(event.get("HoldReasonCode", 0) or 0),
                    int(event.get("HoldReasonSubCode", 0) or 0),
                )
            )
        elif event.type == T.JOB_TERMINATED:
            hist.terminated, hist.ended = True, event.timestamp
            if event.get("TerminatedNormally", True):
                hist.return_value = int(event.get("ReturnValue", 0) or 0)
        elif event.type == T.JOB_ABORTED and not hist.terminated:
            # (a job that ended is "aborted" again when DAGMan leaves the queue: not a removal)
            hist.aborted, hist.ended = True, event.timestamp
            hist.abort_reason = str(event.get("Reason", "") or "")
    return hist


def removal_reason(hist: JobHistory, plan: dict[str, Any] | None = None) -> str:
    """Why a job left the queue without ending, in words."""
    plan = plan or {}
    why = hist.abort_reason
    if "PeriodicRemove" in why:  # our own policy (see condor.py, _policy)
        if hist.holds:
            held_max = plan.get("held_max_s")
            return (
                f"held for longer than {held_max}s (--held-max) and removed; hold reason: "
                if held_max is not None
                else "held too long and removed; hold reason: "
            ) + hist.last_hold
        return f"in the queue for longer than {plan.get('queue_max_s', '?')}s (--queue-max)"
    text = f"removed ({why})" if why else "removed (condor_rm; no reason given)"
    return text + (f"; it had been held: {hist.last_hold}" if hist.holds else "")


def outcome_from(
    hist: JobHistory, outcome: VMOutcome | None, style: str, plan: dict[str, Any] | None = None
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
        outcome.host = hist.host or outcome.host  # the execute point's name in the pool
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


# -- submit side: the plan and the nodes ------------------------------------------------------
def read_plan(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / CONDOR_DIR / PLAN_FILE).read_text())


def _image_ref(plan: dict[str, Any], platform: str):
    from ..runner import ImageRef

    i = plan["images"][platform]
    return ImageRef(
        disk=Path(i["disk"]),
        kernel=Path(i["kernel"]) if i.get("kernel") else None,
        initrd=Path(i["initrd"]) if i.get("initrd") else None,
        cmdline=i["cmdline"],
        apt_source=i["apt_source"],
        suite=i["suite"],
        label=i["label"],
    )


def _open(run_dir: Path, run_id: str):
    from ..rundir import RunFolder

    folder = RunFolder.open(run_dir)
    run = next((r for r in folder.db.runs() if r.id == run_id), None)
    if run is None:
        raise SystemExit(f"vmharness: no run {run_id} in {run_dir}")
    return folder, run


def prepare_attempt(folder, run, plan: dict[str, Any]) -> int:
    """Make the next attempt's disks and job description; record the attempt's start."""
    from .. import runner

    _, attempts = folder.db.states()[run.id]
    attempt = attempts + 1
    ctx = folder.context(plan.get("boot", "kernel"))
    image = _image_ref(plan, run.platform.name)
    job, phases = runner.prepare(run, image, ctx, attempt)
    i = plan["images"][run.platform.name]
    use_kernel = job.kernel is not None
    desc = job_to_json(
        job,
        run_id=run.id,
        attempt=attempt,
        base=i["job_disk"],
        kernel=i.get("job_kernel") if use_kernel else None,
        initrd=i.get("job_initrd") if use_kernel else None,
        phases=phases,
    )
    _write_json(job.workdir / JOB_FILE, desc)
    folder.db.start_attempt(run.id)
    return attempt


def node_prep(run_dir: Path, run_id: str) -> int:
    _system_path()
    folder, run = _open(run_dir, run_id)
    prepare_attempt(folder, run, read_plan(run_dir))
    return 0


def node_pre(run_dir: Path, node: str) -> int:
    """PRE script of the VM node: nothing on a first try (the prep node made the disks); on a
    DAGMan retry, or a rerun from a rescue DAG, a fresh attempt: new disks, job.json."""
    from ..state import RunDB

    run_id = node.rsplit("-", 1)[-1]
    work = run_dir / "runs" / run_id / "work"
    db = RunDB.open_existing(run_dir)
    state, attempts = db.states()[run_id]
    db.close()
    try:
        ready = (
            read_job(work / JOB_FILE).get("attempt") == attempts
            and state == "running"
            and (work / "input.img").is_file()
            and (work / "output.img").is_file()
        )
    except (OSError, ValueError):
        ready = False
    if not ready:
        _system_path()
        folder, run = _open(run_dir, run_id)
        prepare_attempt(folder, run, read_plan(run_dir))
    return 0


def node_post(run_dir: Path, node: str, retry: int, max_retries: int, job_id: str = "") -> int:
    """Decide and record one attempt of a run. Exit: 0 verdict, 1 retry (died), 2 died."""
    from .. import runner
    from ..results.model import INFRA, RunResult

    _system_path()
    run_id = node.rsplit("-", 1)[-1]
    folder, run = _open(run_dir, run_id)
    plan = read_plan(run_dir)
    log_dir = runner.log_dir_for(run_dir, run)
    work = log_dir / "work"
    try:
        desc = read_job(work / JOB_FILE)
    except (OSError, ValueError) as exc:
        desc = None
        why = f"the run's job description is missing ({exc})"
    job_id = job_id if job_id and not job_id.startswith("$") else ""
    hist = _wait_for_end(log_dir / JOB_LOG, job_id)
    attempt = int(desc["attempt"]) if desc else max(1, folder.db.states()[run.id][1])
    if desc is None:
        result = RunResult(
            run_id=run.id, status="died", attempt=attempt, reason=why, host=hist.host
        )
    else:
        outcome = outcome_from(hist, read_outcome(work / OUTCOME_FILE), plan["style"], plan)
        job = job_in(desc, work)
        job = replace(job, console_log=log_dir / "console.log")
        try:
            result = runner.collect(
                run,
                job,
                outcome,
                folder.context(plan.get("boot", "kernel")),
                attempt,
                dict(desc.get("phases") or {}),
            )
        except Exception as exc:  # noqa: BLE001 - an unreadable result is the run's, not ours
            result = RunResult(
                run_id=run.id,
                status="died",
                attempt=attempt,
                host=outcome.host,
                accelerator=outcome.accelerator,
                reason=f"vmharness could not read what came back: {exc}",
            )
    result.hold_reason = hist.last_hold[:2000]
    if hist.job_id:
        result.versions = {**result.versions, "condor_job": hist.job_id}
    died = result.status in INFRA
    # A removed job (by a person, or by our policy after a hold) is not retried: the hold
    # policy already released what a retry could fix.
    final = not died or hist.aborted or retry >= max_retries
    if died and not final:
        result.reason += f" (attempt {attempt}; retrying)"
    folder.db.finish_attempt(result, final=final)
    if log_dir.is_dir():
        _write_json(log_dir / "run.json", asdict(result))
    refresh_reports(folder)
    # The retry's disks are made by the PRE script (node_pre), which DAGMan runs again first.
    return POST_OK if not died else (POST_FAILED if final else POST_RETRY)


def node_final(run_dir: Path) -> int:
    from rich.console import Console

    from ..rundir import RunFolder

    _system_path()
    folder = RunFolder.open(run_dir)
    close_unfinished(folder)
    console = Console(file=sys.stdout, width=120, force_terminal=False)
    with _report_lock(run_dir, wait=True):
        folder.write_reports(console)
    return 0


def close_unfinished(folder) -> list[str]:
    """At the DAG's end, a run without a verdict will never get one: it died, and says why."""
    from ..results.model import RunResult

    closed = []
    for run_id, (state, attempts) in folder.db.states().items():
        if state == "done":
            continue
        if state == "pending" and attempts == 0:
            why = (
                f"it never ran: its prep node failed (see {CONDOR_DIR}/logs/prep-{run_id}.err)"
                " or the DAG was removed first"
            )
        else:
            why = (
                "its VM job never came to a verdict: the DAG was removed, or the POST "
                f"script failed (see {CONDOR_DIR}/*.dagman.out)"
            )
        folder.db.finish_attempt(
            RunResult(
                run_id=run_id,
                status="died",
                attempt=max(1, attempts),
                reason=f"no verdict when the DAG ended: {why}",
            ),
            final=True,
        )
        closed.append(run_id)
    return closed


def refresh_reports(folder) -> None:
    """Rewrite the reports if nobody did in the last REPORT_REFRESH_S (so they fill in as runs
    finish) and no other POST script is writing them now."""
    try:
        age = time.time() - (folder.path / "results.json").stat().st_mtime
    except OSError:
        age = REPORT_REFRESH_S
    if age < REPORT_REFRESH_S:
        return
    with contextlib.suppress(Exception), _report_lock(folder.path, wait=False) as locked:
        if locked:
            folder.write_reports(None, show=False)  # type: ignore[arg-type]


@contextlib.contextmanager
def _report_lock(run_dir: Path, *, wait: bool):
    path = run_dir / CONDOR_DIR / "reports.lock"
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True


def _wait_for_end(log: Path, job_id: str) -> JobHistory:
    # DAGMan learns of the end from its own log; the job's own log may lag a moment.
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:
        hist = read_history(log, job_id)
        if hist.finished or time.monotonic() > deadline:
            return hist
        time.sleep(0.5)


def _system_path() -> None:
    # Nodes run with a bare environment; the disk tools live in sbin.
    have = os.environ.get("PATH", "").split(":")
    os.environ["PATH"] = ":".join(
        [p for p in have if p] + [p for p in SYSTEM_PATH.split(":") if p not in have]
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
