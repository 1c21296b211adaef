"""Results: the osg-test, JUnit and TAP parsers, run classification, reading the guest's files."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from vmharness.results import (
    ResultFormatError,
    classify,
    detect_format,
    parse_junit,
    parse_osg_test,
    parse_results,
    parse_tap,
    read_capped,
)
from vmharness.results.model import STATUSES, ParsedLog, Problem
from vmharness.spec import KnownFailure

TODAY = datetime.date(2026, 11, 24)
YESTERDAY = TODAY - datetime.timedelta(days=1)
TOMORROW = TODAY + datetime.timedelta(days=1)
PEER_LOGS = Path(__file__).resolve().parents[2].parent / "shared" / "peer-data" / "osg-test-logs"


def kf(test: str, module: str, start=TODAY, end=TODAY) -> KnownFailure:
    return KnownFailure(test=test, module=module, start=str(start), end=str(end))


def status_of(parsed, known=(), exit_code=None, today=TODAY):
    return classify(parsed, exit_code=exit_code, known_failures=list(known), today=today)


def osg(text: str) -> ParsedLog:
    return parse_osg_test(textwrap.dedent(text).lstrip("\n"))


SEP1 = "=" * 70
SEP2 = "-" * 70


def osg_log(lines: list[str], blocks: str = "", summary: str | None = None, ran: int | None = None):
    """An osg-test log: per-test lines, then blocks/lists, then the summary."""
    head = "\n".join(lines) + "\n\n"
    if summary is None:
        return head + blocks
    n = len(lines) if ran is None else ran
    return f"{head}{blocks}{SEP2}\nRan {n} tests in 12.345s\n\n{summary}\n"


def fail_block(kind: str, name: str, module: str, cls: str, body: str = "Traceback: boom") -> str:
    return f"{SEP1}\n{kind}: {name} (osgtest.tests.{module}.{cls})\n{SEP2}\n{body}\n\n"


def line(name: str, module: str, cls: str, outcome: str) -> str:
    return f"{name} (osgtest.tests.{module}.{cls}) ... {outcome}"


# --------------------------------------------------------------------------------------------
# The six real osg-test logs and the OSG analyzer's verdicts on them

EXPECTED = yaml.safe_load((PEER_LOGS / "expected.yaml").read_text()) if PEER_LOGS.is_dir() else {}
README_KNOWN = [
    kf("test_04_trace", "test_55_condorce"),
    kf("test_05_pbs_trace", "test_55_condorce"),
]


def _real(name: str) -> str:
    if not (PEER_LOGS / name).is_file():
        pytest.skip(f"peer data not here: {PEER_LOGS}")
    return (PEER_LOGS / name).read_text(encoding="utf-8", errors="replace")


@pytest.mark.parametrize(
    "name", ["pass.log", "fail.log", "install.log", "update.log", "ignore.log", "cleanup.log"]
)
def test_real_osg_logs_get_the_osg_analyzers_verdict(name):
    text = _real(name)
    expected = EXPECTED[name]
    parsed = parse_osg_test(text)
    assert [str(p) for p in parsed.problems] == expected["problems"]
    known = README_KNOWN if name in ("ignore.log", "fail.log") else []
    status, reason = status_of(parsed, known)
    assert status == expected["status"], reason
    assert parsed.complete and not parsed.alarm
    assert detect_format(name, text) == "osg-test"


@pytest.mark.parametrize(
    "name, counts",
    [
        ("pass.log", (263, 0, 0, 30)),
        ("fail.log", (266, 12, 0, 15)),  # 13 ok skips + 2 bad skips
        ("install.log", (60, 1, 0, 232)),
        ("cleanup.log", (72, 1, 0, 220)),
    ],
)
def test_real_osg_logs_counts_match_their_summary(name, counts):
    parsed = parse_osg_test(_real(name))
    c = parsed.counts
    assert (c.ok, c.fail, c.error, c.skip) == counts
    assert len(parsed.tests) == sum(counts)


def test_real_fail_log_messages_and_skip_reasons():
    parsed = parse_osg_test(_real("fail.log"))
    first = parsed.problems[0]
    assert first.test == "test_06_rfc_voms_proxy_init"
    assert first.message.startswith("Traceback (most recent call last):")
    assert "AssertionError: Run voms-proxy-init" in first.message
    assert "BAD SKIPS" not in parsed.problems[11].message  # the last block stops at the list
    skip = parsed.problems[-1]
    assert (skip.kind, skip.reason) == ("SKIP", "no proxy")
    # The dumped OSG-TEST LOG after the summary holds a nested unittest run with its own
    # "FAIL: testServiceList (...)" blocks: none of them is a problem of this run.
    assert not any(p.test == "testServiceList" for p in parsed.problems)
    tomcat = [
        t for t in parse_osg_test(_real("cleanup.log")).tests if t.name.startswith("test_02_con")
    ]
    assert any("SKIPPED (missing tomcat5" in t.message and t.outcome == "ok" for t in tomcat)


def test_real_logs_known_failures_outside_their_dates_are_not_ignored():
    parsed = parse_osg_test(_real("ignore.log"))
    expired = [
        kf(k.test, k.module, YESTERDAY - datetime.timedelta(days=30), YESTERDAY)
        for k in README_KNOWN
    ]
    future = [
        kf(k.test, k.module, TOMORROW, TOMORROW + datetime.timedelta(days=30)) for k in README_KNOWN
    ]
    assert status_of(parsed, README_KNOWN)[0] == "ignore"
    assert status_of(parsed, expired)[0] == "fail"
    assert status_of(parsed, future)[0] == "fail"
    assert status_of(parsed, [])[0] == "fail"
    # Only one of the two known: the other condorce failure is still a failure.
    assert status_of(parsed, README_KNOWN[:1])[0] == "fail"


def test_real_log_found_by_parse_results_through_the_agents_test_log(tmp_path):
    real = PEER_LOGS / "update.log"
    _real("update.log")
    (tmp_path / "test").mkdir()
    parsed = parse_results(tmp_path / "test", "auto", None, log_file=real)
    assert parsed is not None and parsed.format == "osg-test"
    assert status_of(parsed)[0] == "update"


# --------------------------------------------------------------------------------------------
# osg-test: synthetic logs, one per status and per quirk

PASSING = [
    line("test_01_install_ca", "special_certs", "TestCert", "ok"),
    line("test_01_yum_repositories", "special_install", "TestInstall", "ok"),
    line("test_03_install_packages", "special_install", "TestInstall", "ok"),
    line("test_01_start", "test_10_condor", "TestStartCondor", "okskip"),
]


def test_osg_pass():
    parsed = parse_osg_test(osg_log(PASSING, summary="OK(okSkips=1)"))
    assert parsed.complete and parsed.problems == []
    assert (parsed.counts.ok, parsed.counts.skip) == (3, 1)
    assert parsed.tests[0].module == "special_certs" and parsed.tests[0].cls == "TestCert"
    assert status_of(parsed) == ("pass", "3 passed, 1 skipped")


def test_osg_plain_ok_summary_without_skips():
    parsed = parse_osg_test(osg_log(PASSING[:3], summary="OK"))
    assert parsed.complete and status_of(parsed)[0] == "pass"


def test_osg_fail_with_traceback_attached():
    lines = [*PASSING, line("test_02_trace", "test_55_condorce", "TestCondorCE", "FAIL")]
    body = (
        "Traceback (most recent call last):\n  File x\nAssertionError: trace failed\nEXIT STATUS: 1"
    )
    log = osg_log(
        lines,
        fail_block("FAIL", "test_02_trace", "test_55_condorce", "TestCondorCE", body),
        "FAILED (failures=1, okSkips=1)",
    )
    parsed = parse_osg_test(log)
    assert [str(p) for p in parsed.problems] == [
        "test_55_condorce|test_02_trace|TestCondorCE|FAIL|-"
    ]
    assert parsed.problems[0].message == body
    assert parsed.tests[-1].outcome == "fail" and parsed.tests[-1].message == body
    assert status_of(parsed) == ("fail", "1 failed: test_02_trace")


def test_osg_error_and_timeout_blocks():
    lines = [
        *PASSING,
        line("test_01_a", "test_20_x", "TestX", "ERROR"),
        line("test_02_b", "test_20_x", "TestX", "TIMEOUT"),
    ]
    blocks = fail_block("ERROR", "test_01_a", "test_20_x", "TestX", "KeyError: 'x'") + fail_block(
        "TIMEOUT", "test_02_b", "test_20_x", "TestX", "command timed out"
    )
    parsed = parse_osg_test(osg_log(lines, blocks, "FAILED (errors=1, timeouts=1, okSkips=1)"))
    assert [(p.kind, p.test, p.message) for p in parsed.problems] == [
        ("ERROR", "test_01_a", "KeyError: 'x'"),
        ("TIMEOUT", "test_02_b", "command timed out"),
    ]
    assert (parsed.counts.error, parsed.counts.fail) == (1, 1)
    assert status_of(parsed)[0] == "fail"


def test_osg_bad_skip_reason_and_bad_skips_alone_fail():
    lines = [*PASSING, line("test_07_info", "test_50_voms", "TestVOMS", "BADSKIP")]
    lists = (
        f"{SEP1}\nBAD SKIPS:\n{SEP2}\n"
        "test_07_info (osgtest.tests.test_50_voms.TestVOMS) voms-proxy-init failed\n\n"
        f"{SEP1}\nOK SKIPS:\n{SEP2}\n"
        "test_01_start (osgtest.tests.test_10_condor.TestStartCondor) missing condor\n\n"
    )
    parsed = parse_osg_test(osg_log(lines, lists, "FAILED (badSkips=1, okSkips=1)"))
    assert [str(p) for p in parsed.problems] == [
        "test_50_voms|test_07_info|TestVOMS|SKIP|voms-proxy-init failed"
    ]
    assert parsed.tests[3].outcome == "skip" and parsed.tests[3].message == "missing condor"
    assert status_of(parsed) == ("fail", "1 bad skip: test_07_info")


@pytest.mark.parametrize(
    "failing, expected",
    [
        ([("test_03_remove_packages", "special_cleanup", "TestCleanup")], "cleanup"),
        ([("test_05_update_packages", "special_install", "TestInstall")], "update"),
        ([("test_03_install_packages", "special_install", "TestInstall")], "install"),
        # the OSG's order: update before install, either before cleanup
        (
            [
                ("test_03_install_packages", "special_install", "TestInstall"),
                ("test_05_update_packages", "special_install", "TestInstall"),
            ],
            "update",
        ),
        (
            [
                ("test_03_remove_packages", "special_cleanup", "TestCleanup"),
                ("test_03_install_packages", "special_install", "TestInstall"),
            ],
            "install",
        ),
        (
            [
                ("test_03_remove_packages", "special_cleanup", "TestCleanup"),
                ("test_01_web", "test_30_misc", "TestMisc"),
            ],
            "fail",
        ),
    ],
)
def test_osg_statuses_by_failing_test(failing, expected):
    lines = list(PASSING)
    blocks = ""
    for name, module, cls in failing:
        lines.append(line(name, module, cls, "FAIL"))
        blocks += fail_block("FAIL", name, module, cls)
    parsed = parse_osg_test(osg_log(lines, blocks, f"FAILED (failures={len(failing)})"))
    assert len(parsed.problems) == len(failing)
    assert status_of(parsed)[0] == expected


def test_osg_bad_skip_named_update_does_not_make_update():
    # As in the real install.log: bad skips never decide update/install.
    lines = [
        *PASSING,
        line("test_04_update_osg_release", "special_install", "TestInstall", "BADSKIP"),
    ]
    lists = (
        f"{SEP1}\nBAD SKIPS:\n{SEP2}\ntest_04_update_osg_release "
        "(osgtest.tests.special_install.TestInstall) Install did not succeed\n\n"
    )
    parsed = parse_osg_test(osg_log(lines, lists, "FAILED (badSkips=1)"))
    assert status_of(parsed)[0] == "fail"


def _condorce_and_cleanup_log() -> ParsedLog:
    lines = [
        *PASSING,
        line("test_04_trace", "test_55_condorce", "TestCondorCE", "FAIL"),
        line("test_03_remove_packages", "special_cleanup", "TestCleanup", "FAIL"),
    ]
    blocks = fail_block("FAIL", "test_04_trace", "test_55_condorce", "TestCondorCE") + fail_block(
        "FAIL", "test_03_remove_packages", "special_cleanup", "TestCleanup"
    )
    return parse_osg_test(osg_log(lines, blocks, "FAILED (failures=2)"))


@pytest.mark.parametrize(
    "known, expected",
    [
        ([kf("test_04_trace", "test_55_condorce")], "ignore"),
        ([kf("test_04_trace", "test_55_condorce", YESTERDAY, TODAY)], "ignore"),  # end inclusive
        ([kf("test_04_trace", "test_55_condorce", TODAY, TOMORROW)], "ignore"),  # start inclusive
        ([kf("test_04_trace", "test_55_condorce", YESTERDAY, YESTERDAY)], "fail"),  # expired
        ([kf("test_04_trace", "test_55_condorce", TOMORROW, TOMORROW)], "fail"),  # not yet
        ([kf("test_04_trace", "test_55_condorce", "2026-13-01", "2027-01-01")], "fail"),  # bad date
        ([kf("test_04_trace", "test_56_other")], "fail"),  # other module
        ([kf("test_04_trace", "osgtest.tests.test_55_condorce")], "ignore"),  # full module path
        ([kf("test_99_other", "test_55_condorce")], "fail"),
        ([], "fail"),
    ],
)
def test_osg_known_failures_and_their_dates(known, expected):
    assert status_of(_condorce_and_cleanup_log(), known)[0] == expected


def test_ignore_reason_names_known_and_cleanup_failures():
    status, reason = status_of(
        _condorce_and_cleanup_log(), [kf("test_04_trace", "test_55_condorce")]
    )
    assert status == "ignore"
    assert reason == (
        "1 known failure ignored: test_04_trace; 1 cleanup failure: test_03_remove_packages"
    )


def test_cleanup_only_with_a_known_list_stays_cleanup():
    lines = [*PASSING, line("test_03_remove_packages", "special_cleanup", "TestCleanup", "FAIL")]
    parsed = parse_osg_test(
        osg_log(
            lines,
            fail_block("FAIL", "test_03_remove_packages", "special_cleanup", "TestCleanup"),
            "FAILED (failures=1)",
        )
    )
    assert status_of(parsed, [kf("test_04_trace", "test_55_condorce")])[0] == "cleanup"


def test_known_failure_does_not_cover_an_error():
    lines = [*PASSING, line("test_04_trace", "test_55_condorce", "TestCondorCE", "ERROR")]
    parsed = parse_osg_test(
        osg_log(
            lines,
            fail_block("ERROR", "test_04_trace", "test_55_condorce", "TestCondorCE"),
            "FAILED (errors=1)",
        )
    )
    assert status_of(parsed, [kf("test_04_trace", "test_55_condorce")])[0] == "fail"


def test_osg_alarm_is_timeout_with_the_running_test():
    lines = [*PASSING, "test_02_long (osgtest.tests.test_40_slow.TestSlow) ... "]
    log = "\n".join(lines) + textwrap.dedent("""
        --------------------------------------------------------------------------------
        OSG-TEST LOG
        Start time: 2014-12-09 04:54:01

        Caught alarm:
          File "/usr/sbin/osg-test", line 240, in <module>
            if run_tests(TESTS).wasSuccessful():
          File "/usr/lib/python2.4/osgtest/tests/test_40_slow.py", line 9, in test_02_long
            core.check_system(command, 'Run it')
        """)
    parsed = parse_osg_test(log)
    assert parsed.alarm and not parsed.complete
    assert parsed.timeout_test == "test_02_long (test_40_slow)"
    assert [t.name for t in parsed.tests] == [
        "test_01_install_ca",
        "test_01_yum_repositories",
        "test_03_install_packages",
        "test_01_start",
    ]
    assert status_of(parsed, exit_code=134) == (
        "timeout",
        "test suite timed out in test_02_long (test_40_slow) (Caught alarm)",
    )


def test_osg_alarm_test_from_the_stack_when_no_test_line_is_pending():
    log = (
        osg_log(PASSING)
        + 'Caught alarm:\n  File "/x/osgtest/tests/test_9_z.py", line 3, in test_7_q\n'
    )
    parsed = parse_osg_test(log)
    assert parsed.alarm and parsed.timeout_test == "test_7_q (test_9_z)"


def test_osg_incomplete_log_fails():
    parsed = parse_osg_test(osg_log([*PASSING, line("test_1", "test_2_m", "TestM", "FAIL")]))
    assert not parsed.complete and not parsed.alarm
    assert [p.test for p in parsed.problems] == ["test_1"]  # no block, still a problem
    status, reason = status_of(parsed)
    assert status == "fail"
    assert reason.startswith("log ends before its summary line (5 test results read)")
    assert "1 failed: test_1" in reason


def test_osg_no_test_passed_fails():
    lines = [line("test_01_start", "test_10_condor", "TestStartCondor", "okskip")]
    parsed = parse_osg_test(osg_log(lines, summary="OK(okSkips=1)"))
    assert parsed.complete
    assert status_of(parsed) == ("fail", "no test passed")


def test_osg_nonzero_exit_with_a_passing_log_fails():
    parsed = parse_osg_test(osg_log(PASSING, summary="OK(okSkips=1)"))
    assert status_of(parsed, exit_code=0)[0] == "pass"
    assert status_of(parsed, exit_code=3) == (
        "fail",
        "test command exited 3 although no test failed",
    )


NESTED = f"""Traceback (most recent call last):
AssertionError: osg-configure unit tests
STANDARD OUTPUT:
testServiceList (test_condor.TestCondor) ... FAIL
{SEP1}
FAIL: testServiceList (test_condor.TestCondor)
{SEP2}
AssertionError: nested
{SEP2}
Ran 220 tests in 1.636s

