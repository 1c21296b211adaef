"""Reports: terminal summary, HTML matrix, JUnit XML, JSON, and comparison with a previous run.

Owns: turning finished (or partly finished) runs into things people and CI systems read. Input is a
`ReportInput`: the spec's `Run`s, each with its `RunResult` or None while it has not finished.
Nothing here reads the run database or logs; `vmharness report` builds the `ReportInput` and calls
`write_all`.

Every string that came from a guest (failure messages, reasons, versions, host names) is treated as
untrusted: control characters are stripped, lengths are capped for display, and the HTML is
rendered with autoescaping (and the page's script only ever uses textContent).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from vmharness.results.model import PASSING, STATUSES, RunResult
from vmharness.spec import Run

PENDING = "pending"
# Display order of statuses everywhere (tables, legend, totals).
STATUS_ORDER: tuple[str, ...] = (*STATUSES, PENDING)

# (background, text) colour per status, shared by the HTML page, its legend and the tests that
# check a screenshot. Chosen to be distinct hues; text colour keeps contrast on each.
STATUS_COLOURS: dict[str, tuple[str, str]] = {
    "pass": ("#2f9e44", "#ffffff"),
    "fail": ("#e03131", "#ffffff"),
    "install": ("#7048e8", "#ffffff"),
    "update": ("#f08c00", "#1a1a1a"),
    "cleanup": ("#fcc419", "#1a1a1a"),
    "ignore": ("#8ce99a", "#1a1a1a"),
    "timeout": ("#1971c2", "#ffffff"),
    "died": ("#343a40", "#ffffff"),
    PENDING: ("#ced4da", "#1a1a1a"),
}
UNKNOWN_COLOUR = ("#adb5bd", "#1a1a1a")

STATUS_DESCRIPTIONS: dict[str, str] = {
    "pass": "every test passed",
    "fail": "tests failed",
    "install": "installing the packages failed",
    "update": "upgrading the packages failed",
    "cleanup": "only the clean-up failed",
    "ignore": "only known failures (or clean-up)",
    "timeout": "the run hit its time limit",
    "died": "infrastructure: the VM or its agent did not finish",
    PENDING: "not finished yet",
}


@dataclass
class HostFailures:
    """The attempts that died on one execute host: (run id, attempt, reason) each."""

    host: str
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    runs_ok: int = 0  # attempts on it that reached a verdict
    denied: str = ""  # why it is on the deny-list now, if it is


def infra_by_host(
    attempts: Iterable[tuple[str, dict]], denied: dict[str, str]
) -> list[HostFailures]:
    """From (run id, attempt row) pairs: the hosts that had infrastructure failures. A death
    the host did not cause (the guest spoiled its output, a person removed the job) is not
    the host's, nor a success on it."""
    by: dict[str, HostFailures] = {}
    for run_id, a in attempts:
        host = a.get("host") or ""
        if not host or not a.get("status") or a.get("not_the_hosts"):
            continue
        h = by.setdefault(host, HostFailures(host=host, denied=denied.get(host, "")))
        if a["status"] == "died":
            h.failures.append((run_id, int(a.get("attempt") or 0), a.get("reason") or ""))
        else:
            h.runs_ok += 1
    return sorted((h for h in by.values() if h.failures), key=lambda h: (-len(h.failures), h.host))


@dataclass
class ReportInput:
    """Everything a report shows. Entries keep the matrix order; a None result means pending."""

    title: str
    run_dir: Path
    started: str
    backend: str
    entries: list[tuple[Run, RunResult | None]]
    generated: str = ""  # ISO time the report was made; empty: now
    # Every attempt that died on an execute host (retried ones too), for the "infrastructure
    # failures by execute host" section: one entry per host, most failures first.
    infra_by_host: list[HostFailures] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if not self.generated:
            self.generated = now_iso()


@dataclass
class Summary:
    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUS_ORDER, 0))

    @property
    def passed(self) -> int:
        return sum(self.counts.get(s, 0) for s in PASSING)

    @property
    def finished(self) -> int:
        return self.total - self.counts.get(PENDING, 0)


def now_iso() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="seconds")


def status_of(result: RunResult | None) -> str:
    return PENDING if result is None else (result.status or "died")


def is_failing(status: str) -> bool:
    """A finished run that did not pass (pending is neither passing nor failing)."""
    return status != PENDING and status not in PASSING


