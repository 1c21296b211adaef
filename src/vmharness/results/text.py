"""Text helpers shared by the parsers: bounded line iteration and message capping."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from vmharness.results.model import ParsedLog

# Longest line a parser looks at (a test line is ~100 characters); longer lines are cut.
MAX_LINE = 16 * 1024
# A problem's message (traceback, diagnostics) is kept to this many characters: head and tail.
MAX_MESSAGE = 16 * 1024


def parse_guarded(
    fmt: str, what: str, parse: Callable[[str], ParsedLog], text: str | bytes
) -> ParsedLog:
    """Run a text parser on guest data so that it never raises: bytes are decoded leniently, and
    a parser bug ends in an incomplete ParsedLog that says so instead of a crash on the host."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
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


def iter_lines(text: str, chunk: int = 1 << 20) -> Iterator[str]:
    """Lines of `text` without their end, each cut to MAX_LINE.

    Splits about `chunk` characters at a time (str.split is far faster than a find() per line),
    so memory stays bounded apart from one copy of the longest line.
    """
    pos = 0
    n = len(text)
    while pos < n:
        end = text.find("\n", min(pos + chunk, n))
        if end < 0:
            end = n
        block = text[pos:end]
        if end == n and block.endswith("\n"):
            block = block[:-1]
        for line in block.split("\n"):
            if len(line) > MAX_LINE:
                line = line[:MAX_LINE]
            if line.endswith("\r"):
                line = line[:-1]
            yield line
        pos = end + 1
