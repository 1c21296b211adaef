"""A run's status from its parsed results, the way the OSG's analyzer decides it.

The OSG's order (opensciencegrid/vm-test-runs, bin/analyze_job_output.py), for osg-test logs:

1. ``timeout``: the suite's own alarm fired (``Caught alarm:``): nothing else counts.
2. ``fail``: the log has no closing summary, or no test passed at all.
3. ``ignore``: every failure is either a known failure valid today or in special_cleanup, and
   at least one is a known failure. Known failures match FAIL problems only (not ERRORs), by
   test name and module, between their start and end dates inclusive.
4. ``cleanup``: every failure is in special_cleanup.
5. ``update``: a failure in a test whose name contains ``_update_``.
6. ``install``: a failure in a test whose name contains ``install_packages``.
7. ``pass``: no failures, errors, timeouts or bad skips.
8. ``fail``: anything else (bad skips alone included).

Bad skips never decide steps 3-6 (the OSG looks at them only for pass/fail): in install.log the
bad skip test_04_update_osg_release does not make the run ``update``.

Parsers keep at most MAX_PROBLEMS problems and count the rest (ParsedLog.problems_more): those
count as failures (or bad skips) in the reason ("... and N more"), and as failures none of whose
names is known, so a run with some cannot be ``ignore`` or ``cleanup``.

JUnit and TAP: failures -> ``fail`` (or ``ignore`` when they are all known failures: known
failures are a spec feature, not an OSG one), none -> ``pass``; a TAP stream without its plan or
that bailed out -> ``fail``; JUnit without a single testcase -> ``fail``. For every format a
non-zero exit code turns a ``pass`` into a ``fail`` ("the test command exited N"). Without parsed
results only the exit code decides; with neither, the run ``died``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

from vmharness.results.model import ParsedLog, Problem
from vmharness.results.osgtest import looks_like_osg_test
from vmharness.results.tap import looks_like_tap
from vmharness.spec import KnownFailure

CLEANUP_MODULE = "special_cleanup"
UPDATE_MARK = "_update_"
INSTALL_MARK = "install_packages"
NAMES_SHOWN = 5


def classify(
    parsed: ParsedLog | None,
    *,
    exit_code: int | None,
    known_failures: list[KnownFailure],
    today: datetime.date,
) -> tuple[str, str]:
    """Return (status, reason): status one of model.STATUSES, reason a short human sentence."""
    if parsed is None or (parsed.format == "exit-code" and parsed.complete):
        if exit_code is None:
            return "died", "no test results and no exit code"
        if exit_code == 0:
            return "pass", "test command exited 0"
        return "fail", f"test command exited {exit_code}"

    if parsed.alarm:
        where = f" in {parsed.timeout_test}" if parsed.timeout_test else ""
        return "timeout", f"test suite timed out{where} (Caught alarm)"

    failures = [p for p in parsed.problems if p.kind != "SKIP"]
    bad_skips = [p for p in parsed.problems if p.kind == "SKIP"]
    more = (parsed.failures_more(), parsed.problems_more.get("SKIP", 0))
    osg = parsed.format == "osg-test"

    if not parsed.complete:
        why = _first_note(parsed.note) or "results incomplete"
        detail = _problem_text(failures, bad_skips, more)
        return "fail", f"{why}; {detail}" if detail else why
    if osg and parsed.counts.ok == 0:
        detail = _problem_text(failures, bad_skips, more)
        return "fail", f"no test passed; {detail}" if detail else "no test passed"
    if parsed.format == "junit" and not parsed.tests and not parsed.tests_more:
        return "fail", "no test cases in the JUnit results"

    status, reason = _by_problems(failures, bad_skips, more, known_failures, today, osg)
    if status == "pass":
        if exit_code not in (None, 0):
            return "fail", f"test command exited {exit_code} although no test failed"
        return "pass", _pass_text(parsed)
    return status, reason


def _by_problems(
    failures: list[Problem],
    bad_skips: list[Problem],
    more: tuple[int, int],
    known_failures: list[KnownFailure],
    today: datetime.date,
    osg: bool,
) -> tuple[str, str]:
    active = [kf for kf in known_failures if is_active(kf, today)]
    known = [p for p in failures if p.kind == "FAIL" and any(matches(kf, p) for kf in active)]
    cleanup = [p for p in failures if osg and p.module == CLEANUP_MODULE]
    known_ids = {id(p) for p in known}
    cleanup_ids = {id(p) for p in cleanup}
    unseen = more[0]  # failures counted but not kept: nothing is known of them

    if known and not unseen and all(id(p) in known_ids or id(p) in cleanup_ids for p in failures):
        reason = f"{_count(len(known), 'known failure')} ignored: {_names(known)}"
        rest = [p for p in cleanup if id(p) not in known_ids]
        if rest:
            reason += f"; {_count(len(rest), 'cleanup failure')}: {_names(rest)}"
        return "ignore", reason
    if osg and failures and not unseen and len(cleanup) == len(failures):
        return "cleanup", f"{_count(len(cleanup), 'cleanup failure')}: {_names(cleanup)}"
    if osg:
        update = [p for p in failures if UPDATE_MARK in p.test]
        if update:
            return "update", f"package update failed: {_names(update)}"
        install = [p for p in failures if INSTALL_MARK in p.test]
        if install:
            return "install", f"package installation failed: {_names(install)}"
    if not failures and not bad_skips and not any(more):
        return "pass", ""
    return "fail", _problem_text(failures, bad_skips, more)


def is_active(kf: KnownFailure, today: datetime.date) -> bool:
    """A known failure counts from its start date to its end date, both included."""
    try:
        start = _date(kf.start)
        end = _date(kf.end)
    except (TypeError, ValueError):
        return False
    return start <= today <= end


def matches(kf: KnownFailure, problem: Problem) -> bool:
    """Same test name, and the module named alike: exactly, as its last dotted part(s), as the
    test's class, or left empty / '*' for any module (TAP has no modules)."""
    if kf.test != problem.test:
        return False
    want = (kf.module or "").strip()
    if want in ("", "*"):
        return True
    have = problem.module
    return (
        want == have
        or want == problem.cls
        or have.endswith("." + want)
        or (bool(have) and want.endswith("." + have))
    )


