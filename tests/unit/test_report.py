"""Reports from synthetic results: HTML escaping and structure, JUnit, JSON contract, comparison,
terminal. No VM, no browser (see test_report_browser.py for the screenshot check)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from reportdata import make_result, make_run
from rich.console import Console

from vmharness.report import (
    STATUS_COLOURS,
    STATUS_ORDER,
    ReportInput,
    clean,
    compare,
    junit_tree,
    log_href,
    read_json,
    render_html,
    render_terminal,
    to_json,
    write_all,
)

# Aliases: pytest would try to collect classes named Test* from this module's namespace.
from vmharness.results.model import STATUSES, Problem, RunResult
from vmharness.spec import Run

HOSTILE = (
    '<script>alert("x")</script> & "quotes" \'single\' \x00\x07\x1b[31mred\x1b[0m\x0b\ud800 end'
)
CONTRACT_RUN_KEYS = {
    "id",
    "platform",
    "source",
    "package_set",
    "status",
    "reason",
    "duration_s",
    "tests",
    "log_dir",
}


ALL_STATES = (*STATUSES, None)  # the 8 statuses and pending


def sample_input(run_dir: Path, *, hostile: bool = True) -> ReportInput:
    """2 platforms x 2 sources x 3 package sets = 12 runs: every status, pending, hostile text,
    plus one missing combination (an empty cell)."""
    platforms = ["rocky_8.x86_64", "alma_9.x86_64"]
    sources = ["24; osg", "24; osg > osg-testing"]
    sets = ["Compute Entrypoint (Condor)", "Worker Node (privileged)", "XRootD"]
    entries: list[tuple[Run, RunResult | None]] = []
    n = 0
    for platform in platforms:
        for source in sources:
            for pset in sets:
                if (platform, source, pset) == ("alma_9.x86_64", "24; osg > osg-testing", "XRootD"):
                    continue  # an empty cell
                n += 1
                run = make_run(f"{n:04d}", platform, source, pset)
                state = ALL_STATES[(n - 1) % len(ALL_STATES)]
                if state is None:
                    entries.append((run, None))
                    continue
                msg = HOSTILE if hostile else ""
                entries.append(
                    (
                        run,
                        make_result(
                            run,
                            state,
                            message=msg,
                            reason=HOSTILE if hostile and state == "fail" else "",
                        ),
                    )
                )
    return ReportInput(
        title="Nightly <b>test</b>",
        run_dir=run_dir,
        started="2025-06-01T02:00:00",
        backend="local",
        entries=entries,
        generated="2025-06-01T05:00:00",
    )


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self.scripts.append(dict(attrs))


def _parse(page: str) -> _Collector:
    c = _Collector()
    c.feed(page)
    return c


# --- helpers ------------------------------------------------------------------------------------


def test_clean_strips_controls_and_truncates():
    assert clean("a\x00b\x07c\x1b[1;31md\r\ne\x85") == "abcd\ne"
    assert clean("x" * 50, 10).startswith("x" * 10 + "…")
    assert "40 more characters" in clean("x" * 50, 10)


def test_log_href(tmp_path):
    run = make_run("0007", "p", "s", "k")
    res = make_result(run, "pass")
    assert log_href(tmp_path, run, res) == "runs/0007/"
    res.log_dir = str(tmp_path / "runs" / "0007")
    assert log_href(tmp_path, run, res) == "runs/0007/"
    res.log_dir = "/elsewhere/logs dir"
    assert log_href(tmp_path, run, res) == "file:///elsewhere/logs%20dir/"
    res.log_dir = "javascript:alert(1)"
    assert log_href(tmp_path, run, res) == "javascript%3Aalert%281%29/"  # a relative path
    res.log_dir = ""
    assert log_href(tmp_path, run, res) == ""
    (tmp_path / "runs" / "0007").mkdir(parents=True)
    assert log_href(tmp_path, run, res) == "runs/0007/"
    assert log_href(tmp_path, run, None) == "runs/0007/"


# --- HTML ---------------------------------------------------------------------------------------


def test_html_escapes_untrusted_text(tmp_path):
    page = render_html(sample_input(tmp_path))
    assert "<script>alert" not in page
    assert "<b>test</b>" not in page
    assert "&lt;b&gt;test&lt;/b&gt;" in page  # the title, escaped
    # In the embedded JSON, < > & are \u escapes; in attributes and text, entities.
    assert "\\u003cscript\\u003e" in page
    assert "&lt;script&gt;alert(" in page
    for ch in "\x00\x07\x0b\x1b\ud800":
        assert ch not in page
    # Only the page's own two script elements exist.
    scripts = _parse(page).scripts
    assert [s.get("id") for s in scripts] == ["vmh-js", "vmh-data"]
    assert scripts[1].get("type") == "application/json"


def test_html_csp_allows_only_own_code_and_no_network(tmp_path):
    page = render_html(sample_input(tmp_path))
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp

    def digest(text: str) -> str:
        return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    js = re.search(r'<script id="vmh-js">(.*?)</script>', page, re.S).group(1)
    css = re.search(r'<style id="vmh-css">(.*?)</style>', page, re.S).group(1)
    assert f"script-src '{digest(js)}'" in csp
    assert f"style-src '{digest(css)}'" in csp
    # Self-contained: no external resources at all.
    assert not re.search(r"<(link|img|iframe)\b", page)
    assert not re.search(r"\bsrc=", page)
    assert "http://" not in page and "https://" not in page


def test_html_matrix_cells(tmp_path):
    inp = sample_input(tmp_path)
    page = render_html(inp)
    tags = _parse(page).tags
    cells = [a for t, a in tags if t == "a" and "r" in (a.get("class") or "").split()]
    assert len(cells) == len(inp.entries)
    by_id = {a["data-id"]: a for a in cells}
    for run, result in inp.entries:
        a = by_id[run.id]
        status = result.status if result else "pending"
        assert f"s-{status}" in a["class"].split()
        if result is not None:
            assert a["href"] == f"runs/{run.id}/"
            assert status in a["title"] and run.platform.name in a["title"]
        else:
            assert a["href"] == f"#run-{run.id}"
    # Columns are the platforms; one empty cell for the missing combination.
    assert page.count('<th class="plat"') == 2
    assert page.count('<td class="c e">') == 1
    # "ok / skipped / failed" counts in a cell.
    assert ">40 / 3 / 1</a>" in page  # the fail run: 40 ok, 2+1 skipped, 1 failed
    for status in STATUS_ORDER:
        bg, _fg = STATUS_COLOURS[status]
        assert f".s-{status} {{ background: {bg};" in page
    # The legend counts every status.
    assert re.search(r'class="s-pending"[^>]*>pending<span class="n">1</span>', page)


def test_html_truncates_huge_messages_and_stays_small(tmp_path):
    inp = sample_input(tmp_path, hostile=False)
    run, _ = inp.entries[1]
    huge = "Traceback line\n" * 20_000  # 300 kB from a guest
    inp.entries[1] = (run, make_result(run, "fail", message=huge, reason="x" * 100_000))
    page = render_html(inp)
    assert len(page) < 150_000
    assert "more characters]" in page


def test_html_comparison_section(tmp_path):
    cur = sample_input(tmp_path, hostile=False)
    prev_entries = [(run, make_result(run, "pass")) for run, _ in cur.entries]
    prev = ReportInput("Last night", tmp_path, "2025-05-31", "local", prev_entries)
    page = render_html(cur, comparison=compare(cur, prev))
    assert 'id="comparison"' in page and 'id="cmp-new_failures"' in page
    # New failures are marked in the matrix.
    assert re.search(r'class="r s-fail new"', page)


# --- JUnit ------------------------------------------------------------------------------------


def test_junit_parses_and_counts(tmp_path):
    inp = sample_input(tmp_path)
    paths = write_all(inp)
    root = ET.parse(paths["junit"]).getroot()  # parses: control characters are gone
    suites = root.findall("testsuite")
    assert len(suites) == len(inp.entries)
    by_status = {}
    for s in suites:
        props = {p.get("name"): p.get("value") for p in s.iter("property")}
        by_status.setdefault(props["status"], s)
        cases = s.findall("testcase")
        assert int(s.get("tests")) == len(cases)
        assert int(s.get("failures")) == sum(c.find("failure") is not None for c in cases)
        assert int(s.get("errors")) == sum(c.find("error") is not None for c in cases)
        assert int(s.get("skipped")) == sum(c.find("skipped") is not None for c in cases)
    assert set(by_status) == set(STATUS_ORDER)
    assert int(root.get("tests")) == sum(int(s.get("tests")) for s in suites)

    def outcome(status):
        s = by_status[status]
        return [
            (c.get("name"), next((ch.tag for ch in c if ch.tag != "system-out"), "ok"))
            for c in s.findall("testcase")
        ]

    assert by_status["pass"].get("name") == "rocky_8.x86_64 / 24; osg / Compute Entrypoint (Condor)"
    assert outcome("pass") == [("run", "ok")]
    assert outcome("fail") == [
        ("test_04_trace", "failure"),
        ("test_07_rfc_voms_proxy_info", "skipped"),
    ]
    assert outcome("install") == [("test_03_install_packages", "failure")]
    assert outcome("ignore") == [("test_05_pbs_trace", "skipped")]
    assert outcome("timeout") == [("run", "error")]
    assert outcome("died") == [("run", "error")]
    assert outcome("pending") == [("run", "skipped")]
    failure = by_status["fail"].find("testcase/failure")
    assert failure.get("message").startswith('<script>alert("x")</script>')
    assert "\x00" not in failure.text and "\x1b" not in failure.text
    # Classnames carry the run identity, so two runs' testcases never collide.
    names = [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]
    assert len(names) == len(set(names))


def test_junit_bad_skip_only_fail_gets_a_verdict_case(tmp_path):
    run = make_run("0001", "p", "s", "k")
    res = RunResult(
        "0001", "fail", reason="bad skips", problems=[Problem("m", "t", "C", "SKIP", "no reason")]
    )
    suite = junit_tree(ReportInput("t", tmp_path, "", "local", [(run, res)])).find("testsuite")
    assert suite.get("failures") == "1" and suite.get("skipped") == "1"


# --- JSON ---------------------------------------------------------------------------------------


def test_json_contract(tmp_path):
    inp = sample_input(tmp_path)
    data = json.loads(write_all(inp)["json"].read_text())
    assert len(data["runs"]) == len(inp.entries)
    for r in data["runs"]:
        assert set(r) >= CONTRACT_RUN_KEYS
        assert set(r["tests"]) == {"ok", "fail", "error", "skip"}
    statuses = {r["status"] for r in data["runs"]}
    assert statuses == set(STATUS_ORDER)
    pending = next(r for r in data["runs"] if r["status"] == "pending")
    assert pending["duration_s"] is None
    fail = next(r for r in data["runs"] if r["status"] == "fail")
    assert fail["tests"] == {"ok": 40, "fail": 1, "error": 0, "skip": 3}
    assert fail["log_dir"] == f"runs/{fail['id']}"
    assert fail["problems"][0]["kind"] == "FAIL"
    assert "\x00" not in fail["reason"] and fail["reason"].startswith("<script>")
    assert data["summary"]["total"] == len(inp.entries)
    # 11 runs over 9 states: pass and fail come round twice.
    assert {s: data["summary"][s] for s in STATUS_ORDER} == {
        s: 2 if s in ("pass", "fail") else 1 for s in STATUS_ORDER
    }
    assert data["summary"]["passed"] == 3
    assert data["generated"] == "2025-06-01T05:00:00"


def test_json_round_trip(tmp_path):
    inp = sample_input(tmp_path, hostile=False)
    path = write_all(inp)["json"]
    back = read_json(path)
    assert [r.key for r, _ in back.entries] == [r.key for r, _ in inp.entries]
    assert to_json(back)["runs"] == to_json(inp)["runs"]
    assert {r.boot for _, r in back.entries if r} == {"restored from snapshot 0123456789abcdef"}
    cmp = compare(inp, back)
    assert cmp.unchanged_passing == 3  # pass (twice) and ignore
    assert len(cmp.still_failing) == 7 and not cmp.new_failures and not cmp.fixed


# --- comparison -------------------------------------------------------------------------------


def test_compare_buckets(tmp_path):
    def inp(states: dict[str, str | None]) -> ReportInput:
        entries = []
        for i, (name, state) in enumerate(states.items(), 1):
            run = make_run(f"{i:04d}", "el9", "osg", name)
            entries.append((run, None if state is None else make_result(run, state)))
        return ReportInput("x", tmp_path, "", "local", entries)

    previous = inp(
        {
            "a": "pass",
            "b": "fail",
            "c": "fail",
            "d": "pass",
            "gone": "fail",
            "p": "fail",
            "i": "ignore",
            "t": "install",
        }
    )
    current = inp(
        {
            "a": "fail",
            "b": "pass",
            "c": "fail",
            "d": "pass",
            "new": "died",
            "p": None,
            "i": "timeout",
            "t": "fail",
        }
    )
    cmp = compare(current, previous)

    def keys(bucket):
        return sorted(c.key[2] for c in bucket)

    assert keys(cmp.new_failures) == ["a", "i"]
    assert keys(cmp.fixed) == ["b"]
    assert keys(cmp.still_failing) == ["c", "t"]
    assert keys(cmp.new_runs) == ["new"]
    assert keys(cmp.gone_runs) == ["gone"]
    assert keys(cmp.not_compared) == ["p"]
    assert cmp.unchanged_passing == 1
    t = next(c for c in cmp.still_failing if c.key[2] == "t")
    assert (t.previous_status, t.status) == ("install", "fail")
    assert t.new_problems == (
        "test_55_condorce|test_04_trace|TestCondorCE|FAIL",
        "test_50_voms|test_07_rfc_voms_proxy_info|TestVOMS|SKIP",
    )
    assert t.fixed_problems == ("special_install|test_03_install_packages|TestInstall|FAIL",)
    assert json.dumps(cmp.as_dict())  # serialisable, as results.json carries it


# --- terminal ---------------------------------------------------------------------------------


def test_terminal_summary(tmp_path):
    inp = sample_input(tmp_path)
    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system=None)
    prev = ReportInput(
        "Last night",
        tmp_path,
        "2025-05-31",
        "local",
        [(run, make_result(run, "pass")) for run, _ in inp.entries],
    )
    render_terminal(inp, console, comparison=compare(inp, prev))
    out = buf.getvalue()
    header = next(line for line in out.splitlines() if " pass " in f" {line} ")
    for status in STATUS_ORDER:
        assert status in header
    assert re.search(r"rocky_8\.x86_64\s+6\s", out)
    assert re.search(r"total\s+11\s+2\s+2(\s+1){7}\s*$", out, re.M)
    assert "Runs that did not pass: 7" in out
    assert '<script>alert("x")</script>' in out  # printed as text, not interpreted
    assert "runs/0002" in out
    assert "\x1b" not in out and "\x00" not in out
    assert "new failures" in out
    assert "3/11 passed, 1 not finished" in out


def test_terminal_limits_the_failure_list(tmp_path):
    entries = []
    for i in range(1, 61):
        run = make_run(f"{i:04d}", "el9", "osg", f"set {i}")
        entries.append((run, make_result(run, "fail")))
    buf = io.StringIO()
    render_terminal(
        ReportInput("t", tmp_path, "", "local", entries),
        Console(file=buf, width=160, color_system=None),
        limit=10,
    )
    assert "… and 50 more" in buf.getvalue()


# --- all together -------------------------------------------------------------------------------


def test_write_all_writes_three_files(tmp_path):
    paths = write_all(sample_input(tmp_path))
    assert {k: p.name for k, p in paths.items()} == {
        "html": "report.html",
        "junit": "junit.xml",
        "json": "results.json",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "junit.xml",
        "report.html",
        "results.json",
    ]


@pytest.mark.timeout(60)
def test_nightly_size_page(tmp_path):
    """1,564 runs (the OSG's nightly): every run in the page, and the page stays a few MB."""
    entries = []
    states = ["pass"] * 14 + ["fail", "ignore", "install", "timeout", "died", "cleanup"]
    for i in range(1564):
        run = make_run(
            f"{i + 1:04d}",
            f"platform_{i % 12}",
            f"source {i // 12 % 18}",
            f"package set {i // 216}",
        )
        entries.append(
            (
                run,
                make_result(
                    run, states[i % len(states)], message="Traceback:\n" + "  frame\n" * 200
                ),
            )
        )
    inp = ReportInput("OSG nightly", tmp_path, "", "local", entries)
    page = render_html(inp)
    assert page.count('class="r s-') == 1564
    assert len(page) < 4_000_000


def test_empty_and_odd_inputs(tmp_path):
    """No runs at all, a status no one knows, a per-test TIMEOUT problem: reports, no traceback."""
    empty = ReportInput("empty", tmp_path / "empty", "", "local", [])
    paths = write_all(empty)
    assert json.loads(paths["json"].read_text())["runs"] == []
    assert ET.parse(paths["junit"]).getroot().get("tests") == "0"
    render_terminal(empty, Console(file=io.StringIO()))

    run1, run2 = make_run("0001", "p", "s", "k1"), make_run("0002", "p", "s", "k2")
    odd = RunResult("0001", "weird", reason="?")
    slow = RunResult(
        "0002", "fail", problems=[Problem("m", "test_slow", "C", "TIMEOUT", "-", "alarm")]
    )
    inp = ReportInput("odd", tmp_path / "odd", "", "local", [(run1, odd), (run2, slow)])
    paths = write_all(inp)
    assert 'class="r s-unknown"' in paths["html"].read_text()
    assert json.loads(paths["json"].read_text())["summary"]["weird"] == 1
    suites = ET.parse(paths["junit"]).getroot().findall("testsuite")
    assert suites[1].find("testcase/error").get("type") == "TIMEOUT"
    buf = io.StringIO()
    render_terminal(inp, Console(file=buf, width=160, color_system=None))
    assert "weird" in buf.getvalue()


def test_terminal_prints_brackets_from_guests_and_specs_as_text(tmp_path):
    """Square brackets are rich markup only in our own strings: a spec title or label, a test
    name or a reason is printed as it is, whatever console it goes to."""
    run = make_run("0001", "plat [/]", "src [bold]x[/bold]", "[/a] set")
    result = make_result(
        run, "fail", reason="1 test failed: test_open[/a]", message="assert x[/] == 1"
    )
    prev_run = make_run("0001", "plat [/]", "src [bold]x[/bold]", "[/a] set")
    prev = ReportInput("last [/] night", tmp_path, "[red]", "local", [(prev_run, None)])
    inp = ReportInput("spec [/].yaml [red]", tmp_path, "", "local", [(run, result)])
    buf = io.StringIO()
    render_terminal(
        inp, Console(file=buf, width=250, color_system=None), comparison=compare(inp, prev)
    )
    out = buf.getvalue()
    for text in (
        "spec [/].yaml [red]",
        "plat [/]",
        "src [bold]x[/bold]",
        "[/a] set",
        "test_open[/a]",
        "last [/] night",
    ):
        assert text in out, text
