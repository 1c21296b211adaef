"""Text helpers shared by the parsers: bounded line iteration, message capping, and the caps on
what a parser keeps of one run, whatever the guest wrote."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from vmharness.results.model import ParsedLog, Problem, TestCase

# Longest line a parser looks at (a test line is ~100 characters); longer lines are cut.
MAX_LINE = 16 * 1024
# A problem's message (traceback, diagnostics) is kept to this many characters: head and tail.
MAX_MESSAGE = 16 * 1024
# Test cases and problems kept per parsed log; the rest are counted (ParsedLog.tests_more,
# ParsedLog.problems_more) and still in ParsedLog.counts.
MAX_TESTS = 10_000
MAX_PROBLEMS = 1_000
# Characters of messages kept per parsed log, all told; past that, each message is cut to
# SHORT_MESSAGE characters.
MAX_MESSAGES = 4 * 1024 * 1024
SHORT_MESSAGE = 256
# Characters kept of a test's name, module and class, and of a problem's reason.
MAX_NAME = 512


def parse_guarded(
    fmt: str, what: str, parse: Callable[[str | bytes], ParsedLog], text: str | bytes
) -> ParsedLog:
    """Run a text parser on guest data so that it never raises: a parser bug ends in an
    incomplete ParsedLog that says so instead of a crash on the host. Bytes are passed on as they
    are (iter_lines decodes them a piece at a time, leniently)."""
    if isinstance(text, bytearray | memoryview):
        text = bytes(text)
    try:
        return parse(text)
    except Exception as exc:  # last resort: a guest's file must never crash the host side
        return ParsedLog(
            format=fmt,
            complete=False,
            note=f"{what} could not be read (internal error: {type(exc).__name__}: {exc})",
        )


def cap_message(text: str, limit: int = MAX_MESSAGE) -> str:
    """Keep a message's head and tail when it is longer than `limit` characters."""
    if len(text) <= limit:
        return text
    head = limit * 3 // 4
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[-tail:]}"


def clip(text: str, limit: int = MAX_NAME) -> str:
    """A name cut to `limit` characters."""
    return text if len(text) <= limit else text[:limit]


def decode(data: str | bytes) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


def iter_lines(text: str | bytes, chunk: int = 1 << 20) -> Iterator[str]:
    """Lines of `text` without their end, each cut to MAX_LINE characters.

    Works `chunk` characters (or bytes) at a time, so memory stays bounded whatever the input:
    a line longer than a chunk is cut without being copied whole. Bytes are decoded as UTF-8
    a chunk at a time, bad bytes replaced (chunks end at a newline, which no multi-byte
    character contains).
    """
    # One code path for both kinds: the operations used are those str and bytes share.
    data: Any = text
    nl: Any = "\n" if isinstance(data, str) else b"\n"
    pos = 0
    n = len(data)
    while pos < n:
        stop = pos + chunk
        if stop >= n:
            block = data[pos:n]
            if block.endswith(nl):
                block = block[:-1]
            pos = n
        else:
            end = data.rfind(nl, pos, stop)
            if end < 0:  # one line longer than a chunk: its head, then skip to its end
                end = data.find(nl, stop)
                if end < 0:
                    end = n
                cut = data[pos : min(end, pos + MAX_LINE + 1)]
                if isinstance(cut, bytes):
                    yield _clean(cut.decode("utf-8", errors="replace"))
                else:
                    yield _clean(cut)
                pos = end + 1
                continue
            block = data[pos:end]
            pos = end + 1
        if isinstance(block, bytes):
            block = block.decode("utf-8", errors="replace")
        lines = block.split("\n")
        if "\r" in block or (len(block) > MAX_LINE and max(map(len, lines)) > MAX_LINE):
            lines = [_clean(line) for line in lines]
        yield from lines


def _clean(line: str) -> str:
    if len(line) > MAX_LINE:
        line = line[:MAX_LINE]
    if line.endswith("\r"):
        line = line[:-1]
    return line


