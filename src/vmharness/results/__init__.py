"""Test results: log parsers (osg-test, JUnit, TAP, exit code) and run classification.

    parsed = parse_results(run_dir / "output" / "test", spec.test.format, spec.test.results)
    status, reason = classify(parsed, exit_code=rc, known_failures=kfs, today=date.today())

Everything read here was written by the guest, so it is untrusted: files are opened without
following symlinks, only regular files inside the test folder are read, each at most
MAX_RESULT_BYTES, and no parser raises on bad content; `parse_results` turns an unreadable or
malformed file into an incomplete ParsedLog whose note says why (`classify` makes that a `fail`
with the note as its reason).
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import os
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from vmharness.results.classify import classify, detect_format, is_active, matches
from vmharness.results.errors import ResultFormatError
from vmharness.results.junit import parse_junit
from vmharness.results.model import (
    INFRA,
    PASSING,
    STATUSES,
    ParsedLog,
    Problem,
    RunResult,
    TestCase,
    TestCounts,
)
from vmharness.results.osgtest import parse_osg_test
from vmharness.results.tap import parse_tap
from vmharness.results.text import Kept

__all__ = [
    "INFRA",
    "MAX_RESULT_BYTES",
    "PASSING",
    "STATUSES",
    "ParsedLog",
    "Problem",
    "ResultFormatError",
    "RunResult",
    "TestCase",
    "TestCounts",
    "classify",
    "detect_format",
    "is_active",
    "matches",
    "parse_file",
    "parse_junit",
    "parse_osg_test",
    "parse_results",
    "parse_tap",
    "read_capped",
]

# Largest results file read (the rest is cut, and the ParsedLog's note says so).
MAX_RESULT_BYTES = 64 * 1024 * 1024
# How much of a file is read to guess its format.
HEAD_BYTES = 64 * 1024
# Limits of the search for results files in auto mode.
MAX_DEPTH = 3
MAX_ENTRIES = 2000
MAX_JUNIT_FILES = 100

_PARSED_FORMATS = ("osg-test", "junit", "tap")
_PREFERENCE = {"junit": 0, "tap": 1, "osg-test": 2}


def parse_results(
    test_dir: Path,
    format: str,
    results_file: str | None,
    *,
    log_file: Path | None = None,
    max_bytes: int = MAX_RESULT_BYTES,
) -> ParsedLog | None:
    """Read the test results the guest left in `test_dir`.

    format: one of spec.RESULT_FORMATS. "exit-code" reads nothing and returns None. "auto"
    reads `results_file` if given, else looks at every regular file under `test_dir` (three
    levels deep): JUnit XML files (all of them, merged) are preferred to a TAP stream, which
    is preferred to an osg-test/unittest verbose log. An explicit format reads `results_file`,
    or the files under `test_dir` that look like it.

    log_file: the test command's own output (the agent's test.log, next to the test folder);
    read when nothing under `test_dir` is found, which is where an osg-test log (osg-test
    writes to stdout) or a TAP stream printed by the test command is.

    Returns None only when there is nothing to parse (the exit code then decides); a missing,
    unreadable or malformed file that was asked for gives an incomplete ParsedLog whose note
    says why.
    """
    if format == "exit-code":
        return None
    if format != "auto" and format not in _PARSED_FORMATS:
        return _broken("exit-code", f"unknown results format {format!r}")
    test_dir = Path(test_dir)
    if results_file:
        return _parse_named(test_dir, format, results_file, max_bytes)

    found = _candidates(test_dir, format) if test_dir.is_dir() else []
    if not found and log_file is not None:
        found = _classified([Path(log_file)], format)
        if not found and format in ("osg-test", "tap") and Path(log_file).exists():
            found = [(format, Path(log_file))]  # asked for: read it, and say what is wrong
    if not found:
        if format == "auto":
            return None
        return _broken(format, f"no {format} results found in the test output")
    best = min(_PREFERENCE[fmt] for fmt, _ in found)
    fmt = next(f for f, _ in found if _PREFERENCE[f] == best)
    paths = [p for f, p in found if f == fmt]
    if fmt == "junit":
        paths = paths[:MAX_JUNIT_FILES]
        return _merge(parse_file(p, "junit", max_bytes=max_bytes) for p in paths)
    chosen = paths[0]
    parsed = parse_file(chosen, fmt, max_bytes=max_bytes)
    if len(paths) > 1:
        others = ", ".join(p.name for p in paths[1:4]) + (" ..." if len(paths) > 4 else "")
        parsed.note = _join(parsed.note, f"read {chosen.name}; also found {others}")
    return parsed


def parse_file(path: Path, format: str, *, max_bytes: int = MAX_RESULT_BYTES) -> ParsedLog:
    """Parse one file in a given format ("osg-test", "junit", "tap"); never raises."""
    try:
        data, truncated = read_capped(path, max_bytes)
    except ResultFormatError as exc:
        return _broken(format, str(exc))
    cut = f"{path.name} cut at {max_bytes} bytes" if truncated else ""
    if format == "junit":
        if truncated:
            return _broken("junit", f"{path.name} is larger than {max_bytes} bytes")
        try:
            parsed = parse_junit(data)
        except ResultFormatError as exc:
            return _broken("junit", f"{path.name}: {exc}")
    else:  # bytes as they are: the parsers decode them a piece at a time
        parsed = parse_tap(data) if format == "tap" else parse_osg_test(data)
    parsed.note = _join(parsed.note, cut)
    return parsed


def read_capped(path: Path, max_bytes: int = MAX_RESULT_BYTES) -> tuple[bytes, bool]:
    """Read at most `max_bytes` of a regular file, not following a symlink, not blocking on a
    FIFO. Returns (data, truncated). Raises ResultFormatError with a plain reason."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ResultFormatError(f"{path.name}: no such results file") from None
    except OSError as exc:
        if path.is_symlink():
            raise ResultFormatError(f"{path.name}: is a symlink, not read") from None
        raise ResultFormatError(f"{path.name}: cannot be read ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ResultFormatError(f"{path.name}: not a regular file, not read")
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ResultFormatError(f"{path.name}: cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        return data[:max_bytes], True
    return data, False


def head_text(head: bytes) -> str:
    """The head of a file as text, to guess its format: UTF-16 when it starts with a UTF-16 byte
    order mark (or '<?' in UTF-16, as an XML file without one), else UTF-8, leniently."""
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return head.decode("utf-16", errors="replace")
    if head[:4] == b"<\x00?\x00":
        return head.decode("utf-16-le", errors="replace")
    if head[:4] == b"\x00<\x00?":
        return head.decode("utf-16-be", errors="replace")
    return head.decode("utf-8", errors="replace")


def _parse_named(test_dir: Path, format: str, results_file: str, max_bytes: int) -> ParsedLog:
    rel = PurePosixPath(results_file)
    fallback = format if format != "auto" else "exit-code"
    if rel.is_absolute() or ".." in rel.parts:
        why = "must be a relative path inside the test folder"
        return _broken(fallback, f"results file {results_file!r} {why}")
    path = test_dir / rel
    try:
        inside = path.resolve().is_relative_to(test_dir.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        return _broken(fallback, f"results file {results_file!r} leads outside the test folder")
    if format == "auto":
        try:
            head, _ = read_capped(path, HEAD_BYTES)
        except ResultFormatError as exc:
            return _broken(fallback, str(exc))
        format = detect_format(path.name, head_text(head))
        if format not in _PARSED_FORMATS:
            return _broken("exit-code", f"{path.name}: not JUnit XML, TAP or an osg-test log")
    return parse_file(path, format, max_bytes=max_bytes)


def _candidates(test_dir: Path, format: str) -> list[tuple[str, Path]]:
    """(format, path) of the results files under test_dir, in a stable order."""
    return _classified(_walk(test_dir), format)


def _classified(paths: list[Path], format: str) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for path in paths:
        try:
            head, _ = read_capped(path, HEAD_BYTES)
        except ResultFormatError:
            continue
        fmt = detect_format(path.name, head_text(head))
        if fmt not in _PARSED_FORMATS and format != "auto" and _conventional(path.name, format):
            fmt = format  # e.g. an osg-test log cut before its first test line
        if fmt in _PARSED_FORMATS and (format == "auto" or fmt == format):
            found.append((fmt, path))
    # osg-test's own name for its log first, then by path
    found.sort(key=lambda fp: (not fp[1].name.startswith("osg-test"), str(fp[1])))
    return found


def _conventional(name: str, format: str) -> bool:
    name = name.lower()
    if format == "junit":
        return name.endswith(".xml")
    if format == "tap":
        return name.endswith(".tap")
    return name.startswith("osg-test") and name.endswith(".log")


def _walk(top: Path) -> list[Path]:
    """Regular files under `top`, MAX_DEPTH deep, symlinks neither followed nor returned."""
    out: list[Path] = []
    budget = MAX_ENTRIES
    stack: list[tuple[Path, int]] = [(top, 0)]
    while stack and budget > 0:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            budget -= 1
            if budget <= 0:
                break
            try:
                if entry.is_file(follow_symlinks=False):
                    out.append(Path(entry.path))
                elif entry.is_dir(follow_symlinks=False) and depth + 1 < MAX_DEPTH:
                    stack.append((Path(entry.path), depth + 1))
            except OSError:
                continue
    return sorted(out)


def _merge(parts: Iterable[ParsedLog]) -> ParsedLog:
    """One ParsedLog of several JUnit files, within the same caps (and message budget) as one
    file's. Each file is folded in as soon as it is read, so only one is held at a time."""
    it = iter(parts)
    first = next(it)
    second = next(it, None)
    if second is None:
        return first
    merged = ParsedLog(format="junit")
    kept = Kept()
    for p in itertools.chain((first, second), it):
        for test in p.tests:
            if kept.room_for_test():
                kept.test(dataclasses.replace(test, message=kept.message(test.message)))
            else:
                kept.tests_more += 1
        for problem in p.problems:
            if kept.room_for_problem():
                kept.problem(dataclasses.replace(problem, message=kept.message(problem.message)))
            else:
                kept.more(problem.kind)
        kept.tests_more += p.tests_more
        for kind, n in p.problems_more.items():
            kept.more(kind, n)
        merged.counts.ok += p.counts.ok
        merged.counts.fail += p.counts.fail
        merged.counts.error += p.counts.error
        merged.counts.skip += p.counts.skip
        merged.complete = merged.complete and p.complete
        if not p.complete or (p.note and p.note != "no <testcase> in the JUnit XML"):
            merged.note = _join(merged.note, p.note)
    return kept.into(merged)


def _broken(format: str, note: str) -> ParsedLog:
    return ParsedLog(format=format, complete=False, note=note)


def _join(a: str, b: str) -> str:
    return "; ".join(x for x in (a, b) if x)