FAILED (failures=1)
STANDARD ERROR: [none]"""


def test_osg_nested_unittest_output_in_a_traceback_is_message_not_problems():
    lines = [
        *PASSING,
        line("test_02_run_unit_tests", "test_35_osg_configure", "TestOSGConfigure", "FAIL"),
    ]
    blocks = fail_block(
        "FAIL", "test_02_run_unit_tests", "test_35_osg_configure", "TestOSGConfigure", NESTED
    )
    parsed = parse_osg_test(osg_log(lines, blocks, "FAILED (failures=1, okSkips=1)"))
    assert parsed.complete
    assert [p.test for p in parsed.problems] == ["test_02_run_unit_tests"]
    assert parsed.problems[0].message == NESTED
    assert (parsed.counts.ok, parsed.counts.fail, parsed.counts.skip) == (3, 1, 1)


@pytest.mark.parametrize("ran, result", [(220, "OK"), (2, "FAILED (failures=1)")])
def test_osg_log_cut_inside_a_nested_summary_is_incomplete(ran, result):
    lines = [
        *PASSING,
        line("test_02_run_unit_tests", "test_35_osg_configure", "TestOSGConfigure", "FAIL"),
    ]
    nested = NESTED.replace("FAILED (failures=1)", result).replace("Ran 220", f"Ran {ran}")
    nested_ok = nested.split("STANDARD ERROR")[0]
    log = osg_log(
        lines,
        fail_block(
            "FAIL", "test_02_run_unit_tests", "test_35_osg_configure", "TestOSGConfigure", nested_ok
        ),
    )
    parsed = parse_osg_test(log)
    assert not parsed.complete
    assert status_of(parsed)[0] == "fail"


def test_osg_a_later_block_proves_an_earlier_summary_nested():
    # A summary whose "Ran N" is large enough to pass for the suite's own, in the first of two
    # tracebacks: the second block shows the first summary was nested output.
    lines = [
        *PASSING,
        line("test_1", "test_5_m", "TestM", "FAIL"),
        line("test_2", "test_5_m", "TestM", "FAIL"),
    ]
    nested = f"output\n{SEP2}\nRan 900 tests in 1s\n\nFAILED (failures=1)\nmore output"
    blocks = fail_block("FAIL", "test_1", "test_5_m", "TestM", nested) + fail_block(
        "FAIL", "test_2", "test_5_m", "TestM"
    )
    parsed = parse_osg_test(osg_log(lines, blocks, "FAILED (failures=2, okSkips=1)"))
    assert [p.test for p in parsed.problems] == ["test_1", "test_2"]
    assert parsed.problems[0].message == nested
    assert parsed.counts.ok == 3


@pytest.mark.parametrize("then", ["block", "list"])
def test_osg_log_cut_after_a_nested_summary_and_more_is_incomplete(then):
    lines = [
        *PASSING,
        line("test_1", "test_5_m", "TestM", "FAIL"),
        line("test_2", "test_5_m", "TestM", "BADSKIP" if then == "list" else "FAIL"),
    ]
    nested = f"output\n{SEP2}\nRan 900 tests in 1s\n\nFAILED (failures=1)\nmore output"
    blocks = fail_block("FAIL", "test_1", "test_5_m", "TestM", nested)
    if then == "block":
        blocks += fail_block("FAIL", "test_2", "test_5_m", "TestM", "cut here")
    else:
        blocks += f"{SEP1}\nBAD SKIPS:\n{SEP2}\ntest_2 (osgtest.tests.test_5_m.TestM) why\n"
    parsed = parse_osg_test(osg_log(lines, blocks))  # no summary of its own
    assert not parsed.complete
    assert parsed.problems[0].message == nested
    assert status_of(parsed)[0] == "fail"


def test_osg_interleaved_output_and_wrapped_lines():
    log = "\n".join(
        [
            "test_01_a (osgtest.tests.test_10_m.TestM) ... ",
            "warning: something printed straight to the terminal",
            "ok",
            "\x1b[0m[junk]test_02_b (osgtest.tests.test_10_m.TestM) ... FAIL",
            "test_03_c (osgtest.tests.test_10_",
            "m.TestM) ... okskip",
            "test_04_d (osgtest.tests.test_10_m.TestM) ... SKIPPED (missing foo) ... ok",
            "setup system library path ... ok",
            "test_05_e (osgtest.tests.test_10_m.TestM) ... progress 50%",
            "BADSKIP",
            "",
            fail_block("FAIL", "test_02_b", "test_10_m", "TestM", "boom").rstrip("\n"),
            f"{SEP2}\nRan 6 tests in 1.0s\n\nFAILED (failures=1, badSkips=1, okSkips=1)",
        ]
    )
    parsed = parse_osg_test(log)
    assert [(t.name, t.outcome) for t in parsed.tests] == [
        ("test_01_a", "ok"),
        ("test_02_b", "fail"),
        ("test_03_c", "skip"),
        ("test_04_d", "ok"),
        ("setup system library path", "ok"),
        ("test_05_e", "badskip"),
    ]
    assert parsed.tests[3].message == "SKIPPED (missing foo)"
    assert [str(p) for p in parsed.problems] == [
        "test_10_m|test_02_b|TestM|FAIL|-",
        "test_10_m|test_05_e|TestM|SKIP|",  # a bad skip without a reason, as the OSG writes it
    ]
    assert parsed.complete and parsed.note == ""


def test_python3_unittest_verbose_output():
    log = textwrap.dedent(f"""\
        test_a (tests.test_web.TestLogin.test_a) ... ok
        test_b (tests.test_web.TestLogin.test_b)
        Logs in twice. ... FAIL
        test_c (tests.test_web.TestLogin.test_c) ... skipped 'no network'

        {SEP1}
        FAIL: test_b (tests.test_web.TestLogin.test_b)
        Logs in twice.
        {SEP2}
        AssertionError: 1 != 2

        {SEP2}
        Ran 3 tests in 0.002s

        FAILED (failures=1, skipped=1)
        """)
    assert detect_format("test.log", log) == "osg-test"
    parsed = parse_osg_test(log)
    assert [(t.name, t.module, t.cls, t.outcome) for t in parsed.tests] == [
        ("test_a", "test_web", "TestLogin", "ok"),
        ("test_b", "test_web", "TestLogin", "fail"),
        ("test_c", "test_web", "TestLogin", "skip"),
    ]
    assert parsed.tests[2].message == "no network"
    assert [str(p) for p in parsed.problems] == ["test_web|test_b|TestLogin|FAIL|-"]
    assert parsed.problems[0].message == "AssertionError: 1 != 2"
    assert parsed.complete


def test_unittest_fixture_errors_without_test_lines_are_problems():
    log = textwrap.dedent(f"""\
        test_a (tests.test_db.TestDB.test_a) ... FAIL

        {SEP1}
        FAIL: test_a (tests.test_db.TestDB.test_a)
        {SEP2}
        AssertionError: a
        {SEP1}
        ERROR: setUpClass (tests.test_db.TestCache)
        {SEP2}
        ConnectionError: no database

        {SEP2}
        Ran 1 test in 0.002s

        FAILED (failures=1, errors=1)
        """)
    parsed = parse_osg_test(log)
    assert [str(p) for p in parsed.problems] == [
        "test_db|test_a|TestDB|FAIL|-",
        "test_db|setUpClass|TestCache|ERROR|-",
    ]
    assert parsed.problems[0].message == "AssertionError: a"
    assert parsed.problems[1].message == "ConnectionError: no database"
    assert parsed.complete


def test_osg_summary_counts_win_when_test_lines_are_missing():
    lines = PASSING[:2]
    parsed = parse_osg_test(osg_log(lines, summary="FAILED (failures=0, okSkips=3)", ran=10))
    assert parsed.complete
    assert (parsed.counts.ok, parsed.counts.skip) == (7, 3)
    assert "counts taken from the summary" in parsed.note


def test_osg_huge_traceback_is_capped():
    lines = [*PASSING, line("test_1", "test_5_m", "TestM", "FAIL")]
    body = "\n".join(f"output line {i} " + "x" * 100 for i in range(20000))
    parsed = parse_osg_test(
        osg_log(
            lines, fail_block("FAIL", "test_1", "test_5_m", "TestM", body), "FAILED (failures=1)"
        )
    )
    msg = parsed.problems[0].message
    assert len(msg) <= 17 * 1024
    assert msg.startswith("output line 0 ") and "characters cut" in msg
    assert parsed.complete


# --------------------------------------------------------------------------------------------
# Garbage never raises (and never trips the parsers' last-resort guard)


def _garbage() -> list[tuple[str, str]]:
    rng = random.Random(20261124)
    junk = bytes(rng.getrandbits(8) for _ in range(200_000)).decode("latin-1")
    return [
        ("empty", ""),
        ("random bytes", junk),
        ("nul", "\x00" * 100_000),
        ("newlines", "\n" * 2_000_000),
        ("one huge line", "a" * 8_000_000),
        ("huge words and parens", ("abc_d (" * 500_000) + " ... ok"),
        ("dots", ("x (y.z) ..." * 300_000)),
        ("separators", (f"{SEP1}\n{SEP2}\nRan 1 tests in 1s\n" * 20_000)),
        ("headers", (f"{SEP1}\nFAIL: a (b.C)\n{SEP2}\n" * 20_000)),
        ("truncated", osg_log(PASSING, fail_block("FAIL", "t", "m", "C"))[:-7]),
        ("crlf", osg_log(PASSING, summary="OK(okSkips=1)").replace("\n", "\r\n")),
        ("tap-ish", "not ok\n" * 100_000 + "    ---\n" * 10 + "Bail out!"),
        ("xml-ish", "<testsuite>" * 10_000),
    ]


@pytest.mark.parametrize("label, text", _garbage(), ids=[g[0] for g in _garbage()])
def test_garbage_never_raises(label, text):
    start = time.perf_counter()
    for parse in (parse_osg_test, parse_tap):
        parsed = parse(text)
        assert isinstance(parsed, ParsedLog)
        assert "internal error" not in parsed.note, parsed.note
        status, reason = status_of(parsed, exit_code=1)
        assert status in STATUSES and reason
    with contextlib.suppress(ResultFormatError):
        parse_junit(text.encode("utf-8", errors="replace"))
    assert time.perf_counter() - start < 20, f"{label} took too long"


def test_crlf_log_reads_like_the_unix_one():
    parsed = parse_osg_test(osg_log(PASSING, summary="OK(okSkips=1)").replace("\n", "\r\n"))
    assert parsed.complete and parsed.counts.ok == 3


def test_bytes_are_accepted_too():
    parsed = parse_osg_test(osg_log(PASSING, summary="OK(okSkips=1)").encode() + b"\xff\xfe")
    assert parsed.complete and parsed.counts.ok == 3


# --------------------------------------------------------------------------------------------
# JUnit

JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites>
  <testsuite name="pytest" tests="5" failures="1" errors="1" skipped="1">
    <testcase classname="tests.test_web.TestLogin" name="test_ok" time="0.1"/>
    <testcase classname="tests.test_web" name="test_fail">
      <failure message="assert 1 == 2" type="AssertionError">def test_fail():
&gt;       assert 1 == 2</failure>
    </testcase>
    <testcase classname="tests.test_web" name="test_error"><error message="boom"/></testcase>
    <testcase classname="tests.test_web" name="test_skip"><skipped message="no network"/></testcase>
    <testsuite name="nested"><testcase classname="Outer" name="test_deep"/></testsuite>
  </testsuite>
</testsuites>
"""


