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
from pathlib import Path

from ..hosts import DenyList, Policy, classad_list
from .events import bindings
from .job import CONDOR_DIR, Plan

DENY_SUB = "deny.sub"  # in condor/
DENIED_ATTR = "VmharnessDenied"
REQUIREMENT = f"(MY.{DENIED_ATTR} is undefined || !member(TARGET.Machine, MY.{DENIED_ATTR}))"
# vanilla (5) and vm (13): the VM jobs; never DAGMan (7) or the local-universe nodes (12)
VM_JOBS = "(JobUniverse == 5 || JobUniverse == 13)"
ALL_DENIED_REMOVE = "vmharness: every execute point of the pool is on the deny-list"


def write_deny_sub(run_dir: Path, denied: list[str]) -> None:
    path = run_dir / CONDOR_DIR / DENY_SUB
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(
        "# The execute hosts this DAG's VM jobs avoid (vmharness hosts; rewritten while the DAG\n"
        "# runs, read by DAGMan at each VM node's submission).\n"
        f"My.{DENIED_ATTR} = {classad_list(denied)}\n"
    )
    tmp.replace(path)


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
    except Exception as exc:  # noqa: BLE001
        print(f"vmharness: warning: the deny-list {plan.hosts_file} was not updated: {exc}")
        return "", []
    if change:
        write_deny_sub(run_dir, denied)
        with contextlib.suppress(Exception):
            edit_idle(run_dir, denied)
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


def remove_idle(run_dir: Path, reason: str) -> None:
    htcondor = bindings()
    htcondor.Schedd().act(
        htcondor.JobAction.Remove, f"{_this_dag(run_dir)} && JobStatus == 1", reason=reason
    )
