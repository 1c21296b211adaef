"""Parser for TAP, the Test Anything Protocol (versions 12, 13 and 14).

Read: the version line, the plan (``1..N``, first or last, ``1..0 # SKIP why`` for "nothing to
run"), top-level ``ok``/``not ok`` lines with ``# SKIP``/``# TODO`` directives (a ``not ok`` with
TODO is not a failure), TAP 13/14 YAML diagnostics (kept as the test's message), ``Bail out!``.
Indented lines (TAP 14 subtests) are left to their parent's summary line. A missing plan, a plan
that does not match the tests that ran, or a bail-out makes the log incomplete. Never raises.
"""

from __future__ import annotations

import itertools
import re

from vmharness.results.model import ParsedLog, Problem, TestCase, TestCounts
from vmharness.results.text import cap_message, iter_lines, parse_guarded

_VERSION_RE = re.compile(r"^TAP version (\d+)\s*$", re.IGNORECASE)
_PLAN_RE = re.compile(r"^1\.\.(\d{1,9})\s*(?:#\s*(.*))?$")
_TEST_RE = re.compile(r"^(not )?ok\b\s*(\d{1,9})?\s*(.*)$")
_DIRECTIVE_RE = re.compile(r"^\s*(skip|todo)\S*\s*(.*)$", re.IGNORECASE)
_BAIL_RE = re.compile(r"^\s*Bail out!\s*(.*)$")
_UNESCAPED_HASH_RE = re.compile(r"(?<!\\)#")
MAX_YAML_LINES = 500


def looks_like_tap(text: str) -> bool:
    """True when the first meaningful line of `text` is a TAP version, plan or test line."""
    for raw in itertools.islice(iter_lines(text), 200):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        return bool(_VERSION_RE.match(line) or _PLAN_RE.match(line) or _TEST_RE.match(line))
    return False


def parse_tap(text: str | bytes) -> ParsedLog:
    """Read a TAP stream. Never raises."""
    return parse_guarded("tap", "TAP", _parse, text)


def _parse(text: str) -> ParsedLog:
    parsed = ParsedLog(format="tap")
    notes: list[str] = []
    plan: int | None = None
    plan_reason = ""
    tests: list[TestCase] = []
    problem_of: dict[int, int] = {}  # test index -> problem index, to attach YAML later
    yaml_lines: list[str] | None = None
    yaml_indent = ""
    bailed = ""
    seen_numbers: set[int] = set()

    for raw in iter_lines(text):
        if yaml_lines is not None:
            if raw.strip() == "...":
                _attach(tests, parsed.problems, problem_of, "\n".join(yaml_lines))
                yaml_lines = None
                continue
            if raw.startswith(yaml_indent) or not raw.strip():
                if len(yaml_lines) < MAX_YAML_LINES:
                    yaml_lines.append(raw[len(yaml_indent) :])
                continue
            # a YAML block without its end: keep what it had, read this line normally
            _attach(tests, parsed.problems, problem_of, "\n".join(yaml_lines))
            yaml_lines = None
        if not raw.strip():
            continue
        b = _BAIL_RE.match(raw)
        if b:
            bailed = b.group(1).strip() or "no reason given"
            break
        if raw[:1].isspace():
            stripped = raw.strip()
            if stripped == "---" and tests:
                yaml_indent = raw[: len(raw) - len(raw.lstrip())]
                yaml_lines = []
            continue  # subtests and other indented lines
        line = raw.rstrip()
        if _VERSION_RE.match(line):
            continue
        p = _PLAN_RE.match(line)
        if p:
            if plan is None:
                plan = int(p.group(1))
                plan_reason = (p.group(2) or "").strip()
            else:
                notes.append("more than one plan line")
            continue
        t = _TEST_RE.match(line)
        if not t:
            continue  # comments, pragmas, anything else
        failed = bool(t.group(1))
        number = int(t.group(2)) if t.group(2) else len(tests) + 1
        if number in seen_numbers:
            notes.append(f"test number {number} seen twice")
        seen_numbers.add(number)
        desc, directive, why = _split_directive(t.group(3))
        name = desc or f"test {number}"
        if directive == "skip":
            tests.append(TestCase("", name, "", "skip", why))
        elif directive == "todo":
            # "not ok # TODO" is an expected failure; "ok # TODO" one that now passes.
            outcome = "skip" if failed else "ok"
            tests.append(TestCase("", name, "", outcome, f"TODO {why}".strip()))
        elif failed:
            tests.append(TestCase("", name, "", "fail", ""))
            problem_of[len(tests) - 1] = len(parsed.problems)
            parsed.problems.append(Problem("", name, "", "FAIL", "-", ""))
        else:
            tests.append(TestCase("", name, "", "ok", ""))
    if yaml_lines is not None:
        _attach(tests, parsed.problems, problem_of, "\n".join(yaml_lines))

    parsed.tests = tests
    parsed.counts = TestCounts(
        ok=sum(t.outcome == "ok" for t in tests),
        fail=sum(t.outcome == "fail" for t in tests),
        skip=sum(t.outcome == "skip" for t in tests),
    )
    if bailed:
        parsed.complete = False
        notes.insert(0, f"Bail out! {bailed}")
    elif plan is None:
        parsed.complete = False
        notes.insert(0, f"no plan line (1..N), {len(tests)} tests read")
    elif plan != len(tests):
        parsed.complete = False
        notes.insert(0, f"plan says 1..{plan} but {len(tests)} tests ran")
    elif plan == 0:
        notes.insert(0, f"nothing to run (1..0){': ' + plan_reason if plan_reason else ''}")
    parsed.note = "; ".join(notes)
    return parsed


def _split_directive(rest: str) -> tuple[str, str, str]:
    """'- name # SKIP why' -> ('name', 'skip', 'why'). Escaped '\\#' stays in the name."""
    directive, why = "", ""
    m = _UNESCAPED_HASH_RE.search(rest)
    if m:
        d = _DIRECTIVE_RE.match(rest[m.end() :])
        if d:
            directive, why = d.group(1).lower(), d.group(2).strip()
        rest = rest[: m.start()]
    desc = rest.strip()
    if desc.startswith("-"):
        desc = desc[1:].strip()
    return desc.replace("\\#", "#").replace("\\\\", "\\"), directive, why


def _attach(
    tests: list[TestCase], problems: list[Problem], problem_of: dict[int, int], yaml: str
) -> None:
    """Give the last test (and its problem) the YAML diagnostics that followed it."""
    if not tests:
        return
    i = len(tests) - 1
    message = cap_message(yaml.strip("\n"))
    t = tests[i]
    tests[i] = TestCase(t.module, t.name, t.cls, t.outcome, (t.message + "\n" + message).strip())
    if i in problem_of:
        p = problems[problem_of[i]]
        problems[problem_of[i]] = Problem(p.module, p.test, p.cls, p.kind, p.reason, message)
