"""What a submitted DAG runs: the steps of one run on the pool, and the job's own command.

Run by DAGMan as the pool's user, on the submit side (see docs/condor.md); the files they
share with the execute side are in job.py, the execute side itself in execute.py.
    prep   local-universe node: make the run's disks (engine.attempt.prepare) and job.json
    pre    PRE script of the VM node: the same again when DAGMan retries the node (or reruns it
           from a rescue DAG); nothing on the first try
    post   POST script of the VM node: read the job's events and what came back, decide the
           verdict (engine.attempt.collect), record the attempt; exit 1 asks DAGMan to retry
    final  FINAL node: write the reports (the DAG succeeds when tests fail: those are results)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from ..engine import attempt as runner
from ..engine.attempt import RunContext, settle
from ..results.model import INFRA, RunResult
from ..rundir import RunFolder
from ..spec import Run
from ..state import RunDB
from . import deny
from .events import JobHistory, outcome_from, read_history, removed_by_policy
from .job import (
    CONDOR_DIR,
    JOB_FILE,
    JOB_LOG,
    OUTCOME_FILE,
    RETURNED_OUTPUT,
    SYSTEM_PATH,
    Plan,
    describe_job,
    job_in,
    read_job,
    read_outcome,
    read_plan,
    write_job,
)

# POST script exit codes; the VM node has RETRY N UNLESS-EXIT 2.
POST_OK, POST_RETRY, POST_FAILED = 0, 1, 2
REPORT_REFRESH_S = 30  # POST scripts refresh the reports at most this often
NODE_ERRORS = "logs/node-errors.log"  # under condor/: what a PRE or POST script died of
EVENT_WAIT_S = 20  # how long post waits for the job's final event to reach its log


# -- submit side: the nodes ----------------------------------------------------------------------
def _kept_errors(step: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """DAGMan keeps only a PRE or POST script's exit code: what it died of is appended to
    condor/logs/node-errors.log, so that a run without a verdict can say why."""

    def wrap(node_step: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(node_step)
        def logged(run_dir: Path, *args: object) -> int:
            try:
                return node_step(run_dir, *args)
            except BaseException as exc:
                if not (isinstance(exc, SystemExit) and exc.code in (0, None)):
                    with (
                        contextlib.suppress(OSError),
                        open(run_dir / CONDOR_DIR / NODE_ERRORS, "a") as log,
                    ):
                        when = time.strftime("%Y-%m-%d %H:%M:%S")
                        log.write(f"== {when} {step} {' '.join(map(str, args))}\n")
                        log.write("".join(traceback.format_exception(exc)))
                raise

        return logged

    return wrap


def _context(folder: RunFolder, plan: Plan) -> RunContext:
    return RunContext(
        run_dir=folder.path,
        boot=plan.boot,
        known_failures=folder.known_failures(),
        package_proxy=plan.package_proxy,
    )


def _open(run_dir: Path, run_id: str) -> tuple[RunFolder, Run]:
    folder = RunFolder.open(run_dir)
    run = next((r for r in folder.db.runs() if r.id == run_id), None)
    if run is None:
        raise SystemExit(f"vmharness: no run {run_id} in {run_dir}")
    return folder, run


def prepare_attempt(folder: RunFolder, run: Run, plan: Plan) -> int:
    """Make the next attempt's disks and job description; record the attempt's start."""
    _, attempts = folder.db.states()[run.id]
    attempt = attempts + 1
    ctx = _context(folder, plan)
    image = plan.images[run.platform.name]
    job, phases = runner.prepare(run, image.ref, ctx, attempt)
    use_kernel = job.kernel is not None
    desc = describe_job(
        job,
        run_id=run.id,
        attempt=attempt,
        base=image.job_disk,
        kernel=image.job_kernel if use_kernel else None,
        initrd=image.job_initrd if use_kernel else None,
        phases=phases,
    )
    write_job(job.workdir / JOB_FILE, desc)
    folder.db.start_attempt(run.id)
    return attempt


@_kept_errors("prep")
def node_prep(run_dir: Path, run_id: str) -> int:
    _system_path()
    folder, run = _open(run_dir, run_id)
    prepare_attempt(folder, run, read_plan(run_dir))
    return 0


@_kept_errors("pre")
def node_pre(run_dir: Path, node: str) -> int:
    """PRE script of the VM node: nothing on a first try (the prep node made the disks); on a
    DAGMan retry, or a rerun from a rescue DAG, a fresh attempt: new disks, job.json."""
    run_id = node.rsplit("-", 1)[-1]
    if _all_denied_before(run_dir, run_id):
        return POST_FAILED  # the node fails at once, and RETRY ... UNLESS-EXIT 2 leaves it
    work = run_dir / "runs" / run_id / "work"
    db = RunDB.open_existing(run_dir)
    state, attempts = db.states()[run_id]
    db.close()
    try:
        ready = (
            read_job(work / JOB_FILE).attempt == attempts
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


def _all_denied_before(run_dir: Path, run_id: str) -> bool:
    """Every execute point is on the deny-list: the run dies here, without a job that could
    never match."""
    try:
        give_up = deny.given_up(run_dir)
        if not give_up:
            known = deny.deny_list(read_plan(run_dir))
            give_up = deny.all_denied(known.denied()) if known else ""
    except Exception:  # noqa: BLE001 - the list is advice; the node goes on without it
        return False
    if not give_up:
        return False
    folder, run = _open(run_dir, run_id)
    state, attempts = folder.db.states()[run.id]
    if state != "running":  # a retry: an attempt of its own (the one that died keeps its row)
        attempts = folder.db.start_attempt(run.id)
    folder.db.finish_attempt(
        RunResult(run_id=run.id, status="died", attempt=max(1, attempts), reason=give_up),
        final=True,
    )
    refresh_reports(folder)
    print(f"vmharness: run {run_id} not submitted: {give_up}")
    return True


@_kept_errors("post")
def node_post(run_dir: Path, node: str, retry: int, max_retries: int, job_id: str = "") -> int:
    """Decide and record one attempt of a run. Exit: 0 verdict, 1 retry (died), 2 died."""
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
    attempt = desc.attempt if desc else max(1, folder.db.states()[run.id][1])
    if desc is None:
        result = RunResult(
            run_id=run.id, status="died", attempt=attempt, reason=why, host=hist.host
        )
    else:
        outcome = outcome_from(hist, read_outcome(work / OUTCOME_FILE), plan.style, plan)
        job = job_in(desc, work)
        job = replace(job, console_log=log_dir / "console.log", output_disk=work / RETURNED_OUTPUT)
        try:
            result = runner.collect(
                run,
                job,
                outcome,
                _context(folder, plan),
                attempt,
                dict(desc.phases),
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
    if died and hist.aborted and not removed_by_policy(hist):
        result.not_the_hosts = "removed by a person"
    # The execute host's record: a run that died there counts against it (unless the guest or
    # a person caused it), a verdict for it.
    _change, denied = deny.record_end(
        plan,
        run_dir,
        run.id,
        result.host,
        died=died and not result.not_the_hosts,
        reason=result.reason,
    )
    give_up = ""
    if died and hist.aborted and hist.started is None:
        give_up = deny.given_up(run_dir)  # removed while idle: every execute point is denied
        if give_up:
            result.reason = give_up
    elif died:
        give_up = deny.all_denied(denied)
        if give_up:
            result.reason = f"{result.reason}; {give_up}" if result.reason else give_up
            deny.give_up_now(run_dir, denied, give_up)
    # DAGMan counts the node's retries, and it retries only what died, so `retry` is how many
    # attempts died before this one. A removed job (by a person, or by our policy after a
    # hold) is not retried: the hold policy already released what a retry could fix.
    result.attempt = attempt
    final = settle(result, infra_before=retry, retries=max_retries, removed=hist.aborted)
    final = final or bool(give_up)
    folder.db.finish_attempt(result, final=final)
    (work / "output.img").unlink(missing_ok=True)  # the empty one it was given: scratch now
    if log_dir.is_dir():
        runner.write_run_json(log_dir, result)
    refresh_reports(folder)
    # The retry's disks are made by the PRE script (node_pre), which DAGMan runs again first.
    return POST_OK if not died else (POST_FAILED if final else POST_RETRY)


@_kept_errors("final")
def node_final(run_dir: Path) -> int:
    _system_path()
    folder = RunFolder.open(run_dir)
    close_unfinished(folder)
    console = Console(file=sys.stdout, width=120, force_terminal=False)
    with _report_lock(run_dir, wait=True):
        folder.write_reports(console)
    return 0


def close_unfinished(folder: RunFolder) -> list[str]:
    """At the DAG's end, a run without a verdict will never get one: it died, and says why."""
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
                f"script failed (see {CONDOR_DIR}/{NODE_ERRORS} and {CONDOR_DIR}/*.dagman.out)"
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


def refresh_reports(folder: RunFolder) -> None:
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
            folder.write_reports(None, show=False)


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
