"""Parser for osg-test's verbose log: Python unittest's verbose output, as osg-test extends it.

A log, as osg-test writes it (Python 2 or 3, any osg-test version since 2013)::

    test_01_install_ca (osgtest.tests.special_certs.TestCert) ... ok      <- one line per test
    setup system library path ... ok                                      <- docstring as name
    ...
    ======================================================================
    FAIL: test_03_install_packages (osgtest.tests.special_install.TestInstall)
    ----------------------------------------------------------------------
    Traceback (most recent call last): ...                 <- ERROR, FAIL, then TIMEOUT blocks
    ======================================================================
    BAD SKIPS:
    ----------------------------------------------------------------------
    test_04_update_osg_release (osgtest.tests.special_install.TestInstall) Install did not succeed
                                                           <- then OK SKIPS, EXCLUDED lists
    ----------------------------------------------------------------------
    Ran 293 tests in 829.522s

    FAILED (failures=1, badSkips=1, okSkips=231)          <- or OK, or OK(okSkips=30)
    --------------------------------------------------------------------------------
    OSG-TEST LOG                                           <- osg-test's own log, dumped after
    ...
    Caught alarm:                                          <- only when the suite's alarm fired

What makes it hard, and how this parser copes:

- A failure's traceback holds whatever the failed command printed, which can be a whole other
  unittest run with its own ``FAIL:`` blocks and ``Ran N tests`` summary (osg-configure's unit
  tests do this). A block header is taken as real only when it names a test seen in the per-test
  lines, or when no traceback is being read; the summary is the *last* ``Ran N tests`` +
  ``OK``/``FAILED`` pair of the test section, and is dropped again if a real block follows it.
- The dumped OSG-TEST LOG holds more unittest output; parsing of tests stops at its header.
- Output interleaved with the per-test lines: the outcome can land on a later line, text can
  precede a test's name, a long name can be wrapped. The per-test lines are read leniently;
  the FAIL/ERROR/TIMEOUT blocks and the BAD SKIPS/OK SKIPS lists are the authority on
  outcomes when both exist.
- Anything at all (binary junk, huge lines, a truncated file) is read without raising: lines are
  capped for matching, every pattern is linear, messages are capped.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

from vmharness.results.model import ParsedLog, Problem, TestCase, TestCounts
from vmharness.results.text import cap_message, iter_lines, parse_guarded

# Lines kept per traceback block while reading (the message is cut to MAX_MESSAGE later anyway).
MAX_BLOCK_LINES = 2000

# Per-test outcome words -> TestCase.outcome. The last two are Python 3 unittest's own words.
_TOKENS = {
    "ok": "ok",
    "FAIL": "fail",
    "ERROR": "error",
    "okskip": "skip",
    "BADSKIP": "badskip",
    "TIMEOUT": "timeout",
    "excluded": "skip",
    "expected failure": "ok",
    "unexpected success": "fail",
}
_TOKEN_ALT = "|".join(re.escape(t) for t in sorted(_TOKENS, key=len, reverse=True))
_KIND_OUTCOME = {"FAIL": "fail", "ERROR": "error", "TIMEOUT": "timeout"}
_OUTCOME_KIND = {v: k for k, v in _KIND_OUTCOME.items()}
_FAILED_OUTCOMES = ("fail", "error", "timeout")
_FIXTURES = ("setUpClass", "tearDownClass", "setUpModule", "tearDownModule")

# "name (dotted.path)": the lookbehind makes an unanchored search start only at word starts,
# which keeps it linear on long lines of word characters.
_DESC = r"(?<![\w.])(?P<name>[A-Za-z_]\w*) \((?P<path>[A-Za-z_][\w.]*)\)"
_TEST_RE = re.compile(_DESC + r" \.\.\.(?: (?P<rest>.*))?$")
_BARE_RE = re.compile(r"^\s*" + _DESC + r"\s*$")
_OPEN_RE = re.compile(r"^\s*(?P<name>[A-Za-z_]\w*) \((?P<path>[A-Za-z_][\w.]*)$")
_DOC_RE = re.compile(r"^(?P<desc>[^\s.].{0,300}?) \.\.\. (?P<tok>" + _TOKEN_ALT + r")\s*$")
_OUTCOME_TAIL_RE = re.compile(r"(?:^|(?<=\s)|(?<=\.\.\.))(?P<tok>" + _TOKEN_ALT + r")\s*$")
_ENTRY_RE = re.compile(r"^" + _DESC + r"(?: (?P<reason>.*))?$")
_DESC_ONLY_RE = re.compile(r"^" + _DESC + r"$")

_SEP1_RE = re.compile(r"^={20,}\s*$")
_SEP2_RE = re.compile(r"^-{20,}\s*$")
_HEADER_RE = re.compile(r"^(FAIL|ERROR|TIMEOUT): (\S.*?)\s*$")
_LIST_RE = re.compile(r"^(BAD SKIPS|OK SKIPS|EXCLUDED):\s*$")
_RAN_RE = re.compile(r"^Ran (\d{1,9}) tests? in [\d.]+s\s*$")
_RESULT_RE = re.compile(r"^(OK|FAILED)\s*(?:\(([^()]{0,500})\))?\s*$")
_FRAME_RE = re.compile(r'File "(?P<file>[^"]*)", line \d+, in (?P<func>\w+)')

ALARM_MARKER = "Caught alarm:"
DUMP_MARKER = "OSG-TEST LOG"


def parse_osg_test(text: str | bytes) -> ParsedLog:
    """Read an osg-test log. Never raises: a log that cannot be read is an incomplete ParsedLog."""
    return parse_guarded("osg-test", "osg-test log", lambda t: _Parser(t).run(), text)


def looks_like_osg_test(text: str) -> bool:
    """True when `text` (the head of a file) has unittest-style verbose lines or a summary."""
    for line in iter_lines(text):
        if _RAN_RE.match(line):
            return True
        m = _HEADER_RE.match(line)
        if m and _DESC_ONLY_RE.match(m.group(2)):
            return True
        m = _TEST_RE.match(line)
        if m and (m.group("rest") or "").strip() in _TOKENS:
            return True
    return False


def split_path(name: str, path: str) -> tuple[str, str]:
    """'osgtest.tests.test_50_voms.TestVOMS' -> ('test_50_voms', 'TestVOMS'), as the OSG does.

    Python 3.11+ writes 'test_x (pkg.mod.Class.test_x)': the trailing test name is dropped.
    """
    parts = [p for p in path.split(".") if p]
    if len(parts) >= 2 and parts[-1] == name:
        parts = parts[:-1]
    if not parts:
        return "", ""
    if len(parts) == 1:
        return "", parts[0]
    return parts[-2], parts[-1]


class _Lines:
    """A line iterator that can look a few lines ahead."""

    def __init__(self, text: str) -> None:
        self._it = iter_lines(text)
        self._buf: deque[str] = deque()

    def peek(self, k: int = 0) -> str | None:
        while len(self._buf) <= k:
            nxt = next(self._it, None)
            if nxt is None:
                return None
            self._buf.append(nxt)
        return self._buf[k]

    def next(self) -> str | None:
        if self._buf:
            return self._buf.popleft()
        return next(self._it, None)


@dataclass
class _Rec:
    """One test as read from the log."""

    desc: str  # what headers and lists call it: "name (path)" or a docstring line
    name: str
    module: str
    cls: str
    outcome: str | None = None  # None: printed, outcome not read (yet)
    message: str = ""
    from_line: bool = True  # False: known only from a block or a list


@dataclass
class _Block:
    kind: str  # FAIL | ERROR | TIMEOUT
    desc: str
    lines: list[str] = field(default_factory=list)
    dropped: int = 0

    def add(self, line: str) -> None:
        if len(self.lines) < MAX_BLOCK_LINES:
            self.lines.append(line)
        else:
            self.dropped += 1


@dataclass
class _Summary:
    ran: int
    ok: bool
    details: dict[str, int]
    block: _Block | None  # the block being read when the summary appeared
    block_len: int  # its length then: what follows belongs to the block only if it was nested


@dataclass
class _Entry:
    flavour: str  # BAD SKIPS | OK SKIPS | EXCLUDED
    desc: str
    name: str
    path: str
    reason: str
    more: list[str] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.recs: list[_Rec] = []
        self.by_desc: dict[str, list[_Rec]] = {}
        self.doc_descs: set[str] = set()
        self.pending: _Rec | None = None
        self.bare: tuple[str, str] | None = None  # first line of a two-line description
        self.wrapped: str | None = None  # first part of a test line wrapped inside its name
        self.blocks: list[_Block] = []
        self.block: _Block | None = None
        self.entries: list[_Entry] = []
        self.skiplist: str | None = None
        self.summary: _Summary | None = None
        self.notes: list[str] = []

    # -- reading -------------------------------------------------------------------------------

    def run(self) -> ParsedLog:
        lines = _Lines(self.text)
        phase = "tests"
        prev = ""
        while (line := lines.next()) is not None:
            first = line[:1]
            if first == "O" and line.strip() == DUMP_MARKER and _SEP2_RE.match(prev):
                break
            if first == "=" and _SEP1_RE.match(line) and self._structure_after_sep1(lines):
                phase = "report"
                prev = ""
                continue
            if first == "-" and _SEP2_RE.match(line) and self._summary_after_sep2(lines, line):
                phase = "report"
                prev = ""
                continue
            if phase == "tests":
                self._test_line(line)
            elif self.skiplist is not None:
                if line.strip():
                    self._entry_line(line)
                else:
                    self.skiplist = None
            elif self.block is not None:
                self.block.add(line)
            prev = line
        return self._finish()

    def _structure_after_sep1(self, lines: _Lines) -> bool:
        """At a ===== line: a FAIL/ERROR/TIMEOUT block or a skip list starting here?"""
        nxt, after = lines.peek(0), lines.peek(1)
        if nxt is None or after is None:
            return False
        m = _HEADER_RE.match(nxt)
        if m:
            # Python 3 adds the docstring's first line under the header: one line more.
            skip = 2 if _SEP2_RE.match(after) else 3
            if skip == 3 and (not after.strip() or not _SEP2_RE.match(lines.peek(2) or "")):
                return False
            if not self._accept_header(m.group(2)):
                return False
            self.skiplist = None
            self.summary = None  # a real block after a summary: that summary was nested output
            self.block = _Block(kind=m.group(1), desc=m.group(2))
            self.blocks.append(self.block)
            for _ in range(skip):
                lines.next()
            return True
        m = _LIST_RE.match(nxt)
        if m and _SEP2_RE.match(after):
            self.block = None
            self.summary = None
            self.skiplist = m.group(1)
            lines.next()
            lines.next()
            return True
        return False

    def _summary_after_sep2(self, lines: _Lines, sep: str) -> bool:
        """At a ----- line: 'Ran N tests' then OK/FAILED within three lines?"""
        nxt = lines.peek(0)
        m = _RAN_RE.match(nxt) if nxt is not None else None
        if m is None:
            return False
        result = None
        k = 1
        while k <= 3:
            cand = lines.peek(k)
            if cand is None:
                break
            if cand.strip():
                result = _RESULT_RE.match(cand.strip())
                break
            k += 1
        if result is None:
            return False
        details: dict[str, int] = {}
        for part in (result.group(2) or "").split(","):
            key, _, value = part.strip().partition("=")
            if value.strip().isdigit():
                details[key.strip()] = int(value.strip())
        self.skiplist = None
        self.summary = _Summary(
            ran=int(m.group(1)),
            ok=result.group(1) == "OK",
            details=details,
            block=self.block,
            block_len=len(self.block.lines) if self.block else 0,
        )
        # The consumed lines still belong to the traceback if this summary turns out nested.
        if self.block is not None:
            self.block.add(sep)
        for _ in range(k + 1):
            consumed = lines.next()
            if self.block is not None and consumed is not None:
                self.block.add(consumed)
        return True

    def _accept_header(self, desc: str) -> bool:
        # A header naming a test this run printed is real. One naming another test is real only
        # when no traceback is being read: inside one it is the failed command's own output.
        # Class and module fixtures (setUpClass ...) fail without a per-test line of their own.
        return desc in self.by_desc or self.block is None or desc.split(" (")[0] in _FIXTURES

    def _test_line(self, line: str) -> None:
        if not line.strip():
            self.bare = None
            return
        if self.wrapped is not None:
            joined = self.wrapped + line.lstrip()
            self.wrapped = None
            if _TEST_RE.search(joined) or _BARE_RE.match(joined):
                line = joined
        m = _TEST_RE.search(line)
        if m:
            self._settle_pending()
            self.bare = None
            rec = self._add(m.group("name"), m.group("path"))
            self._take_outcome(rec, m.group("rest") or "")
            return
        if self.pending is not None:
            t = _OUTCOME_TAIL_RE.search(line)
            if t:
                self.pending.outcome = _TOKENS[t.group("tok")]
                self.pending = None
                return
        m = _BARE_RE.match(line)
        if m:
            self.bare = (m.group("name"), m.group("path"))
            return
        m = _OPEN_RE.match(line)
        if m:
            self.wrapped = line
            return
        m = _DOC_RE.match(line)
        if m and self.pending is None:
            if self.bare is not None:  # Python 3: "test_x (m.C.test_x)" then "Docstring ... ok"
                rec = self._add(*self.bare)
                rec.message = m.group("desc").strip()
            else:  # Python 2 with descriptions: the docstring replaces the name
                desc = m.group("desc").strip()
                rec = self._add_rec(_Rec(desc=desc, name=desc, module="", cls=""))
                self.doc_descs.add(desc)
            rec.outcome = _TOKENS[m.group("tok")]
        if line.strip():
            self.bare = None

    def _take_outcome(self, rec: _Rec, rest: str) -> None:
        rest = rest.strip()
        if rest in _TOKENS:
            rec.outcome = _TOKENS[rest]
            return
        if rest.startswith("skipped"):  # Python 3: "skipped 'reason'"
            rec.outcome = "skip"
            rec.message = rest[len("skipped") :].strip().strip("'\"")
            return
        t = _OUTCOME_TAIL_RE.search(rest)
        if t:
            rec.outcome = _TOKENS[t.group("tok")]
            # e.g. "SKIPPED (missing tomcat5) ... ok": the test itself said why it did nothing
            rec.message = rest[: t.start()].strip().removesuffix("...").strip()
            return
        self.pending = rec

    def _settle_pending(self) -> None:
        """A new test started before the last one's outcome was read: it was glued to output."""
        if self.pending is not None:
            self.pending.outcome = "ok"  # blocks and skip lists below correct it if need be
            self.pending = None

    def _add(self, name: str, path: str) -> _Rec:
        module, cls = split_path(name, path)
        return self._add_rec(_Rec(desc=f"{name} ({path})", name=name, module=module, cls=cls))

    def _add_rec(self, rec: _Rec) -> _Rec:
        self.recs.append(rec)
        self.by_desc.setdefault(rec.desc, []).append(rec)
        return rec

    def _entry_line(self, line: str) -> None:
        assert self.skiplist is not None
        m = _ENTRY_RE.match(line)
        if m:
            name, path = m.group("name"), m.group("path")
            self.entries.append(
                _Entry(self.skiplist, f"{name} ({path})", name, path, (m.group("reason") or ""))
            )
            return
        for desc in self.doc_descs:
            if line == desc or line.startswith(desc + " "):
                self.entries.append(_Entry(self.skiplist, desc, desc, "", line[len(desc) :]))
                return
        if self.entries and self.entries[-1].flavour == self.skiplist:
            self.entries[-1].more.append(line)  # a reason that spans lines

    # -- making sense of it ---------------------------------------------------------------------

    def _lookup(self, desc: str, want: str | None, claimed: set[int]) -> _Rec | None:
        cands = self.by_desc.get(desc, [])
        for rec in cands:
            if id(rec) not in claimed and rec.outcome == want:
                return rec
        for rec in cands:
            if id(rec) not in claimed:
                return rec
        return cands[-1] if cands else None

    def _rec_for(self, desc: str, want: str | None, claimed: set[int]) -> _Rec:
        rec = self._lookup(desc, want, claimed)
        if rec is not None:
            return rec
        m = _DESC_ONLY_RE.match(desc)
        if m:
            name, path = m.group("name"), m.group("path")
            module, cls = split_path(name, path)
        else:
            name, module, cls = desc, "", ""
        return self._add_rec(_Rec(desc=desc, name=name, module=module, cls=cls, from_line=False))

    def _valid_summary(self) -> _Summary | None:
        s = self.summary
        if s is None:
            return None
        seen = sum(1 for r in self.recs if r.from_line)
        if s.ran < seen:
            self.notes.append(f"ignored a summary of {s.ran} tests after {seen} test lines")
            return None
        if s.ok and (self.blocks or any(e.flavour == "BAD SKIPS" for e in self.entries)):
            self.notes.append("ignored an OK summary that follows failures")
            return None
        if s.block is not None:  # the summary ended the last block's traceback: cut it there
            del s.block.lines[s.block_len :]
            s.block.dropped = 0
        return s

    def _finish(self) -> ParsedLog:
        summary = self._valid_summary()
        complete = summary is not None
        running = self.pending  # printed, never finished: the test running when the log ended
        problems: list[Problem] = []
        claimed: set[int] = set()
        failed_with_problem: set[tuple[int, str]] = set()

        for block in self.blocks:
            outcome = _KIND_OUTCOME[block.kind]
            rec = self._rec_for(block.desc, outcome, claimed)
            claimed.add(id(rec))
            message = _block_message(block)
            if rec.outcome not in _FAILED_OUTCOMES:
                rec.outcome = outcome
            if not rec.message or not rec.from_line:
                rec.message = message
            if rec is running:
                running = None
            problems.append(Problem(rec.module, rec.name, rec.cls, block.kind, "-", message))
            failed_with_problem.add((id(rec), block.kind))

        for rec in self.recs:
            if rec.outcome in _FAILED_OUTCOMES:
                kind = _OUTCOME_KIND[rec.outcome]
                if (id(rec), kind) not in failed_with_problem:
                    problems.append(Problem(rec.module, rec.name, rec.cls, kind, "-", ""))
                    failed_with_problem.add((id(rec), kind))

        bad_done: set[int] = set()
        entry_claimed: set[int] = set()
        for entry in self.entries:
            want = "badskip" if entry.flavour == "BAD SKIPS" else "skip"
            rec = self._rec_for(entry.desc, want, entry_claimed)
            entry_claimed.add(id(rec))
            reason = entry.reason.strip()
            full = "\n".join([reason, *entry.more]).strip()
            if rec is running:
                running = None
            if entry.flavour == "BAD SKIPS":
                rec.outcome = "badskip"
                rec.message = full
                problems.append(Problem(rec.module, rec.name, rec.cls, "SKIP", reason or "-", full))
                bad_done.add(id(rec))
            elif rec.outcome not in _FAILED_OUTCOMES:
                rec.outcome = "skip"
                rec.message = full
        for rec in self.recs:
            if rec.outcome == "badskip" and id(rec) not in bad_done:
                problems.append(Problem(rec.module, rec.name, rec.cls, "SKIP", "-", rec.message))

        tests: list[TestCase] = []
        for rec in self.recs:
            if rec.outcome is None:
                if rec is running and not complete:
                    continue  # it never finished
                rec.outcome = "ok"
            tests.append(TestCase(rec.module, rec.name, rec.cls, rec.outcome, rec.message))

        counts = _tally(tests)
        if summary is not None:
            total = counts.ok + counts.fail + counts.error + counts.skip
            if total != summary.ran:
                self.notes.append(
                    f"summary says {summary.ran} tests, {total} test results read; "
                    "counts taken from the summary"
                )
                counts = _counts_from_summary(summary)
        else:
            self.notes.insert(
                0, f"log ends before its summary line ({len(tests)} test results read)"
            )

        alarm, frame_test = self._alarm()
        timeout_test = ""
        if alarm:
            self.notes.append("the suite's own timeout fired (Caught alarm)")
            if running is not None:
                timeout_test = running.name
                if running.module:
                    timeout_test += f" ({running.module})"
            else:
                timeout_test = frame_test
        return ParsedLog(
            format="osg-test",
            tests=tests,
            counts=counts,
            problems=problems,
            alarm=alarm,
            complete=complete,
            note="; ".join(self.notes),
            timeout_test=timeout_test,
        )

    def _alarm(self) -> tuple[bool, str]:
        """Whether 'Caught alarm:' is in the log, and the test in its stack, as 'test (module)'."""
        idx = self.text.find(ALARM_MARKER)
        if idx < 0:
            return False, ""
        found = ""
        first = True
        for line in iter_lines(self.text[idx : idx + 256 * 1024]):
            if first:
                first = False
                continue
            if line and not line[0].isspace():
                break
            m = _FRAME_RE.search(line)
            if m and "tests/" in m.group("file").replace("\\", "/"):
                module = m.group("file").replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".py")
                found = f"{m.group('func')} ({module})"
        return True, found


def _block_message(block: _Block) -> str:
    lines = list(block.lines)
    while lines and (
        not lines[-1].strip() or _SEP1_RE.match(lines[-1]) or _SEP2_RE.match(lines[-1])
    ):
        lines.pop()
    text = "\n".join(lines).strip("\n")
    if block.dropped:
        text += f"\n[... {block.dropped} more lines ...]"
    return cap_message(text)


def _tally(tests: list[TestCase]) -> TestCounts:
    c = TestCounts()
    for t in tests:
        if t.outcome == "ok":
            c.ok += 1
        elif t.outcome in ("fail", "timeout"):
            c.fail += 1
        elif t.outcome == "error":
            c.error += 1
        else:
            c.skip += 1
    return c


def _counts_from_summary(s: _Summary) -> TestCounts:
    d = s.details
    fail = d.get("failures", 0) + d.get("timeouts", 0)
    error = d.get("errors", 0)
    skip = d.get("okSkips", 0) + d.get("badSkips", 0) + d.get("skipped", 0)
    ok = max(0, s.ran - fail - error - skip)
    return TestCounts(ok=ok, fail=fail, error=error, skip=skip)
