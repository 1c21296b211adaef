"""Parser for JUnit XML results (pytest, Maven Surefire, ctest, go-junit-report, ...).

The file comes from an untrusted guest. It is parsed with expat straight into an ElementTree
(no network, no external entities) and any DOCTYPE or entity declaration is refused outright, so
"billion laughs" style entity expansion cannot happen whatever the expat version.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

from vmharness.results.errors import ResultFormatError
from vmharness.results.model import ParsedLog, Problem, TestCase, TestCounts
from vmharness.results.text import cap_message

_ROOTS = ("testsuites", "testsuite")


def parse_junit(data: bytes | str) -> ParsedLog:
    """Read JUnit XML. Raises ResultFormatError for anything that is not well-formed JUnit XML."""
    root = _parse_xml(data)
    tag = _local(root.tag)
    if tag not in _ROOTS:
        raise ResultFormatError(
            f"not JUnit XML: the root element is <{tag}>, expected <testsuites> or <testsuite>"
        )
    parsed = ParsedLog(format="junit")
    counts = TestCounts()
    for case in root.iter():
        if _local(case.tag) != "testcase":
            continue
        test, problems = _case(case)
        parsed.tests.append(test)
        parsed.problems.extend(problems)
        if test.outcome == "ok":
            counts.ok += 1
        elif test.outcome == "fail":
            counts.fail += 1
        elif test.outcome == "error":
            counts.error += 1
        else:
            counts.skip += 1
    parsed.counts = counts
    if not parsed.tests:
        parsed.note = "no <testcase> in the JUnit XML"
    return parsed


def split_classname(classname: str) -> tuple[str, str]:
    """'tests.test_web.TestLogin' -> ('tests.test_web', 'TestLogin'); 'tests.test_web' -> (it, '').

    A last part that starts with a capital letter is taken as the class (pytest, Java, unittest).
    """
    parts = [p for p in classname.replace("::", ".").split(".") if p]
    if len(parts) >= 2 and parts[-1][:1].isupper():
        return ".".join(parts[:-1]), parts[-1]
    if len(parts) == 1 and parts[0][:1].isupper():
        return "", parts[0]
    return ".".join(parts), ""


def _case(case: ET.Element) -> tuple[TestCase, list[Problem]]:
    name = (case.get("name") or "").strip() or "(unnamed)"
    module, cls = split_classname((case.get("classname") or case.get("class") or "").strip())
    outcome = "ok"
    message = ""
    problems: list[Problem] = []
    skipped = False
    for child in case:
        kind = _local(child.tag)
        if kind in ("failure", "error"):
            text = _message(child)
            problems.append(
                Problem(module, name, cls, "FAIL" if kind == "failure" else "ERROR", "-", text)
            )
            if outcome != "fail":
                outcome = "fail" if kind == "failure" else "error"
            message = message or text
        elif kind == "skipped":
            skipped = True
            message = message or (child.get("message") or (child.text or "")).strip()
    if skipped and not problems:
        outcome = "skip"
    return TestCase(module, name, cls, outcome, cap_message(message)), problems


def _message(el: ET.Element) -> str:
    parts = []
    kind = (el.get("type") or "").strip()
    text = (el.get("message") or "").strip()
    head = ": ".join(p for p in (kind, text) if p)
    if head:
        parts.append(head)
    body = (el.text or "").strip()
    if body and body != head:
        parts.append(body)
    return cap_message("\n".join(parts))


def _local(tag: object) -> str:
    """Tag without its namespace: '{urn:x}testcase' -> 'testcase'."""
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _parse_xml(data: bytes | str) -> ET.Element:
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not data.strip():
        raise ResultFormatError("empty JUnit XML file")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()

    def refuse_doctype(*_args: object) -> None:
        raise ResultFormatError(
            "refusing JUnit XML with a DOCTYPE: entity declarations could expand without bound"
        )

    def refuse_entity(*_args: object) -> None:
        raise ResultFormatError("refusing JUnit XML with an entity declaration")

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    parser.ExternalEntityRefHandler = lambda *_a: 0  # never fetch anything (and fail if asked)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        where = f" at line {exc.lineno}, column {exc.offset + 1}" if exc.lineno else ""
        raise ResultFormatError(
            f"malformed JUnit XML{where}: {expat.ErrorString(exc.code)}"
        ) from None
    except RecursionError:
        raise ResultFormatError("malformed JUnit XML: nested too deeply") from None
    try:
        return builder.close()
    except (AssertionError, ET.ParseError) as exc:
        raise ResultFormatError(f"malformed JUnit XML: {exc or 'no root element'}") from None
