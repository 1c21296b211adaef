"""Parser for TAP, the Test Anything Protocol (versions 12, 13 and 14).

Read: the version line, the plan (``1..N``, first or last, ``1..0 # SKIP why`` for "nothing to
run"), top-level ``ok``/``not ok`` lines with ``# SKIP``/``# TODO`` directives (the word SKIP or
TODO, any case, then whitespace or the end: ``# todoist`` is a comment; a ``not ok`` with TODO
is not a failure), TAP 13/14 YAML diagnostics (kept as the test's message), ``Bail out!``.
Indented lines (TAP 14 subtests) are left to their parent's summary line. A missing plan, a plan
that does not match the tests that ran, or a bail-out makes the log incomplete. Never raises;
linear time, and at most MAX_TESTS tests and MAX_PROBLEMS problems kept (the rest counted).
"""

from __future__ import annotations

import itertools
import re

from vmharness.results.model import ParsedLog, Problem, TestCase, TestCounts
from vmharness.results.text import CappedText, Kept, iter_lines, parse_guarded

_VERSION_RE = re.compile(r"^TAP version (\d+)\s*+$", re.IGNORECASE)
_PLAN_RE = re.compile(r"^1\.\.(\d{1,9})\s*+(?:#\s*+(.*))?$")
_TEST_RE = re.compile(r"^(not )?ok\b\s*+(\d{1,9})?\s*+(.*)$")
_DIRECTIVE_RE = re.compile(r"^\s*+(skip|todo)(?:\s++(.*))?$", re.IGNORECASE)
_BAIL_RE = re.compile(r"^\s*+Bail out!\s*+(.*)$")
_UNESCAPED_HASH_RE = re.compile(r"(?<!\\)#")
# Test numbers remembered to tell repeats (past that many tests, repeats are not looked for).
MAX_NUMBERS = 100_000


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