def _date(value: object) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    return datetime.date.fromisoformat(str(value).strip())


def _first_note(note: str) -> str:
    return note.split("; ")[0].strip() if note else ""


def _problem_text(
    failures: list[Problem], bad_skips: list[Problem], more: tuple[int, int] = (0, 0)
) -> str:
    parts = []
    if failures or more[0]:
        parts.append(f"{len(failures) + more[0]} failed: {_names(failures, more=more[0])}")
    if bad_skips or more[1]:
        n = len(bad_skips) + more[1]
        parts.append(f"{_count(n, 'bad skip')}: {_names(bad_skips, more=more[1])}")
    return "; ".join(parts)


def _pass_text(parsed: ParsedLog) -> str:
    c = parsed.counts
    if not parsed.tests and not c.ok:
        return parsed.note or "no tests to run"
    text = f"{c.ok} passed"
    if c.skip:
        text += f", {c.skip} skipped"
    return text


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(problems: Iterable[Problem], limit: int = NAMES_SHOWN, more: int = 0) -> str:
    """The first `limit` distinct test names, then "and N more": the other names, and `more`
    problems that were counted but not kept."""
    names = list(dict.fromkeys(p.test for p in problems))
    shown = ", ".join(names[:limit])
    rest = max(0, len(names) - limit) + more
    if rest:
        shown += f" and {rest} more" if shown else f"{rest} not listed"
    return shown


def detect_format(filename: str, text: str) -> str:
    """Guess a results file's format from its name and the head of its text.

    Returns 'junit', 'tap', 'osg-test', or 'exit-code' when nothing structured is recognised
    (the run is then judged by the test command's exit code alone).
    """
    name = filename.lower()
    head = text[: 64 * 1024]
    stripped = head.lstrip("\ufeff \t\r\n")
    if stripped.startswith("<") and _JUNIT_RE.search(head):
        return "junit"
    if name.endswith(".tap") or looks_like_tap(head):
        return "tap"
    if looks_like_osg_test(head):
        return "osg-test"
    return "exit-code"


_JUNIT_RE = re.compile(r"<(?:\w+:)?(?:testsuites|testsuite|testcase)\b")