class CappedText:
    """Text added piece by piece, of which only what cap_message would show is kept: the first
    `limit` characters and (about) the last limit/4. Memory is bounded whatever is added."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._keep_head = limit * 3 // 4
        self._keep_tail = limit - self._keep_head
        self._head: list[str] = []
        self._head_len = 0
        self._tail: deque[str] = deque()
        self._tail_len = 0
        self._gap = 0  # characters dropped between the head and the tail
        self.total = 0

    def add(self, s: str) -> None:
        if not s:
            return
        self.total += len(s)
        room = self.limit - self._head_len
        if room > 0:
            part = s[:room]
            self._head.append(part)
            self._head_len += len(part)
            if len(part) == len(s):
                return
            s = s[room:]
        self._tail.append(s)
        self._tail_len += len(s)
        while self._tail_len - len(self._tail[0]) >= self._keep_tail:
            first = self._tail.popleft()
            self._tail_len -= len(first)
            self._gap += len(first)

    def truncate(self, total: int) -> None:
        """Forget what was added after the first `total` characters (exactly, as long as that
        is still held; otherwise as near as what is held allows)."""
        drop = self.total - total
        if drop <= 0:
            return
        self.total = total
        while drop and self._tail:
            last = self._tail.pop()
            if len(last) > drop:
                self._tail.append(last[: len(last) - drop])
                self._tail_len -= drop
                return
            self._tail_len -= len(last)
            drop -= len(last)
        gap = min(drop, self._gap)
        self._gap -= gap
        drop -= gap
        while drop and self._head:
            last = self._head.pop()
            if len(last) > drop:
                self._head.append(last[: len(last) - drop])
                self._head_len -= drop
                return
            self._head_len -= len(last)
            drop -= len(last)

    def value(self) -> str:
        head = "".join(self._head)
        if self.total <= self.limit:
            return head + "".join(self._tail)
        tail = "".join(self._tail)
        if not self._gap and len(tail) < self._keep_tail:
            tail = head + tail
        tail = tail[-self._keep_tail :] if self._keep_tail else ""
        cut = self.total - self._keep_head - self._keep_tail
        return f"{head[: self._keep_head]}\n[... {cut} characters cut ...]\n{tail}"


class Kept:
    """What a parser keeps of one run: at most MAX_TESTS test cases and MAX_PROBLEMS problems,
    and messages within a budget of MAX_MESSAGES characters. What is not kept is counted."""

    def __init__(self) -> None:
        self.tests: list[TestCase] = []
        self.problems: list[Problem] = []
        self.tests_more = 0
        self.problems_more: dict[str, int] = {}
        self._budget = MAX_MESSAGES

    def message(self, text: str) -> str:
        """`text` cut to MAX_MESSAGE, or to SHORT_MESSAGE once the run's budget is spent."""
        if not text:
            return text
        text = cap_message(text, max(SHORT_MESSAGE, min(MAX_MESSAGE, self._budget)))
        self._budget -= len(text)
        return text

    def room_for_test(self) -> bool:
        return len(self.tests) < MAX_TESTS

    def test(self, test: TestCase) -> bool:
        """Keep `test` if there is room (True), else count it."""
        if len(self.tests) < MAX_TESTS:
            if max(len(test.module), len(test.name), len(test.cls)) > MAX_NAME:
                test = TestCase(
                    clip(test.module), clip(test.name), clip(test.cls), test.outcome, test.message
                )
            self.tests.append(test)
            return True
        self.tests_more += 1
        return False

    def room_for_problem(self) -> bool:
        return len(self.problems) < MAX_PROBLEMS

    def problem(self, problem: Problem) -> bool:
        """Keep `problem` if there is room (True), else count it by kind."""
        if len(self.problems) < MAX_PROBLEMS:
            p = problem
            if max(len(p.module), len(p.test), len(p.cls), len(p.reason)) > MAX_NAME:
                p = Problem(
                    clip(p.module), clip(p.test), clip(p.cls), p.kind, clip(p.reason), p.message
                )
            self.problems.append(p)
            return True
        self.more(problem.kind)
        return False

    def more(self, kind: str, n: int = 1) -> None:
        """Count `n` problems of `kind` that are not kept."""
        if n > 0:
            self.problems_more[kind] = self.problems_more.get(kind, 0) + n

    def into(self, parsed: ParsedLog) -> ParsedLog:
        parsed.tests = self.tests
        parsed.problems = self.problems
        parsed.tests_more = self.tests_more
        parsed.problems_more = dict(self.problems_more)
        return parsed
