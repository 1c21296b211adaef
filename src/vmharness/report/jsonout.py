"""results.json: the machine-readable report (ARCHITECTURE.md's contract).

Contract (never renamed): {"runs": [{"id", "platform", "source", "package_set", "status",
"reason", "duration_s", "tests": {"ok", "fail", "error", "skip"}, "log_dir"}], ...}.
Everything else here is an addition. Pending runs have status "pending", duration_s null and
zero test counts. Messages are kept whole (JSON escapes anything); control characters go.

The file is a ResultsFile document of the wire codec (wire/formats.py RESULTS, version under
`format_version`); a number no JSON can carry (NaN, infinity) is written as null. `read_json`
turns such a file back into a ReportInput, so a comparison with an older run folder needs
nothing but its results.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmharness.report import (
    PENDING,
    STATUS_ORDER,
    ReportInput,
    clean,
    now_iso,
    status_of,
    summarize,
)
from vmharness.report.compare import Comparison
from vmharness.results.model import Problem, RunResult, TestCounts
from vmharness.spec import PackageSet, Platform, Run, Source, TestSettings, VMSettings
from vmharness.wire.codec import read_document, to_document, write_json_atomic
from vmharness.wire.formats import RESULTS


@dataclass
class ResultsRun:
    """One run in results.json."""

    # The contract's fields.
    id: str
    platform: str
    source: str
    package_set: str
    status: str = PENDING
    reason: str = ""
    duration_s: float | None = None  # None: pending
    tests: TestCounts = field(default_factory=TestCounts)
    log_dir: str = ""
    # Additions.
    problems: list[Problem] = field(default_factory=list)
    problems_more: int = 0  # counted by the parser beyond what it kept
    accelerator: str = ""
    boot: str = ""
    host: str = ""
    attempt: int = 1
    exit_code: int | None = None
    phases: dict[str, float | None] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    hold_reason: str = ""
    packages: tuple[str, ...] = ()
    repos: tuple[str, ...] = ()
    upgrade_to: tuple[str, ...] = ()


@dataclass
class ResultsFile:
    """results.json (its version, format_version, is added by the codec)."""

    title: str = ""
    run_dir: str = ""
    started: str = ""
    generated: str = ""
    backend: str = ""
    summary: dict[str, int] = field(default_factory=dict)
    runs: list[ResultsRun] = field(default_factory=list)
    comparison: dict[str, Any] | None = None  # present only with a comparison


def _results_run(run: Run, result: RunResult | None) -> ResultsRun:
    status = status_of(result)
    if result is None:
        result = RunResult(run_id=run.id, status=PENDING)
        duration: float | None = None
    else:
        duration = round(float(result.duration_s), 3)
    return ResultsRun(
        id=run.id,
        platform=run.platform.name,
        source=run.source.label,
        package_set=run.package_set.label,
        status=status,
        reason=clean(result.reason),
        duration_s=duration,
        tests=result.counts,
        log_dir=result.log_dir,
        problems=[
            Problem(
                module=clean(p.module),
                test=clean(p.test),
                cls=clean(p.cls),
                kind=clean(p.kind),
                reason=clean(p.reason),
                message=clean(p.message),
            )
            for p in result.problems
        ],
        problems_more=result.problems_more,
        accelerator=clean(result.accelerator),
        boot=clean(result.boot),
        host=clean(result.host),
        attempt=result.attempt,
        exit_code=result.exit_code,
        phases={clean(k): v for k, v in result.phases.items()},
        versions={clean(k): clean(v) for k, v in result.versions.items()},
        hold_reason=clean(result.hold_reason),
        packages=run.package_set.packages,
        repos=run.source.repos,
        upgrade_to=run.source.upgrade_to,
    )


def to_json(inp: ReportInput, *, comparison: Comparison | None = None) -> dict:
    summary = summarize(inp.entries)
    doc = ResultsFile(
        title=inp.title,
        run_dir=str(inp.run_dir),
        started=inp.started,
        generated=inp.generated or now_iso(),
        backend=inp.backend,
        summary={
            "total": summary.total,
            "passed": summary.passed,
            "finished": summary.finished,
            **{s: summary.counts.get(s, 0) for s in STATUS_ORDER},
            **{s: n for s, n in summary.counts.items() if s not in STATUS_ORDER},
        },
        runs=[_results_run(run, result) for run, result in inp.entries],
        comparison=comparison.as_dict() if comparison is not None else None,
    )
    data = to_document(RESULTS, doc, nonfinite_as_null=True)
    if comparison is None:
        del data["comparison"]
    return data


def write_json(inp: ReportInput, path: Path, *, comparison: Comparison | None = None) -> Path:
    return write_json_atomic(Path(path), to_json(inp, comparison=comparison))


def read_json(path: Path) -> ReportInput:
    """A ReportInput rebuilt from a results.json (runs carry labels, packages and repos only)."""
    doc = read_document(Path(path), RESULTS, ResultsFile)
    entries: list[tuple[Run, RunResult | None]] = []
    for r in doc.runs:
        run = Run(
            id=r.id,
            platform=Platform(name=r.platform),
            source=Source(label=r.source, repos=r.repos, upgrade_to=r.upgrade_to),
            package_set=PackageSet(label=r.package_set, packages=r.packages),
            test=TestSettings(),
            vm=VMSettings(),
        )
        result: RunResult | None = None
        if r.status != PENDING:
            result = RunResult(
                run_id=run.id,
                status=r.status,
                reason=r.reason,
                duration_s=r.duration_s or 0.0,
                counts=r.tests,
                problems=r.problems,
                problems_more=r.problems_more,
                accelerator=r.accelerator,
                boot=r.boot,
                host=r.host,
                attempt=r.attempt,
                log_dir=r.log_dir,
                exit_code=r.exit_code,
                phases={k: v for k, v in r.phases.items() if v is not None},
                versions=r.versions,
                hold_reason=r.hold_reason,
            )
        entries.append((run, result))
    return ReportInput(
        title=doc.title,
        run_dir=Path(path).resolve().parent,  # where it is now, not where it was made
        started=doc.started,
        backend=doc.backend,
        entries=entries,
        generated=doc.generated,
    )
