"""Parser for JUnit XML results (pytest, Maven Surefire, ctest, go-junit-report, ...).

The file comes from an untrusted guest. It is read with expat a chunk at a time, and nothing is
built but what is kept of the run (no tree: a 60 MB file is not a 2 GB tree): each <testcase>
is turned into a TestCase and its problems as soon as it ends, failure texts are kept to their
head and tail while read, and at most MAX_TESTS test cases and MAX_PROBLEMS problems are kept
(the rest counted). No network, no external entities, and any DOCTYPE or entity declaration is
refused outright, so "billion laughs" style entity expansion cannot happen whatever the expat
version. Namespaces are ignored (``<ns:testsuite xmlns:ns=...>`` is a testsuite); the encoding
is expat's to find (UTF-8, UTF-16 with its BOM, or what the XML declaration says).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.parsers import expat

from vmharness.results.errors import ResultFormatError
from vmharness.results.model import ParsedLog, Problem, TestCase, TestCounts
from vmharness.results.text import CappedText, Kept

_ROOTS = ("testsuites", "testsuite")
_CHILDREN = ("failure", "error", "skipped")
# Bytes handed to expat at a time, and the text it gathers before handing it over.
CHUNK = 1 << 20
BUFFER = 1 << 16
# A <testcase> inside a <testcase> is read (as the element tree walk did), this many deep.
MAX_OPEN_CASES = 32


def parse_junit(data: bytes | str) -> ParsedLog:
    """Read JUnit XML. Raises ResultFormatError for anything that is not well-formed JUnit XML."""
    reader = _Reader()
    reader.read(data)
    parsed = reader.kept.into(ParsedLog(format="junit", counts=reader.counts))
    if not parsed.tests and not parsed.tests_more:
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


def _local(tag: str) -> str:
    """Tag without its namespace or prefix: '{urn:x}testcase', 'ns:testcase' -> 'testcase'."""
    return tag.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


@dataclass(slots=True)
class _Child:
    """A <failure>, <error> or <skipped> being read."""

    kind: str
    attrs: dict[str, str]
    depth: int
    text: CappedText = field(default_factory=CappedText)
    leading: bool = True  # no text but whitespace read yet
    has_child: bool = False  # text after a child element is not its text (as ElementTree)


@dataclass(slots=True)
class _Case:
    name: str
    module: str
    cls: str
    depth: int
    outcome: str = "ok"
    message: str = ""
    skipped: bool = False
    problems: list[Problem] = field(default_factory=list)


class _Reader:
    def __init__(self) -> None:
        self.kept = Kept()
        self.counts = TestCounts()
        self.depth = 0
        self.root: str | None = None
        self.cases: list[_Case] = []  # open <testcase> elements, innermost last
        self.deep_cases = 0  # open ones past MAX_OPEN_CASES, not read
        self.child: _Child | None = None
        self.parser = expat.ParserCreate()

    def read(self, data: bytes | str) -> None:
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not data or data.isspace():
            raise ResultFormatError("empty JUnit XML file")
        parser = self.parser
        if isinstance(data, str):
            # Already text: fed as UTF-8, whatever its XML declaration says.
            parser = self.parser = expat.ParserCreate(encoding="utf-8")
            if data.startswith("\ufeff"):
                data = data[1:]
        parser.StartDoctypeDeclHandler = _refuse_doctype
        parser.EntityDeclHandler = _refuse_entity
        parser.UnparsedEntityDeclHandler = _refuse_entity
        parser.ExternalEntityRefHandler = lambda *_a: 0  # never fetch anything (and fail if asked)
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.buffer_text = True
        parser.buffer_size = BUFFER
        try:
            n = len(data)
            for pos in range(0, n, CHUNK):
                piece = data[pos : pos + CHUNK]
                parser.Parse(piece.encode("utf-8") if isinstance(piece, str) else piece, False)
            parser.Parse(b"", True)
        except expat.ExpatError as exc:
            where = f" at line {exc.lineno}, column {exc.offset + 1}" if exc.lineno else ""
            raise ResultFormatError(
                f"malformed JUnit XML{where}: {expat.ErrorString(exc.code)}"
            ) from None
        except RecursionError:
            raise ResultFormatError("malformed JUnit XML: nested too deeply") from None
        if self.root is None:
            raise ResultFormatError("malformed JUnit XML: no root element")

    # -- expat handlers -------------------------------------------------------------------------

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        name = _local(tag)
        if self.root is None:
            self.root = name
            if name not in _ROOTS:
                raise ResultFormatError(
                    f"not JUnit XML: the root element is <{name}>, "
                    "expected <testsuites> or <testsuite>"
                )
        child = self.child
        if child is not None:
            child.has_child = True
        if name == "testcase":
            if len(self.cases) >= MAX_OPEN_CASES or self.deep_cases:
                self.deep_cases += 1
                return
            case_name = (attrs.get("name") or "").strip() or "(unnamed)"
            module, cls = split_classname(
                (attrs.get("classname") or attrs.get("class") or "").strip()
            )
            self.cases.append(_Case(case_name, module, cls, self.depth))
            return
        if (
            child is None
            and name in _CHILDREN
            and self.cases
            and not self.deep_cases
            and self.cases[-1].depth == self.depth - 1
        ):
            self.child = _Child(name, attrs, self.depth)
            self.parser.CharacterDataHandler = self._data

    def _data(self, text: str) -> None:
        child = self.child
        if child is None or child.has_child or self.depth != child.depth:
            return
        if child.leading:
            text = text.lstrip()
            if not text:
                return
            child.leading = False
        child.text.add(text)

    def _end(self, tag: str) -> None:
        depth = self.depth
        self.depth -= 1
        child = self.child
        if child is not None and child.depth == depth:
            self.child = None
            self.parser.CharacterDataHandler = None
            self._child_done(child)
            return
        if self.deep_cases and _local(tag) == "testcase":
            self.deep_cases -= 1
            return
        if self.cases and self.cases[-1].depth == depth:
            self._case_done(self.cases.pop())

    # -- what is kept ---------------------------------------------------------------------------

    def _child_done(self, child: _Child) -> None:
        case = self.cases[-1]
        if child.kind == "skipped":
            case.skipped = True
            if not case.message:
                text = (child.attrs.get("message") or "").strip() or child.text.value().strip()
                case.message = self.kept.message(text)
            return
        kind = (child.attrs.get("type") or "").strip()
        said = (child.attrs.get("message") or "").strip()
        head = ": ".join(p for p in (kind, said) if p)
        body = child.text.value().rstrip()
        text = "\n".join(p for p in (head, body if body != head else "") if p)
        # Past MAX_PROBLEMS a problem is only counted: its text is not kept, unless the test's.
        keep = self.kept.room_for_problem() or not case.message
        text = self.kept.message(text) if keep else ""
        problem_kind = "FAIL" if child.kind == "failure" else "ERROR"
        case.problems.append(Problem(case.module, case.name, case.cls, problem_kind, "-", text))
        if case.outcome != "fail":
            case.outcome = "fail" if child.kind == "failure" else "error"
        case.message = case.message or text

    def _case_done(self, case: _Case) -> None:
        outcome = case.outcome
        if case.skipped and not case.problems:
            outcome = "skip"
        for problem in case.problems:
            self.kept.problem(problem)
        c = self.counts
        if outcome == "ok":
            c.ok += 1
        elif outcome == "fail":
            c.fail += 1
        elif outcome == "error":
            c.error += 1
        else:
            c.skip += 1
        if self.kept.room_for_test():
            self.kept.test(TestCase(case.module, case.name, case.cls, outcome, case.message))
        else:
            self.kept.tests_more += 1


def _refuse_doctype(*_args: object) -> None:
    raise ResultFormatError(
        "refusing JUnit XML with a DOCTYPE: entity declarations could expand without bound"
    )


def _refuse_entity(*_args: object) -> None:
    raise ResultFormatError("refusing JUnit XML with an entity declaration")
