"""Property-based fuzzing of the three result parsers (osg-test, TAP, JUnit) with Hypothesis.

Whatever the guest writes: no exception (JUnit may only refuse with ResultFormatError), output
within the caps, every message and name cut, a verdict that is one of the statuses, and bytes
read the same as the text they encode. Example counts and deadlines are bounded so that the
whole file runs in well under a minute.
"""

from __future__ import annotations

import datetime
from xml.sax.saxutils import escape, quoteattr

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmharness.results import ResultFormatError, classify, parse_junit, parse_osg_test, parse_tap
from vmharness.results.model import STATUSES, ParsedLog
from vmharness.results.text import MAX_MESSAGE, MAX_NAME, MAX_PROBLEMS, MAX_TESTS

TODAY = datetime.date(2026, 11, 24)
FUZZ = settings(
    max_examples=60,
    deadline=datetime.timedelta(seconds=5),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEP1 = "=" * 70
SEP2 = "-" * 70
DESC = "test_01_a (osgtest.tests.test_10_m.TestM)"


def check(parsed: ParsedLog, fmt: str) -> None:
    """What must hold of any ParsedLog, whatever the input."""
    assert isinstance(parsed, ParsedLog) and parsed.format == fmt
    assert "internal error" not in parsed.note, parsed.note
    assert len(parsed.note) < 4 * 1024
    assert len(parsed.tests) <= MAX_TESTS and len(parsed.problems) <= MAX_PROBLEMS
    assert parsed.tests_more >= 0 and all(n > 0 for n in parsed.problems_more.values())
    if parsed.tests_more:
        assert len(parsed.tests) == MAX_TESTS
    if parsed.problems_more:
        assert len(parsed.problems) == MAX_PROBLEMS
    for t in parsed.tests:
        assert t.outcome in ("ok", "fail", "error", "skip", "badskip", "timeout")
        assert len(t.message) <= MAX_MESSAGE + 64
        assert max(len(t.name), len(t.module), len(t.cls)) <= MAX_NAME
    for p in parsed.problems:
        assert p.kind in ("FAIL", "ERROR", "TIMEOUT", "SKIP")
        assert len(p.message) <= MAX_MESSAGE + 64
        assert max(len(p.test), len(p.module), len(p.cls), len(p.reason)) <= MAX_NAME
    c = parsed.counts
    assert min(c.ok, c.fail, c.error, c.skip) >= 0
    for exit_code in (None, 0, 1):
        status, reason = classify(parsed, exit_code=exit_code, known_failures=[], today=TODAY)
        assert status in STATUSES and isinstance(reason, str) and reason


def same(a: ParsedLog, b: ParsedLog) -> None:
    assert (a.tests, a.problems, a.counts, a.complete, a.note) == (
        b.tests,
        b.problems,
        b.counts,
        b.complete,
        b.note,
    )


def texts(pieces: list[str]) -> st.SearchStrategy[str]:
    """Logs made of the given lines, random text, long lines, and runs of repeats (enough of
    them to go past the caps)."""
    short = st.one_of(st.sampled_from(pieces), st.text(max_size=60))
    line = st.one_of(
        short,
        st.builds(
            lambda head, pad, n, tail: head + pad * n + tail,
            st.sampled_from(["", "FAIL: x", "OK", "ok 1 ", DESC + " ... ", "Ran 3 tests in 1s"]),
            st.sampled_from([" ", "\t", " \t", "a", "=", "-", "(", "..."]),
            st.integers(0, 20_000),
            st.sampled_from(["", "x", "y)", " ok", "\r"]),
        ),
    )
    chunk = st.lists(line, max_size=40).map("\n".join)
    few = st.lists(short, min_size=1, max_size=8).map("\n".join)
    repeated = st.tuples(few, st.integers(1, 1_500)).map(lambda cn: (cn[0] + "\n") * cn[1])
    return st.lists(st.one_of(chunk, repeated), max_size=4).map("\n".join)


OSG_PIECES = [
    f"{DESC} ... ok",
    f"{DESC} ... FAIL",
    f"{DESC} ... ERROR",
    f"{DESC} ... BADSKIP",
    f"{DESC} ... okskip",
    f"{DESC} ... ",
    f"{DESC} ... SKIPPED (missing x) ... ok",
    f"{DESC} ... testServiceList (test_condor.TestCondor) ... ok",
    "test_02_b (osgtest.tests.test_10_m.TestM) ... TIMEOUT",
    "test_b (tests.test_web.TestLogin.test_b)",
    "Logs in twice. ... FAIL",
    "setup system library path ... ok",
    "test_03_c (osgtest.tests.test_10_",
    "m.TestM) ... ok",
    "ok",
    "FAIL",
    "ERROR",
    "service status: ERROR",
    SEP1,
    SEP2,
    f"FAIL: {DESC}",
    f"ERROR: {DESC}",
    "TIMEOUT: test_02_b (osgtest.tests.test_10_m.TestM)",
    "FAIL: testServiceList (test_condor.TestCondor)",
    "ERROR: setUpClass (tests.test_db.TestCache)",
    "BAD SKIPS:",
    "OK SKIPS:",
    "EXCLUDED:",
    f"{DESC} why",
    f"{DESC} ",
    "setup system library path not here",
    "Ran 3 tests in 1.000s",
    "Ran 1 test in 0.1s",
    "OK",
    "OK(okSkips=1)",
    "FAILED (failures=1)",
    "FAILED (failures=1, errors=1, badSkips=1, timeouts=1, okSkips=2)",
    "",
    "OSG-TEST LOG",
    "Caught alarm:",
    '  File "/usr/lib/python3/osgtest/tests/test_10_m.py", line 9, in test_01_a',
    "Traceback (most recent call last):",
]

TAP_PIECES = [
    "TAP version 13",
    "TAP version 14",
    "1..3",
    "1..0 # SKIP nothing here",
    "ok",
    "ok 1 - first",
    "not ok 2 - second",
    "not ok 3 - third # TODO later",
    "ok 4 # skip",
    "ok 5 - a # todoist broke",
    "ok 6 - has \\# hash",
    "# Subtest: group",
    "    ok 1 - sub",
    "  ---",
    "  message: 'boom'",
    "  ...",
    "Bail out! down",
    "# comment",
    "",
]


@FUZZ
@given(texts(OSG_PIECES))
def test_fuzz_osg_test(text: str) -> None:
    parsed = parse_osg_test(text)
    check(parsed, "osg-test")
    same(parse_osg_test(text.encode("utf-8")), parsed)


@FUZZ
@given(texts(TAP_PIECES))
def test_fuzz_tap(text: str) -> None:
    parsed = parse_tap(text)
    check(parsed, "tap")
    same(parse_tap(text.encode("utf-8")), parsed)


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_any_bytes(data: bytes) -> None:
    check(parse_osg_test(data), "osg-test")
    check(parse_tap(data), "tap")
    try:
        parsed = parse_junit(data)
    except ResultFormatError:
        return
    check(parsed, "junit")


# -- JUnit: XML built from the elements JUnit files have, then maybe cut or corrupted ----------

_NAMES = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30
)
_TAGS = st.sampled_from(
    ["testsuites", "testsuite", "testcase", "failure", "error", "skipped", "system-out", "x"]
)


