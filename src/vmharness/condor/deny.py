"""The execute-host deny-list on the pool: what the DAG's jobs respect while it runs.

The list itself (counting, thresholds, expiry) is hosts.py. Here is how a DAG follows it, in a
way DAGMan is safe with (no job is edited behind its back in any way it would notice):

- The VM jobs' requirements say `!member(TARGET.Machine, MY.VmharnessDenied)`.
- Jobs not yet submitted: vm.sub includes condor/deny.sub (`My.VmharnessDenied = {...}`),
  which DAGMan reads again at each node's submission; `submit` writes it from the list as it
  is, so a new matrix starts by avoiding yesterday's bad hosts.
- Jobs already in the queue and idle (retries, runs waiting for a slot): the POST script that
  changes the list rewrites deny.sub and sets VmharnessDenied of those jobs (`Schedd.edit`);
  the schedd re-matches them. A running job is left alone.
- Every execute point denied: no job can ever match. The POST script that finds it removes
  the DAG's idle VM jobs (their runs end `died`, with that reason) and the PRE script of every
  later node records its run as `died` without submitting it. The DAG ends; nothing loops.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from ..hosts import DenyList, Policy, classad_list
from .events import bindings
from .job import CONDOR_DIR, Plan

DENY_SUB = "deny.sub"  # in condor/
ALL_DENIED_FILE = "all-denied.txt"  # in condor/: why, once every execute point was denied
DENIED_ATTR = "VmharnessDenied"
ALL_DENIED_ATTR = "VmharnessAllDenied"  # true: the schedd removes the job while idle
REQUIREMENT = f"(MY.{DENIED_ATTR} is undefined || !member(TARGET.Machine, MY.{DENIED_ATTR}))"
# vanilla (5) and vm (13): the VM jobs; never DAGMan (7) or the local-universe nodes (12)
VM_JOBS = "(JobUniverse == 5 || JobUniverse == 13)"
SWEEPS = (3.0, 7.0)  # seconds between the removals of idle jobs once every point is denied


def write_deny_sub(run_dir: Path, denied: list[str], give_up: str = "") -> None:
    """deny.sub for the VM nodes DAGMan submits from now on; with `give_up` (every execute
    point denied), their jobs are removed by the schedd as soon as they are idle, and
    all-denied.txt keeps the reason for their POST scripts."""
    cdir = run_dir / CONDOR_DIR
    if give_up:
        (cdir / ALL_DENIED_FILE).write_text(give_up + "\n")
    give_up = give_up or given_up(run_dir)  # once given up, every later rewrite keeps it
    path = cdir / DENY_SUB
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(
        "# The execute hosts this DAG's VM jobs avoid (vmharness hosts; rewritten while the DAG\n"
        "# runs, read by DAGMan at each VM node's submission).\n"
        f"My.{DENIED_ATTR} = {classad_list(denied)}\n"
        + (f"My.{ALL_DENIED_ATTR} = true\n" if give_up else "")
    )
    tmp.replace(path)


def given_up(run_dir: Path) -> str:
    """The reason, once a POST script found every execute point denied; else ""."""
    try:
        return (run_dir / CONDOR_DIR / ALL_DENIED_FILE).read_text().strip()
    except OSError:
        return ""


def reset(run_dir: Path, plan: Plan) -> None:
    """Before a resubmission: deny.sub from the list as it is now (hosts may be forgiven)."""
    (run_dir / CONDOR_DIR / ALL_DENIED_FILE).unlink(missing_ok=True)
    known = deny_list(plan)
    write_deny_sub(run_dir, known.denied() if known else [])


def deny_list(plan: Plan) -> DenyList | None:
    if not plan.hosts_file:
        return None
    return DenyList.read(Path(plan.hosts_file), Policy.parse(plan.deny_policy))


def record_end(
    plan: Plan, run_dir: Path, run_id: str, host: str, *, died: bool, reason: str
) -> tuple[str, list[str]]:
    """Count a run's end on its host. Returns (change, hosts denied now); change is "denied",
    "cleared" or "". A list that cannot be written costs a warning, never the run's verdict."""
    if not plan.hosts_file or not host:
        return "", []
    try:
        with DenyList.locked(Path(plan.hosts_file), Policy.parse(plan.deny_policy)) as d:
            change = d.record(host, failed=died, run=run_id, reason=reason, run_dir=str(run_dir))
            denied = d.denied()
            if change:
                # Under the list's lock: POST scripts ending together must not leave
                # deny.sub or the idle jobs with an older list than the last one written.
                write_deny_sub(run_dir, denied)
                with contextlib.suppress(Exception):
                    edit_idle(run_dir, denied)
    except Exception as exc:  # noqa: BLE001
        hint = getattr(exc, "hint", None)
        print(
            f"vmharness: warning: the deny-list {plan.hosts_file} was not updated: {exc}"
            + (f" ({hint})" if hint else "")
        )
        return "", []
    return change, denied


def _this_dag(run_dir: Path) -> str:
    return f"VmharnessRunDir == {json.dumps(str(run_dir.resolve()))} && {VM_JOBS}"


def edit_idle(run_dir: Path, denied: list[str]) -> None:
    """Idle VM jobs of this DAG avoid the hosts denied now (the schedd re-matches them)."""
    htcondor = bindings()
    htcondor.Schedd().edit(
        f"{_this_dag(run_dir)} && JobStatus == 1", DENIED_ATTR, classad_list(denied)
    )


def pool_machines() -> set[str]:
    """The execute points the collector knows (their Machine); empty if it cannot be asked."""
    try:
        htcondor = bindings()
        ads = htcondor.Collector().query(htcondor.AdType.Startd, projection=["Machine"])
    except Exception:  # noqa: BLE001
        return set()
    return {str(ad["Machine"]) for ad in ads if "Machine" in ad}


def all_denied(denied: list[str]) -> str:
    """The reason to give up, when every execute point the pool knows is denied; else ""."""
    if not denied:
        return ""
    machines = pool_machines()
    if not machines or not machines <= set(denied):
        return ""
    return (
        f"every execute point of the pool is on the deny-list ({', '.join(sorted(machines))}), "
        "so no job can run; see `vmharness hosts`, mend the hosts, then "
        "`vmharness hosts forgive HOST` and `vmharness resubmit RUNDIR`"
    )


def give_up_now(run_dir: Path, denied: list[str], reason: str) -> None:
    """Every execute point denied: nodes submitted from now on are removed when idle
    (deny.sub, periodic_remove), the PRE scripts of later nodes give up (all-denied.txt), and
    the idle VM jobs in the queue are removed, now and again after SWEEPS: a node whose PRE
    script passed just before the file was written reaches the queue a moment later, with
    the deny.sub of before."""
    write_deny_sub(run_dir, denied, reason)
    for pause in (0.0, *SWEEPS):
        time.sleep(pause)
        with contextlib.suppress(Exception):
            remove_idle(run_dir, f"vmharness: {reason}")


def remove_idle(run_dir: Path, reason: str) -> None:
    htcondor = bindings()
    htcondor.Schedd().act(
        htcondor.JobAction.Remove, f"{_this_dag(run_dir)} && JobStatus == 1", reason=reason
    )