def test_junit_cases_problems_and_counts():
    parsed = parse_junit(JUNIT)
    c = parsed.counts
    assert (c.ok, c.fail, c.error, c.skip) == (2, 1, 1, 1)
    assert [str(p) for p in parsed.problems] == [
        "tests.test_web|test_fail||FAIL|-",
        "tests.test_web|test_error||ERROR|-",
    ]
    assert parsed.problems[0].message.startswith("AssertionError: assert 1 == 2\ndef test_fail():")
    assert "> " in parsed.problems[0].message
    assert parsed.tests[0].module == "tests.test_web" and parsed.tests[0].cls == "TestLogin"
    assert parsed.tests[3].message == "no network"
    assert status_of(parsed) == ("fail", "2 failed: test_fail, test_error")


def test_junit_single_testsuite_root_and_namespaces():
    data = b'<testsuite xmlns="urn:x"><testcase name="a" classname="m"/></testsuite>'
    parsed = parse_junit(data)
    assert parsed.counts.ok == 1 and status_of(parsed, exit_code=0) == ("pass", "1 passed")


def test_junit_known_failure_ignored_by_short_module_name():
    parsed = parse_junit(JUNIT.replace(b'<error message="boom"/>', b""))
    assert status_of(parsed, [kf("test_fail", "test_web")])[0] == "ignore"
    assert status_of(parsed, [kf("test_fail", "tests.test_web")])[0] == "ignore"
    assert status_of(parsed, [kf("test_fail", "test_web", YESTERDAY, YESTERDAY)])[0] == "fail"
    assert status_of(parsed, [kf("test_fail", "test_other")])[0] == "fail"


