"""Comparison of two run folders' results, keyed by Run.key (platform, source, package set).

Buckets, for the nightly question "what changed since last night":
- new_failures: passed before, does not pass now
- fixed: did not pass before, passes now
- still_failing: did not pass before and does not now (with the problems that appeared / went)
- new_runs / gone_runs: in only one of the two
- not_compared: in both, but pending on at least one side
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vmharness.report import PENDING, ReportInput, is_failing, status_of
from vmharness.results.model import Problem, RunResult
from vmharness.spec import Run

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Change:
    key: Key
    run_id: str | None  # in the current report; None for gone runs
    previous_id: str | None  # in the previous report; None for new runs
    status: str | None  # current status ("pending" when not finished); None for gone runs
    previous_status: str | None
    reason: str = ""  # current reason (previous one for gone runs)
    new_problems: tuple[str, ...] = ()  # "module|test|cls|kind", present now, not before
    fixed_problems: tuple[str, ...] = ()  # present before, not now

    @property
    def label(self) -> str:
        return " / ".join(self.key)


@dataclass
class Comparison:
    previous_title: str = ""
    previous_started: str = ""
    new_failures: list[Change] = field(default_factory=list)
    fixed: list[Change] = field(default_factory=list)
    still_failing: list[Change] = field(default_factory=list)
    new_runs: list[Change] = field(default_factory=list)
    gone_runs: list[Change] = field(default_factory=list)
    not_compared: list[Change] = field(default_factory=list)
    unchanged_passing: int = 0

    BUCKETS = ("new_failures", "fixed", "still_failing", "new_runs", "gone_runs", "not_compared")

    def counts(self) -> dict[str, int]:
        out = {b: len(getattr(self, b)) for b in self.BUCKETS}
        out["unchanged_passing"] = self.unchanged_passing
        return out

    def as_dict(self) -> dict:
        out: dict = {
            "previous": {"title": self.previous_title, "started": self.previous_started},
            "counts": self.counts(),
        }
        for bucket in self.BUCKETS:
            out[bucket] = [_change_dict(c) for c in getattr(self, bucket)]
        return out

    def new_failure_ids(self) -> set[str]:
        return {c.run_id for c in self.new_failures if c.run_id is not None}


def _change_dict(c: Change) -> dict:
    d = asdict(c)
    d["key"] = list(c.key)
    d["platform"], d["source"], d["package_set"] = c.key
    d["new_problems"] = list(c.new_problems)
    d["fixed_problems"] = list(c.fixed_problems)
    return d


def _problem_id(p: Problem) -> str:
    return f"{p.module}|{p.test}|{p.cls}|{p.kind}"


def _problems(result: RunResult | None) -> list[str]:
    if result is None:
        return []
    seen: dict[str, None] = {}
    for p in result.problems:
        seen.setdefault(_problem_id(p), None)
    return list(seen)


def _index(inp: ReportInput) -> dict[Key, tuple[Run, RunResult | None]]:
    # A key appears once per run folder (the spec drops duplicate runs); keep the first anyway.
    out: dict[Key, tuple[Run, RunResult | None]] = {}
    for run, result in inp.entries:
        out.setdefault(run.key, (run, result))
    return out


def compare(current: ReportInput, previous: ReportInput) -> Comparison:
    cur = _index(current)
    prev = _index(previous)
    cmp = Comparison(previous_title=previous.title, previous_started=previous.started)

    for key, (run, result) in cur.items():
        status = status_of(result)
        reason = result.reason if result is not None else ""
        if key not in prev:
            cmp.new_runs.append(Change(key, run.id, None, status, None, reason))
            continue
        prun, presult = prev[key]
        pstatus = status_of(presult)
        now_p, before_p = _problems(result), _problems(presult)
        before_set, now_set = set(before_p), set(now_p)
        change = Change(
            key,
            run.id,
            prun.id,
            status,
            pstatus,
            reason,
            new_problems=tuple(p for p in now_p if p not in before_set),
            fixed_problems=tuple(p for p in before_p if p not in now_set),
        )
        if PENDING in (status, pstatus):
            cmp.not_compared.append(change)
        elif is_failing(status) and not is_failing(pstatus):
            cmp.new_failures.append(change)
        elif is_failing(pstatus) and not is_failing(status):
            cmp.fixed.append(change)
        elif is_failing(status):
            cmp.still_failing.append(change)
        else:
            cmp.unchanged_passing += 1

    for key, (prun, presult) in prev.items():
        if key not in cur:
            reason = presult.reason if presult is not None else ""
            cmp.gone_runs.append(Change(key, None, prun.id, None, status_of(presult), reason))
    return cmp
