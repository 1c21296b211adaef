"""results.json: the machine-readable report (ARCHITECTURE.md's contract).

Contract (never renamed): {"runs": [{"id", "platform", "source", "package_set", "status",
"reason", "duration_s", "tests": {"ok", "fail", "error", "skip"}, "log_dir"}], ...}.
Everything else here is an addition. Pending runs have status "pending", duration_s null and
zero test counts. Messages are kept whole (JSON escapes anything); control characters go.

`read_json` turns such a file back into a ReportInput, so a comparison with an older run folder
needs nothing but its results.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from vmharness.report import (
    PENDING,
    STATUS_ORDER,
    ReportInput,
    atomic_write,
    clean,
    now_iso,
    status_of,
    summarize,
)
from vmharness.report.compare import Comparison
from vmharness.results.model import Problem, RunResult, TestCounts
from vmharness.spec import PackageSet, Platform, Run, Source, TestSettings, VMSettings

FORMAT_VERSION = 1


def _run_dict(run: Run, result: RunResult | None) -> dict:
    status = status_of(result)
    if result is None:
        result = RunResult(run_id=run.id, status=PENDING)
        duration: float | None = None
    else:
        duration = round(float(result.duration_s), 3)
    return {
        # The contract's fields.
        "id": run.id,
        "platform": run.platform.name,
        "source": run.source.label,
        "package_set": run.package_set.label,
        "status": status,
        "reason": clean(result.reason),
        "duration_s": duration,
        "tests": result.counts.as_dict(),
        "log_dir": result.log_dir,
        # Additions.
        "problems": [
            {
                "module": clean(p.module),
                "test": clean(p.test),
                "cls": clean(p.cls),
                "kind": clean(p.kind),
                "reason": clean(p.reason),
                "message": clean(p.message),
            }
            for p in result.problems
        ],
        "accelerator": clean(result.accelerator),
        "boot": clean(result.boot),
        "host": clean(result.host),
        "attempt": result.attempt,
        "exit_code": result.exit_code,
        "phases": {clean(k): v for k, v in result.phases.items()},
        "versions": {clean(k): clean(v) for k, v in result.versions.items()},
        "hold_reason": clean(result.hold_reason),
        "packages": list(run.package_set.packages),
        "repos": list(run.source.repos),
        "upgrade_to": list(run.source.upgrade_to),
    }


def to_json(inp: ReportInput, *, comparison: Comparison | None = None) -> dict:
    summary = summarize(inp.entries)
    data: dict = {
        "format_version": FORMAT_VERSION,
        "title": inp.title,
        "run_dir": str(inp.run_dir),
        "started": inp.started,
        "generated": inp.generated or now_iso(),
        "backend": inp.backend,
        "summary": {
            "total": summary.total,
            "passed": summary.passed,
            "finished": summary.finished,
            **{s: summary.counts.get(s, 0) for s in STATUS_ORDER},
            **{s: n for s, n in summary.counts.items() if s not in STATUS_ORDER},
        },
        "runs": [_run_dict(run, result) for run, result in inp.entries],
    }
    if comparison is not None:
        data["comparison"] = comparison.as_dict()
    return data


def write_json(inp: ReportInput, path: Path, *, comparison: Comparison | None = None) -> Path:
    text = json.dumps(to_json(inp, comparison=comparison), indent=1, ensure_ascii=False)
    return atomic_write(Path(path), text + "\n")


def read_json(path: Path) -> ReportInput:
    """A ReportInput rebuilt from a results.json (runs carry labels, packages and repos only)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    entries: list[tuple[Run, RunResult | None]] = []
    for r in data.get("runs", []):
        run = Run(
            id=str(r["id"]),
            platform=Platform(name=r["platform"]),
            source=Source(
                label=r["source"],
                repos=tuple(r.get("repos", ())),
                upgrade_to=tuple(r.get("upgrade_to", ())),
            ),
            package_set=PackageSet(label=r["package_set"], packages=tuple(r.get("packages", ()))),
            test=TestSettings(),
            vm=VMSettings(),
        )
        result: RunResult | None = None
        if r.get("status", PENDING) != PENDING:
            tests = r.get("tests") or {}
            result = RunResult(
                run_id=run.id,
                status=r["status"],
                reason=r.get("reason", ""),
                duration_s=float(r.get("duration_s") or 0.0),
                counts=TestCounts(
                    **{k: int(tests.get(k, 0)) for k in ("ok", "fail", "error", "skip")}
                ),
                problems=[
                    Problem(
                        module=p.get("module", ""),
                        test=p.get("test", ""),
                        cls=p.get("cls", ""),
                        kind=p.get("kind", ""),
                        reason=p.get("reason", "-"),
                        message=p.get("message", ""),
                    )
                    for p in r.get("problems", [])
                ],
                accelerator=r.get("accelerator", ""),
                boot=r.get("boot", ""),
                host=r.get("host", ""),
                attempt=int(r.get("attempt", 1)),
                log_dir=r.get("log_dir", ""),
                exit_code=r.get("exit_code"),
                phases=dict(r.get("phases", {})),
                versions=dict(r.get("versions", {})),
                hold_reason=r.get("hold_reason", ""),
            )
        entries.append((run, result))
    return ReportInput(
        title=data.get("title", ""),
        run_dir=Path(path).resolve().parent,  # where it is now, not where it was made
        started=data.get("started", ""),
        backend=data.get("backend", ""),
        entries=entries,
        generated=data.get("generated", ""),
    )
