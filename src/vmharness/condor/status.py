"""Following a submitted DAG: DAGMan's and the nodes' event logs plus the run database."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InfraError
from ..rundir import RunFolder
from .events import JobHistory, bindings, read_jobs, removal_reason
from .job import CONDOR_DIR, DAG_FILE, Plan, read_plan


@dataclass
class Held:
    run: str
    node: str
    job: str
    reason: str
    since: float


@dataclass
class Status:
    run_dir: Path
    dag_state: str  # not submitted | queued | running | done | removed
    dag_exit: int | None
    dag_cluster: int | None
    jobs: dict[str, Counter] = field(default_factory=dict)  # layer -> state -> count
    held: list[Held] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)  # (run, reason)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (node, why): non-zero exit
    runs: Counter = field(default_factory=Counter)  # pending | running | done
    statuses: Counter = field(default_factory=Counter)
    total: int = 0

    @property
    def finished(self) -> bool:
        return self.dag_state in ("done", "removed")

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "dag": {
                "state": self.dag_state,
                "exit_code": self.dag_exit,
                "cluster": self.dag_cluster,
            },
            "jobs": {k: dict(v) for k, v in self.jobs.items()},
            "held": [vars(h) for h in self.held],
            "removed": [{"run": r, "reason": why} for r, why in self.removed],
            "failed": [{"node": n, "reason": why} for n, why in self.failed],
            "runs": {"total": self.total, **dict(self.runs)},
            "statuses": dict(self.statuses),
        }


def status(folder: RunFolder) -> Status:
    """Progress of a submitted run folder: DAGMan's and the jobs' event logs + the run DB."""
    htcondor = bindings()
    T = htcondor.JobEventType  # DAGMan's own log: its job is not a node
    cdir = folder.path / CONDOR_DIR
    meta = folder.db.meta()
    st = Status(
        run_dir=folder.path,
        dag_state="not submitted",
        dag_exit=None,
        dag_cluster=meta.get("condor_cluster"),
    )
    dag_log = cdir / f"{DAG_FILE}.dagman.log"
    if dag_log.is_file():
        st.dag_state = "queued"
        for ev in htcondor.JobEventLog(str(dag_log)).events(stop_after=0):
            if st.dag_cluster is not None and ev.cluster != st.dag_cluster:
                continue  # an earlier DAGMan of this folder (before a resubmit)
            if ev.type == T.EXECUTE:
                st.dag_state = "running"
            elif ev.type == T.JOB_TERMINATED:
                st.dag_state, st.dag_exit = "done", int(ev.get("ReturnValue", -1) or 0)
            elif ev.type == T.JOB_ABORTED:
                st.dag_state = "removed"
    plan: Plan | None
    try:
        plan = read_plan(folder.path)
    except (OSError, ValueError):
        plan = None
    by_node: dict[str, JobHistory] = {}
    for hist in read_jobs(cdir / f"{DAG_FILE}.nodes.log").values():
        if hist.node:
            by_node[hist.node] = hist  # a retried node's latest job
    for node, hist in sorted(by_node.items()):
        layer, _, run_id = node.rpartition("-")
        st.jobs.setdefault(layer or node, Counter())[hist.state] += 1
        if hist.state == "held":
            st.held.append(
                Held(
                    run=run_id, node=node, job=hist.job_id, reason=hist.last_hold, since=hist.since
                )
            )
        elif hist.state == "removed" and layer == "vm":
            st.removed.append((run_id, removal_reason(hist, plan)))
        elif hist.state == "failed":
            st.failed.append((node, f"exit code {hist.return_value}"))
    results = folder.db.results()
    for run_id, (state, _attempts) in folder.db.states().items():
        st.total += 1
        st.runs[state] += 1
        if state == "done" and run_id in results:
            st.statuses[results[run_id].status] += 1
    return st


def wait(
    folder: RunFolder,
    *,
    poll_s: float = 2.0,
    say: Callable[[str], None] = lambda _m: None,
    timeout_s: float | None = None,
) -> Status:
    """Block until DAGMan has left the queue; say() a progress line whenever it changes."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = ""
    while True:
        st = status(folder)
        line = progress_line(st)
        if line != last:
            say(line)
            last = line
        if st.finished:
            return st
        if deadline is not None and time.monotonic() > deadline:
            raise InfraError(
                f"the DAG did not finish within {timeout_s:.0f}s",
                hint=f"vmharness status {folder.path}",
            )
        time.sleep(poll_s)


def progress_line(st: Status) -> str:
    vm = st.jobs.get("vm", Counter())
    parts = [
        f"DAG {st.dag_state}" + (f" (exit {st.dag_exit})" if st.dag_exit is not None else ""),
        f"runs {st.runs.get('done', 0)}/{st.total} done",
    ]
    if vm:
        parts.append("VM jobs " + ", ".join(f"{n} {s}" for s, n in sorted(vm.items())))
    if st.statuses:
        parts.append(", ".join(f"{s} {n}" for s, n in sorted(st.statuses.items())))
    return "; ".join(parts)
