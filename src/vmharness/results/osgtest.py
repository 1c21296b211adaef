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

A complete log (its summary and its FAIL/ERROR/TIMEOUT blocks agree) is judged by the summary and
the blocks, as the OSG's own analyzer does; a log cut off (a VM killed mid-run) by what its test
lines say. What makes it hard, and how this parser copes:

- A failure's traceback holds whatever the failed command printed, which can be a whole other
  unittest run with its own ``FAIL:`` blocks and ``Ran N tests`` summary (osg-configure's unit
  tests do this). A block header is taken as real only when it names a test seen in the per-test
  lines, or when no traceback is being read; the summary is the *last* ``Ran N tests`` +
  ``OK``/``FAILED`` pair of the test section, and is dropped again if a real block follows it,
  or if it closes a block header that was not taken (a nested run's report).
- A test can print such a run straight to the terminal, among the per-test lines: test lines
  printed while another test runs (after its ``... `` and before its outcome), and repeats of
  lines already read, are that test's output. They do not count against ``Ran N``, and blocks
  that name only them are dropped when the summary agrees without them (an ``OK`` summary after
  such blocks is honoured). Per-test lines after such a block, summary or list show the run
  goes on: what was read since is dropped as output.
- The dumped OSG-TEST LOG holds more unittest output; parsing of tests stops at its header.
- Output interleaved with the per-test lines: the outcome can land on a later line (the last
  outcome word read before the next test counts, a line holding only the word wins), text can
  precede a test's name, a long name can be wrapped.
- Anything at all (binary junk, huge lines, a truncated file) is read without raising, in time
  linear in its size and bounded memory: lines are cut for matching, no pattern backtracks,
  tracebacks are kept to their head and tail while read, at most MAX_TESTS tests and
  MAX_PROBLEMS problems are kept (the rest counted), messages share a budget.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from vmharness.results.model import ParsedLog, Problem, TestCase, TestCounts
from vmharness.results.text import (
    MAX_NAME,
    MAX_PROBLEMS,
    MAX_TESTS,
    CappedText,
    Kept,
    clip,
    decode,
    iter_lines,
    parse_guarded,
)

# Blank and separator lines held back at a traceback's end (they are not part of its message).
MAX_TRAILING_LINES = 64
# Distinct top-level packages counted for the "Ran N" check (the rest count under "").
MAX_ROOTS = 64
# Characters of a skip list entry's reason kept (they are one short line, as osg-test writes them).
MAX_REASON = 2048

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
_TOKEN_ORDER = sorted(_TOKENS, key=len, reverse=True)
_TOKEN_ALT = "|".join(re.escape(t) for t in _TOKEN_ORDER)
_KIND_OUTCOME = {"FAIL": "fail", "ERROR": "error", "TIMEOUT": "timeout"}
_OUTCOME_KIND = {v: k for k, v in _KIND_OUTCOME.items()}
_FAILED_OUTCOMES = ("fail", "error", "timeout")
_FIXTURES = ("setUpClass", "tearDownClass", "setUpModule", "tearDownModule")

# "name (dotted.path)": the lookbehind makes an unanchored search start only at word starts,
# which keeps it linear on long lines of word characters. No pattern here has a quantified
# group whose matches can overlap its neighbour's, and the ones ending in \s*$ are possessive.
_DESC = r"(?<![\w.])(?P<name>[A-Za-z_]\w*) \((?P<path>[A-Za-z_][\w.]*)\)"
_TEST_RE = re.compile(_DESC + r" \.\.\.(?: (?P<rest>.*))?$")
_BARE_RE = re.compile(r"^\s*+" + _DESC + r"\s*+$")
_OPEN_RE = re.compile(r"^\s*+(?P<name>[A-Za-z_]\w*) \((?P<path>[A-Za-z_][\w.]*)$")
_DOC_RE = re.compile(r"^(?P<desc>[^\s.].{0,300}?) \.\.\. (?P<tok>" + _TOKEN_ALT + r")\s*+$")
_ENTRY_RE = re.compile(r"^" + _DESC + r"(?: (?P<reason>.*))?$")
_DESC_ONLY_RE = re.compile(r"^" + _DESC + r"$")
_DESC_HEAD_RE = re.compile(r"^" + _DESC)

_SEP1_RE = re.compile(r"^={20,}+\s*+$")
_SEP2_RE = re.compile(r"^-{20,}+\s*+$")
# The description is group 2 with its end stripped (a lazy .*? before \s*$ backtracked).
_HEADER_RE = re.compile(r"^(FAIL|ERROR|TIMEOUT): (\S.*)")
_LIST_RE = re.compile(r"^(BAD SKIPS|OK SKIPS|EXCLUDED):\s*+$")
_RAN_RE = re.compile(r"^Ran (\d{1,9}) tests? in [\d.]++s\s*+$")
_RESULT_RE = re.compile(r"^(OK|FAILED)\s*+(?:\(([^()]{0,500})\))?\s*+$")
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
        if m and _DESC_ONLY_RE.match(m.group(2).rstrip()):
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


def _tail_token(text: str) -> tuple[str, int] | None:
    """The outcome word that ends `text` (after whitespace or '...'), and where it starts."""
    s = text.rstrip()
    for tok in _TOKEN_ORDER:
        if s.endswith(tok):
            start = len(s) - len(tok)
            if start == 0 or s[start - 1].isspace() or s.endswith("...", 0, start):
                return tok, start
    return None


class _Lines:
    """A line iterator that can look a few lines ahead."""

    def __init__(self, text: str | bytes) -> None:
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

    def __iter__(self) -> Iterator[str]:
        buf = self._buf
        for line in self._it:
            if not buf:
                yield line
                continue
            buf.append(line)  # after the lines looked at ahead (and any looked at from now on)
            while buf:
                yield buf.popleft()
        while buf:
            yield buf.popleft()


@dataclass(slots=True, eq=False)
class _Rec:
    """One test as read from the log."""

    desc: str  # what headers and lists call it: "name (path)" or a docstring line
    name: str
    module: str
    cls: str
    root: str = ""  # its path's first part ("osgtest")
    outcome: str | None = None  # None: printed, outcome not read (yet)
    tentative: str | None = None  # an outcome word that ended a later output line
    message: str = ""
    from_line: bool = True  # False: known only from a block or a list
    nested: bool = False  # printed while another test ran, or a repeat: that test's output
    stored: bool = True  # False: past MAX_TESTS, only counted
    claimed: bool = False  # matched to a block or list entry (one pass at a time)


class _Traceback:
    """A block's text while it is read: bounded, trailing blank and separator lines held back."""

    def __init__(self) -> None:
        self.text = CappedText()
        self.trailing: list[str] = []
        self.started = False

    def add(self, line: str) -> None:
        c = line[:1]
        if not line.strip() or (c in "=-" and (_SEP1_RE.match(line) or _SEP2_RE.match(line))):
            self.trailing.append(line)
            if len(self.trailing) > MAX_TRAILING_LINES:
                self._commit(self.trailing.pop(0))
            return
        for held in self.trailing:
            self._commit(held)
        self.trailing.clear()
        self._commit(line)

    def _commit(self, line: str) -> None:
        if self.started:
            self.text.add("\n")
        self.started = True
        self.text.add(line)

    def mark(self) -> tuple[int, tuple[str, ...], bool]:
        return self.text.total, tuple(self.trailing), self.started

    def reset(self, mark: tuple[int, tuple[str, ...], bool]) -> None:
        total, trailing, started = mark
        self.text.truncate(total)
        self.trailing = list(trailing)
        self.started = started

    def message(self) -> str:
        return self.text.value().strip("\n")


@dataclass(slots=True, eq=False)
class _Block:
    kind: str  # FAIL | ERROR | TIMEOUT
    desc: str  # as its header names it
    key: str  # the test it is about: desc, without subtest parameters when they were added
    loose: bool  # names no test this run printed itself (nor a class or module fixture)
    text: _Traceback | None  # while read (None past MAX_PROBLEMS: only counted)
    message: str = ""
    output: bool = False  # decided at the end: a test's output, not this run's report


@dataclass
class _Summary:
    ran: int
    ok: bool
    details: dict[str, int]
    block: _Block | None  # the block being read when the summary appeared
    mark: tuple[int, tuple[str, ...], bool] | None  # that block's text then
    after_refused: bool  # it closes a block header that was not taken: a nested run's report


@dataclass(slots=True, eq=False)
class _Entry:
    flavour: str  # BAD SKIPS | OK SKIPS | EXCLUDED
    desc: str
    reason: str
    more: CappedText | None = None  # a reason that spans lines


@dataclass
class _Rollback:
    """What was read before the report seemed to start, to go back to if the tests go on."""

    blocks: int
    kinds: dict[tuple[str, bool], int]
    entries: int
    entries_more: dict[str, int]


class _Claims:
    """Which test a block or list entry is about: the first not yet claimed whose outcome is the
    one wanted, else the first not yet claimed, else the last of that name. Linear overall."""

    def __init__(self, by_desc: dict[str, list[_Rec]]) -> None:
        self.by_desc = by_desc
        self._queues: dict[str, dict[str | None, deque[tuple[int, _Rec]]]] = {}
        for recs in by_desc.values():
            for rec in recs:
                rec.claimed = False

    def take(self, desc: str, want: str | None) -> _Rec | None:
        recs = self.by_desc.get(desc)
        if not recs:
            return None
        queues = self._queues.get(desc)
        if queues is None:
            queues = {}
            for i, rec in enumerate(recs):
                queues.setdefault(rec.outcome, deque()).append((i, rec))
            self._queues[desc] = queues
        for queue in queues.values():
            while queue and queue[0][1].claimed:
                queue.popleft()
        q = queues.get(want)
        if not q:
            heads = [q for q in queues.values() if q]
            q = min(heads, key=lambda q: q[0][0]) if heads else None
        rec = q.popleft()[1] if q else recs[-1]
        rec.claimed = True
        return rec


class _Parser:
    def __init__(self, text: str | bytes) -> None:
        self.text = text
        self.kept = Kept()
        self.recs: list[_Rec] = []  # at most MAX_TESTS, in log order
        self.by_desc: dict[str, list[_Rec]] = {}
        self.real_descs: set[str] = set()  # descriptions of tests this run printed itself
        self.seen_by_root: dict[str, int] = {}  # distinct such tests, by top-level package
        self.doc_trie: dict[str | None, object] = {}  # docstring descriptions, word by word
        self.overflow: dict[str, int] = {}  # outcomes of tests past MAX_TESTS
        self.unstored: list[_Rec] = []  # tests past MAX_TESTS known from blocks and entries
        self.outer: _Rec | None = None  # a test printed, its outcome not read yet
        self.inner: _Rec | None = None  # a test line printed while `outer` ran, likewise
        self.bare: tuple[str, str] | None = None  # first line of a two-line description
        self.wrapped: str | None = None  # first part of a test line wrapped inside its name
        self.phase = "tests"
        self.blocks: list[_Block] = []  # at most MAX_PROBLEMS
        self.kinds: dict[tuple[str, bool], int] = {}  # (kind, loose) -> blocks, kept or not
        self.block: _Block | None = None  # being read
        self.open = False  # a block's text is being read (kept or not)
        self.refused = False  # a block header was not taken, and nothing was since
        self.entries: list[_Entry] = []  # at most MAX_TESTS
        self.entries_more: dict[str, int] = {}
        self.entry: _Entry | None = None  # the last entry, for a reason that spans lines
        self.skiplist: str | None = None
        self.summary: _Summary | None = None
        self.rollback: _Rollback | None = None
        self.notes: list[str] = []

    # -- reading -------------------------------------------------------------------------------

    def run(self) -> ParsedLog:
        lines = _Lines(self.text)
        prev = ""
        for line in lines:
            first = line[:1]
            if first == "O" and line.strip() == DUMP_MARKER and _SEP2_RE.match(prev):
                break
            if first == "=" and _SEP1_RE.match(line) and self._structure_after_sep1(lines):
                prev = ""
                continue
            if first == "-" and _SEP2_RE.match(line) and self._summary_after_sep2(lines, line):
                prev = ""
                continue
            if self.phase == "tests":
                self._test_line(line)
            elif self.skiplist is not None:
                if line.strip():
                    self._entry_line(line)
                else:
                    self.skiplist = None
            elif self.rollback is not None and _TEST_RE.search(line):
                self._resume()
                self._test_line(line)
            elif self.open and self.block is not None and self.block.text is not None:
                self.block.text.add(line)
            prev = line
        return self._finish()

    def _enter_report(self, provisional: bool) -> None:
        """A block, list or summary starts: the per-test lines end here, unless they go on."""
        if self.phase == "tests":
            self.phase = "report"
            self._settle_inner()
            if self.outer is not None and self.outer.tentative is not None:
                self._settle(self.outer)
                self.outer = None
            if provisional:
                self.rollback = _Rollback(
                    len(self.blocks), dict(self.kinds), len(self.entries), dict(self.entries_more)
                )
        elif not provisional:
            self.rollback = None

    def _resume(self) -> None:
        """A test line after what looked like the report: that was a test's output."""
        rb = self.rollback
        assert rb is not None
        del self.blocks[rb.blocks :]
        self.kinds = rb.kinds
        del self.entries[rb.entries :]
        self.entries_more = rb.entries_more
        self.rollback = None
        self.block = None
        self.open = False
        self.entry = None
        self.skiplist = None
        self.summary = None
        self.refused = False
        self.phase = "tests"
        if self.outer is not None:  # its outcome was in what was just dropped
            self._settle(self.outer)
            self.outer = None

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
            desc = clip(m.group(2).rstrip(), 2 * MAX_NAME + 3)
            key = self._known(desc)
            fixture = desc.split(" (")[0] in _FIXTURES
            # A header naming a test this run printed is real. One naming another test is real
            # only when no traceback is being read: inside one it is the failed command's own
            # output. Class and module fixtures fail without a per-test line of their own.
            if key is None and not fixture and self.open:
                self.refused = True
                return False
            loose = not fixture and (key is None or key not in self.real_descs)
            self._enter_report(provisional=loose)
            self._close_block()
            self.skiplist = None
            self.entry = None
            self.summary = None  # a real block after a summary: that summary was nested output
            self.refused = False
            kind = m.group(1)
            self.kinds[(kind, loose)] = self.kinds.get((kind, loose), 0) + 1
            text = _Traceback() if len(self.blocks) < MAX_PROBLEMS else None
            self.block = _Block(kind=kind, desc=desc, key=key or desc, loose=loose, text=text)
            if text is not None:
                self.blocks.append(self.block)
            self.open = True
            for _ in range(skip):
                lines.next()
            return True
        m = _LIST_RE.match(nxt)
        if m and _SEP2_RE.match(after):
            self._enter_report(provisional=True)
            self._close_block()
            self.block = None
            self.open = False
            self.summary = None
            self.refused = False
            self.skiplist = m.group(1)
            self.entry = None
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
        self._enter_report(provisional=True)
        self.skiplist = None
        self.entry = None
        text = self.block.text if self.open and self.block is not None else None
        self.summary = _Summary(
            ran=int(m.group(1)),
            ok=result.group(1) == "OK",
            details=details,
            block=self.block if self.open else None,
            mark=text.mark() if text is not None else None,
            after_refused=self.refused,
        )
        self.refused = False
        # The consumed lines still belong to the traceback if this summary turns out nested.
        if text is not None:
            text.add(sep)
        for _ in range(k + 1):
            consumed = lines.next()
            if text is not None and consumed is not None:
                text.add(consumed)
        return True

    def _close_block(self) -> None:
        if self.block is not None and self.block.text is not None:
            self.block.message = self.kept.message(self.block.text.message())
            self.block.text = None

    def _known(self, desc: str) -> str | None:
        """The description of the printed test a header names: `desc` itself, or `desc` less the
        parameters of a subtest ("test_x (m.C) (i=1)"). None if no test by that name printed."""
        if desc in self.by_desc:
            return desc
        m = _DESC_HEAD_RE.match(desc)
        if m and m.end() < len(desc) and m.group(0) in self.by_desc:
            return m.group(0)
        return None

    # -- the per-test lines ----------------------------------------------------------------------

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
            self.bare = None
            self._test(m)
            return
        target = self.inner or self.outer
        if target is not None:
            s = line.strip()
            if s in _TOKENS:  # the outcome on a line of its own: unittest's, after the output
                self._set(target, _TOKENS[s])
                if target is self.inner:
                    self.inner = None
                else:
                    self.outer = None
                return
            t = _tail_token(line)
            if t:  # output that ends in an outcome word: it counts unless a later one comes
                target.tentative = _TOKENS[t[0]]
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
        if m and self.outer is None and self.inner is None:
            if self.bare is not None:  # Python 3: "test_x (m.C.test_x)" then "Docstring ... ok"
                rec = self._add(*self.bare)
                rec.message = self.kept.message(m.group("desc").strip())
            else:  # Python 2 with descriptions: the docstring replaces the name
                desc = m.group("desc").strip()
                rec = self._add_rec(_Rec(desc=desc, name=desc, module="", cls=""))
                if rec.stored:
                    self._trie_add(desc)
            self._set(rec, _TOKENS[m.group("tok")])
        if line.strip():
            self.bare = None

    def _test(self, m: re.Match[str]) -> None:
        """A test line: "name (path) ... rest"."""
        name, path = m.group("name"), m.group("path")
        self._settle_inner()
        nested = False
        if self.outer is not None:
            if self.outer.tentative is not None:
                self._settle(self.outer)
                self.outer = None
            else:
                desc = f"{name} ({path})"
                root = path.split(".", 1)[0]
                if root == self.outer.root and desc not in self.by_desc:
                    # A test of this run, not yet seen: the last one's outcome got lost
                    self._settle(self.outer)
                    self.outer = None
                else:
                    nested = True
        rec = self._add(name, path, nested=nested)
        rest = (m.group("rest") or "").strip()
        if rest in _TOKENS:
            self._set(rec, _TOKENS[rest])
            return
        if rest.startswith("skipped"):  # Python 3: "skipped 'reason'"
            self._set(rec, "skip")
            rec.message = self.kept.message(rest[len("skipped") :].strip().strip("'\""))
            return
        glued = _TEST_RE.search(rest)
        if glued and "." in glued.group("path"):
            # "test_x (m.C) ... testY (other.C) ... ok": the test's output, glued to its line
            self._waiting(rec, nested)
            self._test(glued)
            return
        t = _tail_token(rest)
        if t:
            self._set(rec, _TOKENS[t[0]])
            # e.g. "SKIPPED (missing tomcat5) ... ok": the test itself said why it did nothing
            rec.message = self.kept.message(rest[: t[1]].strip().removesuffix("...").strip())
            return
        self._waiting(rec, nested)

    def _waiting(self, rec: _Rec, nested: bool) -> None:
        if nested:
            self.inner = rec
        else:
            self.outer = rec

    def _settle_inner(self) -> None:
        if self.inner is not None:
            self._settle(self.inner)
            self.inner = None

    def _settle(self, rec: _Rec) -> None:
        """A test whose outcome line never came: the last outcome word read, else "ok" (glued to
        output; blocks and skip lists below correct it if need be)."""
        if rec.outcome is None:
            self._set(rec, rec.tentative or "ok")

    def _set(self, rec: _Rec, outcome: str) -> None:
        rec.outcome = outcome
        rec.tentative = None
        if not rec.stored:
            self.overflow[outcome] = self.overflow.get(outcome, 0) + 1

    def _add(self, name: str, path: str, nested: bool = False) -> _Rec:
        name, path = clip(name), clip(path)
        module, cls = split_path(name, path)
        rec = _Rec(
            desc=f"{name} ({path})",
            name=name,
            module=module,
            cls=cls,
            root=path.split(".", 1)[0],
            nested=nested,
        )
        return self._add_rec(rec)

    def _add_rec(self, rec: _Rec) -> _Rec:
        if rec.from_line and not rec.nested:
            if rec.desc in self.real_descs:
                rec.nested = True  # a repeat
            else:
                root = rec.root if rec.root in self.seen_by_root else ""
                if len(self.seen_by_root) < MAX_ROOTS:
                    root = rec.root
                self.seen_by_root[root] = self.seen_by_root.get(root, 0) + 1
        if len(self.recs) >= MAX_TESTS:
            rec.stored = False
            return rec
        self.recs.append(rec)
        self.by_desc.setdefault(rec.desc, []).append(rec)
        if rec.from_line and not rec.nested:
            self.real_descs.add(rec.desc)
        return rec

    def _trie_add(self, desc: str) -> None:
        node = self.doc_trie
        for word in desc.split(" "):
            nxt = node.get(word)
            if not isinstance(nxt, dict):
                nxt = {}
                node[word] = nxt
            node = nxt
        node[None] = desc

    def _trie_match(self, line: str) -> str | None:
        """The longest docstring description that `line` starts with, followed by a space."""
        node = self.doc_trie
        found: str | None = None
        for word in line.split(" ", 160):
            nxt = node.get(word)
            if not isinstance(nxt, dict):
                break
            node = nxt
            desc = node.get(None)
            if isinstance(desc, str):
                found = desc
        return found

    def _entry_line(self, line: str) -> None:
        assert self.skiplist is not None
        m = _ENTRY_RE.match(line)
        if m:
            desc = f"{clip(m.group('name'))} ({clip(m.group('path'))})"
            self._add_entry(desc, m.group("reason") or "")
            return
        matched = self._trie_match(line) if self.doc_trie else None
        if matched is not None:
            self._add_entry(matched, line[len(matched) :])
            return
        if self.entry is not None:  # a reason that spans lines
            if self.entry.more is None:
                self.entry.more = CappedText(MAX_REASON)
            self.entry.more.add("\n" + line)

    def _add_entry(self, desc: str, reason: str) -> None:
        assert self.skiplist is not None
        if len(self.entries) >= MAX_TESTS:
            self.entries_more[self.skiplist] = self.entries_more.get(self.skiplist, 0) + 1
            self.entry = None
            return
        self.entry = _Entry(self.skiplist, desc, reason[:MAX_REASON])
        self.entries.append(self.entry)

    # -- making sense of it ---------------------------------------------------------------------

    def _rec_for(self, desc: str, want: str | None, claims: _Claims) -> _Rec:
        rec = claims.take(desc, want)
        if rec is not None:
            return rec
        m = _DESC_ONLY_RE.match(desc)
        if m:
            name, path = m.group("name"), m.group("path")
            module, cls = split_path(name, path)
        else:
            name, module, cls = desc, "", ""
        rec = self._add_rec(_Rec(desc=desc, name=name, module=module, cls=cls, from_line=False))
        rec.claimed = True
        if not rec.stored:
            self.unstored.append(rec)
        return rec

    def _count(self, kind: str, loose: bool | None = None) -> int:
        return sum(n for (k, lo), n in self.kinds.items() if k == kind and loose in (None, lo))

    def _valid_summary(self) -> _Summary | None:
        s = self.summary
        if s is None:
            return None
        if s.after_refused:
            self.notes.append("ignored a summary that ends a nested test run's report")
            return None
        # Distinct tests printed by the run itself, in its main package (others may be the
        # output of a test that ran a test suite of its own).
        seen = max(self.seen_by_root.values(), default=0)
        if s.ran < seen:
            self.notes.append(f"ignored a summary of {s.ran} tests after {seen} test lines")
            return None
        kinds = ("FAIL", "ERROR", "TIMEOUT")
        real = [self._count(k, loose=False) for k in kinds]
        loose = [self._count(k, loose=True) for k in kinds]
        bad_entries = sum(1 for e in self.entries if e.flavour == "BAD SKIPS")
        bad_entries += self.entries_more.get("BAD SKIPS", 0)
        if s.ok:
            if any(real) or bad_entries:
                self.notes.append("ignored an OK summary that follows failures")
                return None
            want = [0, 0, 0]
        else:
            d = s.details
            want = [d.get("failures", 0), d.get("errors", 0), d.get("timeouts", 0)]
        if any(loose) and real == want:
            n = sum(loose)
            self.notes.append(
                f"{n} FAIL/ERROR block{'s' if n != 1 else ''} naming tests the run did not "
                "print taken as a test's output"
            )
            for block in self.blocks:
                block.output = block.loose
            for kind in kinds:
                self.kinds.pop((kind, True), None)
        text = s.block.text if s.block is not None and s.block is self.block else None
        if text is not None and s.mark is not None:
            text.reset(s.mark)  # the summary ended the last block's traceback: cut it there
        return s

    def _finish(self) -> ParsedLog:
        if self.phase == "tests":
            self._enter_report(provisional=False)
        summary = self._valid_summary()
        self._close_block()
        complete = summary is not None
        running = self.outer  # printed, never finished: the test running when the log ended
        kept = self.kept
        failed_with_problem: set[tuple[int, str]] = set()

        # What the summary says that the blocks and lists do not show (complete logs only):
        # outcomes read from test lines alone may fill that in. Cut-off logs take them all.
        allow: dict[str, int] = {}
        if summary is not None:
            d = summary.details
            unexpected = d.get("unexpected successes", 0)
            allow["FAIL"] = d.get("failures", 0) + unexpected - self._count("FAIL")
            allow["ERROR"] = d.get("errors", 0) - self._count("ERROR")
            allow["TIMEOUT"] = d.get("timeouts", 0) - self._count("TIMEOUT")
            bad = sum(1 for e in self.entries if e.flavour == "BAD SKIPS")
            allow["SKIP"] = d.get("badSkips", 0) - bad - self.entries_more.get("BAD SKIPS", 0)

        def line_only(rec: _Rec, kind: str) -> bool:
            if summary is None:
                return True
            if rec.nested or allow.get(kind, 0) <= 0:
                return False
            allow[kind] -= 1
            return True

        claims = _Claims(self.by_desc)
        for block in self.blocks:
            if block.output:
                continue
            outcome = _KIND_OUTCOME[block.kind]
            rec = self._rec_for(block.key, outcome, claims)
            if rec.outcome not in _FAILED_OUTCOMES:
                rec.outcome = outcome
            if not rec.message or not rec.from_line:
                rec.message = block.message
            if rec is running:
                running = None
            kept.problem(Problem(rec.module, rec.name, rec.cls, block.kind, "-", block.message))
            failed_with_problem.add((id(rec), block.kind))
        for kind in _KIND_OUTCOME:  # blocks past MAX_PROBLEMS: counted only
            read = sum(1 for b in self.blocks if b.kind == kind and not b.output)
            kept.more(kind, self._count(kind) - read)

        for rec in self.recs:
            if rec.outcome in _FAILED_OUTCOMES:
                kind = _OUTCOME_KIND[rec.outcome]
                if (id(rec), kind) not in failed_with_problem and line_only(rec, kind):
                    kept.problem(Problem(rec.module, rec.name, rec.cls, kind, "-", ""))
                    failed_with_problem.add((id(rec), kind))
        for outcome, n in self.overflow.items():
            if outcome in _FAILED_OUTCOMES and summary is None:
                kept.more(_OUTCOME_KIND[outcome], n)

        bad_done: set[int] = set()
        claims = _Claims(self.by_desc)
        for entry in self.entries:
            want = "badskip" if entry.flavour == "BAD SKIPS" else "skip"
            rec = self._rec_for(entry.desc, want, claims)
            reason = entry.reason.strip()
            full = reason
            if entry.more is not None:
                full = (reason + entry.more.value()).strip()
            if rec is running:
                running = None
            if entry.flavour == "BAD SKIPS":
                rec.outcome = "badskip"
                rec.message = kept.message(full)
                kept.problem(Problem(rec.module, rec.name, rec.cls, "SKIP", reason, rec.message))
                bad_done.add(id(rec))
            elif rec.outcome not in _FAILED_OUTCOMES:
                rec.outcome = "skip"
                rec.message = kept.message(full)
        kept.more("SKIP", self.entries_more.get("BAD SKIPS", 0))
        for rec in self.recs:
            if rec.outcome == "badskip" and id(rec) not in bad_done and line_only(rec, "SKIP"):
                kept.problem(Problem(rec.module, rec.name, rec.cls, "SKIP", "", rec.message))
        if summary is None:
            kept.more("SKIP", self.overflow.get("badskip", 0))

        tests: list[TestCase] = []
        for rec in self.recs:
            if rec.outcome is None:
                if rec is running and not complete:
                    continue  # it never finished
                rec.outcome = "ok"
            tests.append(TestCase(rec.module, rec.name, rec.cls, rec.outcome, rec.message))
        for test in tests:
            kept.test(test)
        overflow = dict(self.overflow)
        for rec in self.unstored:
            if rec.outcome is not None:
                overflow[rec.outcome] = overflow.get(rec.outcome, 0) + 1
        last = self.outer
        if last is not None and not last.stored and last.outcome is None and complete:
            overflow["ok"] = overflow.get("ok", 0) + 1  # finished after all
        kept.tests_more += sum(overflow.values())

        counts = _tally(tests, overflow)
        if summary is not None:
            total = counts.ok + counts.fail + counts.error + counts.skip
            from_summary = _counts_from_summary(summary)
            if total != summary.ran:
                self.notes.append(
                    f"summary says {summary.ran} tests, {total} test results read; "
                    "counts taken from the summary"
                )
                counts = from_summary
            elif counts.fail + counts.error != from_summary.fail + from_summary.error:
                self.notes.append("test lines and summary disagree; counts taken from the summary")
                counts = from_summary
        else:
            n = len(tests) + sum(overflow.values())
            self.notes.insert(0, f"log ends before its summary line ({n} test results read)")

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
        return kept.into(
            ParsedLog(
                format="osg-test",
                counts=counts,
                alarm=alarm,
                complete=complete,
                note="; ".join(self.notes),
                timeout_test=timeout_test,
            )
        )

    def _alarm(self) -> tuple[bool, str]:
        """Whether 'Caught alarm:' is in the log, and the test in its stack, as 'test (module)'."""
        marker: str | bytes = ALARM_MARKER
        if isinstance(self.text, bytes):
            marker = ALARM_MARKER.encode()
        idx = self.text.find(marker)  # type: ignore[arg-type]
        if idx < 0:
            return False, ""
        found = ""
        first = True
        for line in iter_lines(decode(self.text[idx : idx + 256 * 1024])):
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


def _tally(tests: list[TestCase], overflow: dict[str, int]) -> TestCounts:
    c = TestCounts()
    for t in tests:
        _count_outcome(c, t.outcome)
    for outcome, n in overflow.items():
        _count_outcome(c, outcome, n)
    return c


def _count_outcome(c: TestCounts, outcome: str, n: int = 1) -> None:
    if outcome == "ok":
        c.ok += n
    elif outcome in ("fail", "timeout"):
        c.fail += n
    elif outcome == "error":
        c.error += n
    else:
        c.skip += n


def _counts_from_summary(s: _Summary) -> TestCounts:
    d = s.details
    fail = d.get("failures", 0) + d.get("timeouts", 0) + d.get("unexpected successes", 0)
    error = d.get("errors", 0)
    skip = d.get("okSkips", 0) + d.get("badSkips", 0) + d.get("skipped", 0)
    ok = max(0, s.ran - fail - error - skip)
    return TestCounts(ok=ok, fail=fail, error=error, skip=skip)