def summarize(entries: Iterable[tuple[Run, RunResult | None]]) -> Summary:
    summary = Summary()
    for _run, result in entries:
        status = status_of(result)
        summary.total += 1
        summary.counts[status] = summary.counts.get(status, 0) + 1
    return summary


def colours(status: str) -> tuple[str, str]:
    return STATUS_COLOURS.get(status, UNKNOWN_COLOUR)


# Characters that are not allowed in XML 1.0 / that make terminals and pages misbehave: C0
# controls except tab and newline, DEL and C1 controls, lone surrogates, U+FFFE/U+FFFF.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")


def clean(text: object, limit: int | None = None) -> str:
    """A display-safe string: ANSI sequences and control characters removed, CRLF -> LF, and at
    most `limit` characters (with a note saying how much was cut)."""
    if text is None:
        return ""
    s = text if isinstance(text, str) else str(text)
    if "\x1b" in s:
        s = _ANSI.sub("", s)
    if "\r" in s:
        s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _CONTROL.sub("", s)
    if limit is not None and len(s) > limit:
        cut = len(s) - limit
        s = f"{s[:limit]}… [{cut} more characters]"
    return s


def one_line(text: object, limit: int) -> str:
    """First non-empty line of `text`, cleaned and capped (for table cells and tooltips)."""
    s = clean(text)
    for line in s.splitlines():
        if line.strip():
            s = line.strip()
            break
    else:
        s = s.strip()
    return s if len(s) <= limit else s[: limit - 1] + "…"


def finite(seconds: float | None) -> float | None:
    """A number a report can show: None for NaN and infinities (and for None)."""
    return seconds if seconds is not None and math.isfinite(seconds) else None


def fmt_duration(seconds: float | None) -> str:
    seconds = finite(seconds)
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def run_label(run: Run, sep: str = " / ") -> str:
    return sep.join(run.key)


def log_href(run_dir: Path, run: Run, result: RunResult | None) -> str:
    """A link to the run's logs for a page that lives in run_dir: relative when the logs are
    inside run_dir (``runs/0007/``), a file:// URI otherwise, empty when there are none."""
    raw = result.log_dir if result is not None else ""
    if not raw:
        default = Path(run_dir) / "runs" / run.id
        if not default.is_dir():
            return ""
        raw = f"runs/{run.id}"
    path = Path(raw)
    if path.is_absolute():
        try:
            rel = path.relative_to(run_dir)
        except ValueError:
            return path.as_uri() + "/"
        path = rel
    rel_posix = path.as_posix().strip("/")
    if not rel_posix or rel_posix == ".":
        return "./"
    # Percent-quoting makes every character of a relative path safe in an href (no scheme).
    return quote(rel_posix, safe="/") + "/"


REPORT_FILES = {"html": "report.html", "junit": "junit.xml", "json": "results.json"}


def write_all(inp: ReportInput, *, previous: ReportInput | None = None) -> dict[str, Path]:
    """Write report.html, junit.xml and results.json into inp.run_dir; returns their paths by
    kind ("html", "junit", "json"). With `previous`, the page and the JSON carry a comparison."""
    from vmharness.report.compare import compare
    from vmharness.report.html import write_html
    from vmharness.report.jsonout import write_json
    from vmharness.report.junit import write_junit

    comparison = compare(inp, previous) if previous is not None else None
    out = inp.run_dir
    return {
        "html": write_html(inp, out / REPORT_FILES["html"], comparison=comparison),
        "junit": write_junit(inp, out / REPORT_FILES["junit"]),
        "json": write_json(inp, out / REPORT_FILES["json"], comparison=comparison),
    }


# Public API re-exported here; imported last because these modules import the helpers above.
from vmharness.report.compare import Change, Comparison, compare  # noqa: E402
from vmharness.report.html import render_html, write_html  # noqa: E402
from vmharness.report.jsonout import read_json, to_json, write_json  # noqa: E402
from vmharness.report.junit import junit_tree, write_junit  # noqa: E402
from vmharness.report.terminal import render_terminal  # noqa: E402

__all__ = [
    "PENDING",
    "REPORT_FILES",
    "STATUS_COLOURS",
    "STATUS_ORDER",
    "Change",
    "Comparison",
    "ReportInput",
    "Summary",
    "compare",
    "junit_tree",
    "read_json",
    "render_html",
    "render_terminal",
    "summarize",
    "to_json",
    "write_all",
    "write_html",
    "write_json",
    "write_junit",
]
