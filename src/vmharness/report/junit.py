"""junit.xml for CI systems: one <testsuite> per run.

Per run (suite name "platform / source / package set"):
- one <testcase> per parsed problem (FAIL -> <failure>, ERROR -> <error>, SKIP (a bad skip) ->
  <skipped>; in an `ignore` run every problem is a known failure and shows as <skipped>);
- if the result carries the full list of parsed tests (a `tests` list of TestCase, should
  RunResult grow one), one <testcase> per test instead;
- a testcase named "run" carrying the run's verdict when no testcase above does: the only one for
  a run without parsed problems (passed, or failed with its reason), <error> for timeout and died,
  <skipped> for a run that has not finished.
Testcase classnames start with the run's identity so CI tools that key on classname + name (as
Jenkins does) keep the runs apart. Parsed counts go into <properties>.

The XML is valid whatever a guest wrote: characters XML 1.0 forbids are removed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from vmharness.report import PENDING, ReportInput, clean, finite, one_line, status_of
from vmharness.results.model import RunResult
from vmharness.spec import Run
from vmharness.wire.files import write_atomic

MAX_TEXT = 20_000  # characters of a failure's text in the XML
MAX_MESSAGE_ATTR = 300
# Besides the controls `clean` removes: anything XML 1.0 does not allow.
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def _x(text: object, limit: int | None = None) -> str:
    return _XML_BAD.sub("", clean(text, limit))


def _slug(text: str) -> str:
    return _SLUG.sub("_", text).strip("_") or "_"


def _failure_tag(status: str) -> str | None:
    if status in ("timeout", "died"):
        return "error"
    if status == PENDING:
        return "skipped"
    if status in ("pass", "ignore"):
        return None
    return "failure"


_OUTCOME_TAG = {
    "fail": "failure",
    "error": "error",
    "timeout": "error",
    "skip": "skipped",
    "badskip": "skipped",
}
_KIND_TAG = {"FAIL": "failure", "ERROR": "error", "TIMEOUT": "error", "SKIP": "skipped"}


def _seconds(result: RunResult | None) -> float:
    return (finite(result.duration_s) if result is not None else None) or 0.0


def _testcase(parent: ET.Element, classname: str, name: str, time: float = 0.0) -> ET.Element:
    return ET.SubElement(
        parent, "testcase", {"classname": _x(classname), "name": _x(name), "time": f"{time:.3f}"}
    )


def _outcome(case: ET.Element, tag: str, kind: str, message: str, text: str = "") -> None:
    el = ET.SubElement(case, tag, {"type": _x(kind), "message": _x(one_line(message, 300))})
    if text:
        el.text = _x(text, MAX_TEXT)


def _suite(run: Run, result: RunResult | None) -> ET.Element:
    status = status_of(result)
    base = ".".join(_slug(part) for part in run.key)
    suite = ET.Element("testsuite", {"name": _x(" / ".join(run.key))})
    if result is not None and result.host:
        suite.set("hostname", _x(result.host, 200))
    props = ET.SubElement(suite, "properties")

    def prop(name: str, value: object) -> None:
        ET.SubElement(props, "property", {"name": name, "value": _x(value, 2000)})

    prop("run_id", run.id)
    prop("status", status)
    if result is not None:
        values: tuple[tuple[str, object], ...] = (
            ("reason", result.reason),
            ("accelerator", result.accelerator),
            ("boot", result.boot),
            ("attempt", result.attempt),
            ("log_dir", result.log_dir),
            ("exit_code", "" if result.exit_code is None else result.exit_code),
            ("hold_reason", result.hold_reason),
        )
        for name, value in values:
            if value not in ("", None):
                prop(name, value)
        for k, v in result.counts.as_dict().items():
            prop(f"tests.{k}", v)
        for key, version in result.versions.items():
            prop(f"version.{_x(key, 100)}", version)

    carried = False  # does a testcase already carry the run's failure?
    tests = getattr(result, "tests", None) if result is not None else None
    if tests:
        for t in tests:
            cls = ".".join(p for p in (base, t.module, t.cls) if p)
            case = _testcase(suite, cls, t.name)
            tag = _OUTCOME_TAG.get(t.outcome)
            if status == "ignore" and tag in ("failure", "error"):
                _outcome(case, "skipped", "known failure", f"known failure: {t.message}")
            elif tag:
                _outcome(case, tag, t.outcome, t.message or t.outcome, t.message)
                carried |= tag in ("failure", "error")
    elif result is not None:
        for p in result.problems:
            cls = ".".join(part for part in (base, p.module, p.cls) if part)
            case = _testcase(suite, cls, p.test)
            tag = _KIND_TAG.get(p.kind.upper(), "failure")
            reason = "" if p.reason in ("", "-") else p.reason
            if status == "ignore":
                _outcome(
                    case,
                    "skipped",
                    "known failure",
                    f"known failure ({p.kind}): {reason or p.message}",
                )
            elif tag == "skipped":
                _outcome(case, tag, "badskip", f"bad skip: {reason or p.message}")
            else:
                _outcome(case, tag, p.kind, reason or p.message or p.kind, p.message)
                carried = True

    tag = _failure_tag(status)
    has_cases = suite.find("testcase") is not None
    if not has_cases or tag in ("error", "skipped") or (tag == "failure" and not carried):
        case = _testcase(suite, base, "run", _seconds(result))
        if tag == "skipped":
            _outcome(case, "skipped", PENDING, "run not finished")
        elif tag:
            reason = result.reason if result is not None else ""
            _outcome(case, tag, status, f"{status}: {reason}" if reason else status, reason)
        if result is not None and result.log_dir:
            out = ET.SubElement(case, "system-out")
            out.text = _x(f"logs: {result.log_dir}")

    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    suite.set("errors", str(sum(1 for c in cases if c.find("error") is not None)))
    suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
    suite.set("time", f"{_seconds(result):.3f}")
    return suite


def junit_tree(inp: ReportInput) -> ET.Element:
    root = ET.Element("testsuites", {"name": _x(inp.title)})
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    time = 0.0
    for run, result in inp.entries:
        suite = _suite(run, result)
        for k in totals:
            totals[k] += int(suite.get(k, "0"))
        time += float(suite.get("time", "0"))
        root.append(suite)
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{time:.3f}")
    if inp.started:
        root.set("timestamp", _x(inp.started))
    return root


def write_junit(inp: ReportInput, path: Path) -> Path:
    root = junit_tree(inp)
    ET.indent(root, space=" ")
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return write_atomic(Path(path), data + b"\n")