def _xml_text(s: str) -> str:
    # XML 1.0 has no place for most control characters: leave them out of well-formed input.
    return escape("".join(ch for ch in s if ch >= " " or ch in "\t\n"))


@st.composite
def _element(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(_TAGS)
    prefix = draw(st.sampled_from(["", "", "ns:"]))
    attrs = draw(st.dictionaries(st.sampled_from(["name", "classname", "message", "type"]), _NAMES))
    attr_text = "".join(f" {k}={quoteattr(_xml_text(v))}" for k, v in attrs.items())
    children = []
    if depth < 3:
        children = draw(st.lists(_element(depth + 1), max_size=3))
    body = _xml_text(draw(_NAMES)) + "".join(children)
    return f"<{prefix}{tag}{attr_text}>{body}</{prefix}{tag}>"


@st.composite
def _junit(draw: st.DrawFn) -> bytes:
    root = draw(st.sampled_from(["testsuites", "testsuite", "ns:testsuite", "html"]))
    many = draw(st.integers(0, 1_200))
    case = '<testcase classname="m.C" name="t"><failure message="m">boom</failure></testcase>'
    inner = "".join(draw(st.lists(_element(), max_size=3))) + case * many
    xmlns = ' xmlns:ns="urn:x"'
    doc = f'<?xml version="1.0" encoding="utf-8"?>\n<{root}{xmlns}>{inner}</{root}>'
    data = doc.encode("utf-8")
    how = draw(st.sampled_from(["as is", "as is", "utf-16", "cut", "corrupt"]))
    if how == "utf-16":
        data = doc.replace('encoding="utf-8"', 'encoding="utf-16"').encode("utf-16")
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "corrupt":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data


@FUZZ
@given(_junit())
def test_fuzz_junit(data: bytes) -> None:
    try:
        parsed = parse_junit(data)
    except ResultFormatError as exc:
        assert str(exc)
        return
    check(parsed, "junit")
    c = parsed.counts
    assert c.ok + c.fail + c.error + c.skip == len(parsed.tests) + parsed.tests_more