def test_junit_has_no_osg_statuses():
    data = b"""<testsuite><testcase classname="special_cleanup.TestCleanup" name="test_x">
        <failure/></testcase><testcase name="test_05_update_packages"><failure/></testcase>
        <testcase name="ok"/></testsuite>"""
    assert status_of(parse_junit(data))[0] == "fail"


def test_junit_without_testcases_fails():
    parsed = parse_junit(b"<testsuites/>")
    assert status_of(parsed, exit_code=0) == ("fail", "no test cases in the JUnit results")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<testsuite><testcase name="a"><failure>&lol9;</failure></testcase></testsuite>
"""


@pytest.mark.parametrize(
    "data, words",
    [
        (BILLION_LAUGHS, "DOCTYPE"),
        (BILLION_LAUGHS.decode().encode("utf-16"), "DOCTYPE"),
        (b'<?xml version="1.0"?><!DOCTYPE t SYSTEM "file:///etc/passwd"><testsuite/>', "DOCTYPE"),
        (b"<testsuite><testcase name='a'>", "malformed JUnit XML at line 1"),
        (b"<testsuite>&undefined;</testsuite>", "undefined entity"),
        (b"<html><body/></html>", "root element is <html>"),
        (b"   ", "empty"),
        (b"\x00\x01\x02garbage", "malformed"),
    ],
)
def test_junit_refuses_bombs_and_malformed_xml(data, words):
    with pytest.raises(ResultFormatError) as err:
        parse_junit(data)
    assert words in str(err.value)


def test_junit_deep_nesting_does_not_crash():
    data = (
        b"<testsuite>" + b"<a>" * 200_000 + b"</a>" * 200_000 + b"<testcase name='x'/></testsuite>"
    )
    parsed = parse_junit(data)
    assert parsed.counts.ok == 1


# --------------------------------------------------------------------------------------------
# TAP


def test_tap_basic_with_skip_todo_and_yaml():
    text = textwrap.dedent("""\
        TAP version 13
        1..6
        ok 1 - first
        not ok 2 - second
          ---
          message: 'expected 1, got 2'
          at: test.js:3
          ...
        ok 3 - third # SKIP no network
        not ok 4 - fourth # TODO not written yet
        ok 5 - has \\# hash
        # a comment
        ok 6
        """)
    parsed = parse_tap(text)
    assert parsed.complete and parsed.format == "tap"
    assert [(t.name, t.outcome) for t in parsed.tests] == [
        ("first", "ok"),
        ("second", "fail"),
        ("third", "skip"),
        ("fourth", "skip"),
        ("has # hash", "ok"),
        ("test 6", "ok"),
    ]
    assert [str(p) for p in parsed.problems] == ["|second||FAIL|-"]
    assert "expected 1, got 2" in parsed.problems[0].message
    assert (parsed.counts.ok, parsed.counts.fail, parsed.counts.skip) == (3, 1, 2)
    assert status_of(parsed) == ("fail", "1 failed: second")
    assert status_of(parsed, [kf("second", "")])[0] == "ignore"


def test_tap_todo_is_not_a_failure_and_plan_at_the_end():
    parsed = parse_tap("ok 1 - a\nnot ok 2 - b # todo later\n1..2\n")
    assert parsed.complete and parsed.problems == []
    assert status_of(parsed, exit_code=0) == ("pass", "1 passed, 1 skipped")


def test_tap_subtests_left_to_their_parent():
    text = (
        "TAP version 14\n1..1\n# Subtest: group\n"
        "    1..2\n    ok 1 - x\n    not ok 2 - y\nnot ok 1 - group\n"
    )
    parsed = parse_tap(text)
    assert [t.name for t in parsed.tests] == ["group"]
    assert parsed.complete and status_of(parsed)[0] == "fail"


@pytest.mark.parametrize(
    "text, note",
    [
        ("1..3\nok 1\nok 2\n", "plan says 1..3 but 2 tests ran"),
        ("ok 1\nok 2\n", "no plan line (1..N), 2 tests read"),
        ("1..3\nok 1\nBail out! database down\nok 2\nok 3\n", "Bail out! database down"),
        ("", "no plan line (1..N), 0 tests read"),
    ],
)
def test_tap_incomplete_streams_fail(text, note):
    parsed = parse_tap(text)
    assert not parsed.complete and parsed.note.startswith(note)
    status, reason = status_of(parsed, exit_code=0)
    assert status == "fail" and reason.startswith(note)


def test_tap_skip_all_plan_passes():
    parsed = parse_tap("1..0 # SKIP no display here\n")
    assert parsed.complete
    assert status_of(parsed, exit_code=0) == ("pass", "nothing to run (1..0): SKIP no display here")


# --------------------------------------------------------------------------------------------
# Classification without parsed results, and reasons


@pytest.mark.parametrize(
    "exit_code, expected",
    [
        (0, ("pass", "test command exited 0")),
        (2, ("fail", "test command exited 2")),
        (None, ("died", "no test results and no exit code")),
    ],
)
def test_exit_code_only(exit_code, expected):
    assert status_of(None, exit_code=exit_code) == expected


def test_reason_lists_at_most_five_names():
    problems = [Problem("m", f"test_{i}", "C", "FAIL") for i in range(8)]
    parsed = ParsedLog(format="junit", tests=[object()] * 8, problems=problems)  # type: ignore[list-item]
    assert status_of(parsed)[1] == "8 failed: test_0, test_1, test_2, test_3, test_4 and 3 more"


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("report.xml", JUNIT.decode(), "junit"),
        ("out.txt", "\ufeff<?xml version='1.0'?><testsuites/>", "junit"),
        ("settings.xml", "<settings/>", "exit-code"),
        ("results.tap", "anything", "tap"),
        ("test.log", "TAP version 14\n1..1\nok 1\n", "tap"),
        ("test.log", "# header comment\nok 1 - x\n1..1\n", "tap"),
        ("test.log", line("test_1", "m", "C", "ok") + "\n", "osg-test"),
        ("test.log", "Reading package lists...\nDone\n", "exit-code"),
        ("test.log", "", "exit-code"),
    ],
)
def test_detect_format(name, text, expected):
    assert detect_format(name, text) == expected


# --------------------------------------------------------------------------------------------
# parse_results: choosing and reading the guest's files safely


def test_parse_results_exit_code_and_nothing_found(tmp_path):
    assert parse_results(tmp_path, "exit-code", None) is None
    assert parse_results(tmp_path, "auto", None) is None
    assert parse_results(tmp_path / "missing", "auto", None) is None
    (tmp_path / "notes.txt").write_text("nothing structured\n")
    assert parse_results(tmp_path, "auto", None) is None


def test_parse_results_auto_merges_junit_and_prefers_it(tmp_path):
    (tmp_path / "a.xml").write_bytes(JUNIT)
    sub = tmp_path / "more"
    sub.mkdir()
    (sub / "b.xml").write_bytes(b'<testsuite><testcase name="z"/></testsuite>')
    (tmp_path / "osg-test.log").write_text(osg_log(PASSING, summary="OK(okSkips=1)"))
    parsed = parse_results(tmp_path, "auto", None)
    assert parsed is not None and parsed.format == "junit"
    assert parsed.counts.ok == 3 and len(parsed.problems) == 2
    assert [t.name for t in parsed.tests] == [
        "test_ok",
        "test_fail",
        "test_error",
        "test_skip",
        "test_deep",
        "z",
    ]


def test_parse_results_named_file_and_explicit_format(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r.tap").write_text("1..1\nnot ok 1 - broken\n")
    parsed = parse_results(tmp_path, "auto", "out/r.tap")
    assert parsed is not None and parsed.format == "tap" and parsed.problems[0].test == "broken"
    parsed = parse_results(tmp_path, "tap", None)
    assert parsed is not None and parsed.format == "tap"


@pytest.mark.parametrize("fmt", ["junit", "auto"])
def test_parse_results_malformed_junit_is_a_failed_run_with_reason(tmp_path, fmt):
    (tmp_path / "report.xml").write_bytes(BILLION_LAUGHS)
    parsed = parse_results(tmp_path, fmt, "report.xml")
    assert parsed is not None and not parsed.complete
    status, reason = status_of(parsed, exit_code=0)
    assert status == "fail" and "report.xml" in reason and "DOCTYPE" in reason


def test_parse_results_missing_named_file(tmp_path):
    parsed = parse_results(tmp_path, "junit", "report.xml")
    assert parsed is not None and status_of(parsed, exit_code=0) == (
        "fail",
        "report.xml: no such results file",
    )


@pytest.mark.parametrize("name", ["../escape.xml", "/etc/passwd", "link-dir/x.xml", "link.xml"])
def test_parse_results_never_leaves_the_test_folder(tmp_path, name):
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.xml").write_bytes(b'<testsuite><testcase name="secret"/></testsuite>')
    (tmp_path / "escape.xml").write_bytes(b'<testsuite><testcase name="secret"/></testsuite>')
    (test_dir / "link-dir").symlink_to(outside)
    (test_dir / "link.xml").symlink_to(outside / "x.xml")
    parsed = parse_results(test_dir, "junit", name)
    assert parsed is not None and not parsed.complete and not parsed.tests
    why = "leads outside" if "link" in name else "relative path inside"
    assert why in parsed.note
    assert status_of(parsed)[0] == "fail"
    # Auto mode does not follow the symlinks either.
    assert parse_results(test_dir, "auto", None) is None


def test_read_capped_refuses_a_symlink_even_inside_the_folder(tmp_path):
    (tmp_path / "real.log").write_text("ok 1\n1..1\n")
    (tmp_path / "link.log").symlink_to(tmp_path / "real.log")
    assert read_capped(tmp_path / "real.log") == (b"ok 1\n1..1\n", False)
    with pytest.raises(ResultFormatError, match="symlink"):
        read_capped(tmp_path / "link.log")
    parsed = parse_results(tmp_path, "tap", "link.log")
    assert parsed is not None and not parsed.complete and "symlink" in parsed.note


def test_parse_results_skips_fifos_and_caps_size(tmp_path):
    os.mkfifo(tmp_path / "pipe.xml")
    log = osg_log(PASSING, summary="OK(okSkips=1)")
    (tmp_path / "osg-test.log").write_text(log)
    parsed = parse_results(tmp_path, "auto", None, max_bytes=len(log) - 20)
    assert parsed is not None and parsed.format == "osg-test"
    assert not parsed.complete and "cut at" in parsed.note
    parsed = parse_results(tmp_path, "junit", "pipe.xml")
    assert parsed is not None and "not a regular file" in parsed.note


def test_parse_results_explicit_osg_format_reads_the_test_log_even_when_broken(tmp_path):
    log = tmp_path / "test.log"
    log.write_text("No tests to run.\n")
    parsed = parse_results(tmp_path / "test", "osg-test", None, log_file=log)
    assert parsed is not None and parsed.format == "osg-test"
    assert status_of(parsed, exit_code=1)[0] == "fail"
    assert parse_results(tmp_path / "test", "auto", None, log_file=log) is None


def test_parse_results_unknown_format_is_a_reason_not_a_crash(tmp_path):
    parsed = parse_results(tmp_path, "nunit", None)
    assert parsed is not None and status_of(parsed, exit_code=0) == (
        "fail",
        "unknown results format 'nunit'",
    )