def _parse(text: str | bytes) -> ParsedLog:
    kept = Kept()
    counts = TestCounts()
    notes: list[str] = []
    plan: int | None = None
    plan_reason = ""
    plans = 0
    n_tests = 0
    last: tuple[int, int | None] | None = None  # the last test kept: its index, its problem's
    yaml: CappedText | None = None
    yaml_indent = ""
    bailed = ""
    seen_numbers: set[int] = set()
    repeats = 0
    first_repeat = 0

    for raw in iter_lines(text):
        if yaml is not None:
            if raw.strip() == "...":
                _attach(kept, last, yaml)
                yaml = None
                continue
            if raw.startswith(yaml_indent) or not raw.strip():
                yaml.add(raw[len(yaml_indent) :] + "\n")
                continue
            # a YAML block without its end: keep what it had, read this line normally
            _attach(kept, last, yaml)
            yaml = None
        if not raw:
            continue
        if "Bail out!" in raw:
            b = _BAIL_RE.match(raw)
            if b:
                bailed = b.group(1).strip() or "no reason given"
                break
        if raw[:1].isspace():
            stripped = raw.strip()
            if stripped == "---" and n_tests:
                yaml_indent = raw[: len(raw) - len(raw.lstrip())]
                yaml = CappedText()
            continue  # subtests and other indented lines
        c = raw[:1]
        if c not in "on1Tt":
            continue  # comments, pragmas, anything else
        line = raw.rstrip()
        if c in "Tt":
            continue  # a version line (or anything else starting so)
        if c == "1":
            p = _PLAN_RE.match(line)
            if p:
                plans += 1
                if plan is None:
                    plan = int(p.group(1))
                    plan_reason = (p.group(2) or "").strip()
            continue
        failed = c == "n"
        k = 6 if failed else 2
        if not line.startswith("not ok" if failed else "ok"):
            continue
        after = line[k : k + 1]
        if after.isalnum() or after == "_":
            continue  # "okay", "nothing": not a test line
        n_tests += 1
        if len(seen_numbers) >= MAX_NUMBERS and "#" not in line:
            # Past every cap: only the outcome counts (and a directive, looked at below).
            if failed:
                counts.fail += 1
                kept.more("FAIL")
            else:
                counts.ok += 1
            kept.tests_more += 1
            last = None
            continue
        t = _TEST_RE.match(line)
        if not t:
            continue
        number = int(t.group(2)) if t.group(2) else n_tests
        if number in seen_numbers:
            repeats += 1
            first_repeat = first_repeat or number
        elif len(seen_numbers) < MAX_NUMBERS:
            seen_numbers.add(number)
        rest = t.group(3)
        if "#" in rest:
            desc, directive, why = _split_directive(rest)
        else:  # the common case, quickly
            desc, directive, why = _description(rest), "", ""
        name = desc or f"test {number}"
        if directive == "skip":
            outcome, message = "skip", why
        elif directive == "todo":
            # "not ok # TODO" is an expected failure; "ok # TODO" one that now passes.
            outcome, message = ("skip" if failed else "ok"), f"TODO {why}".strip()
        elif failed:
            outcome, message = "fail", ""
        else:
            outcome, message = "ok", ""
        where = None
        if outcome == "ok":
            counts.ok += 1
        elif outcome == "fail":
            counts.fail += 1
            if kept.room_for_problem():
                kept.problem(Problem("", name, "", "FAIL", "-", ""))
                where = len(kept.problems) - 1
            else:
                kept.more("FAIL")
        else:
            counts.skip += 1
        if kept.room_for_test():
            kept.test(TestCase("", name, "", outcome, kept.message(message)))
            last = (len(kept.tests) - 1, where)
        else:
            kept.tests_more += 1
            last = None
    if yaml is not None:
        _attach(kept, last, yaml)

    parsed = kept.into(ParsedLog(format="tap", counts=counts))
    if plans > 1:
        notes.append("more than one plan line")
    if repeats:
        more = f" (and {repeats - 1} more repeats)" if repeats > 1 else ""
        notes.append(f"test number {first_repeat} seen twice{more}")
    if bailed:
        parsed.complete = False
        notes.insert(0, f"Bail out! {bailed[:200]}")
    elif plan is None:
        parsed.complete = False
        notes.insert(0, f"no plan line (1..N), {n_tests} tests read")
    elif plan != n_tests:
        parsed.complete = False
        notes.insert(0, f"plan says 1..{plan} but {n_tests} tests ran")
    elif plan == 0:
        reason = plan_reason[:200]
        notes.insert(0, f"nothing to run (1..0){': ' + reason if reason else ''}")
    parsed.note = "; ".join(notes)
    return parsed


def _split_directive(rest: str) -> tuple[str, str, str]:
    """'- name # SKIP why' -> ('name', 'skip', 'why'). Escaped '\\#' stays in the name."""
    directive, why = "", ""
    m = _UNESCAPED_HASH_RE.search(rest)
    if m:
        d = _DIRECTIVE_RE.match(rest[m.end() :])
        if d:
            directive, why = d.group(1).lower(), (d.group(2) or "").strip()
        rest = rest[: m.start()]
    return _description(rest), directive, why


def _description(rest: str) -> str:
    """'- name' -> 'name', unescaping '\\#' and '\\\\'."""
    desc = rest.strip()
    if desc.startswith("-"):
        desc = desc[1:].strip()
    if "\\" in desc:
        desc = desc.replace("\\#", "#").replace("\\\\", "\\")
    return desc


def _attach(kept: Kept, last: tuple[int, int | None] | None, yaml: CappedText) -> None:
    """Give the last test (and its problem) the YAML diagnostics that followed it."""
    if last is None:
        return
    i, where = last
    message = kept.message(yaml.value().strip("\n"))
    t = kept.tests[i]
    text = (t.message + "\n" + message).strip()
    kept.tests[i] = TestCase(t.module, t.name, t.cls, t.outcome, text)
    if where is not None:
        p = kept.problems[where]
        kept.problems[where] = Problem(p.module, p.test, p.cls, p.kind, p.reason, message)
