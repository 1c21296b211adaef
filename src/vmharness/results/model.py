"""Plain data that crosses from results into state and reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Every status a run can end with. Order matters nowhere here; see classify for precedence.
STATUSES = ("pass", "fail", "install", "update", "cleanup", "ignore", "timeout", "died")
# Statuses that count as "passed" for the CLI's exit code.
PASSING = ("pass", "ignore")
# Infrastructure failures: retried automatically, never a test verdict.
INFRA = ("died",)


@dataclass(frozen=True)
class TestCase:
    module: str
    name: str
    cls: str = ""
    outcome: str = "ok"  # ok | fail | error | skip | badskip | timeout
    message: str = ""


@dataclass(frozen=True)
class Problem:
    """A failure, error or bad skip, in the OSG analyzer's terms."""

    module: str
    test: str
    cls: str
    kind: str  # FAIL | ERROR | SKIP | TIMEOUT (a single test's own timeout, osg-test)
    reason: str = "-"
    message: str = ""  # traceback or assertion text, for reports

    def __str__(self) -> str:
        return f"{self.module}|{self.test}|{self.cls}|{self.kind}|{self.reason}"


@dataclass
class TestCounts:
    ok: int = 0
    fail: int = 0
    error: int = 0
    skip: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class ParsedLog:
    """What a parser read from a test log."""

    format: str  # osg-test | junit | tap | exit-code
    tests: list[TestCase] = field(default_factory=list)
    counts: TestCounts = field(default_factory=TestCounts)
    problems: list[Problem] = field(default_factory=list)
    alarm: bool = False  # the suite's own timeout fired ("Caught alarm:")
    complete: bool = True  # the log has its closing summary
    note: str = ""
    timeout_test: str = ""  # with alarm: the test that was running, "test (module)", if known
    # Parsers keep at most results.text.MAX_TESTS tests and MAX_PROBLEMS problems of a run:
    # how many more were read (they are in `counts`), and the problems not kept, by kind.
    tests_more: int = 0
    problems_more: dict[str, int] = field(default_factory=dict)

    def failures_more(self) -> int:
        """Failures, errors and timeouts read but not kept in `problems`."""
        return sum(n for kind, n in self.problems_more.items() if kind != "SKIP")


@dataclass
class RunResult:
    """The verdict on one run, as stored in the run database and shown in reports."""

    run_id: str
    status: str
    reason: str = ""
    duration_s: float = 0.0
    counts: TestCounts = field(default_factory=TestCounts)
    problems: list[Problem] = field(default_factory=list)
    problems_more: int = 0  # problems the parser counted but did not keep (its caps)
    accelerator: str = ""
    boot: str = ""  # how the VM started: restored from a snapshot, or which way it booted
    host: str = ""
    attempt: int = 1
    log_dir: str = ""
    exit_code: int | None = None
    phases: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # e.g. guest kernel, package versions
    hold_reason: str = ""
    # For `died`: why it does not count against its execute host ("" = it does; hosts.py).
    # The guest spoiling what it sends back, or a person removing the job, is not the host's.
    not_the_hosts: str = ""
