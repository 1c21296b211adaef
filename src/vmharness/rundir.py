"""The run folder: where one matrix's runs, database, logs and reports live.

    RUNDIR/state.sqlite          runs, attempts, verdicts (see state.py)
    RUNDIR/runs/<id>/            each run's logs (see engine/attempt.py)
    RUNDIR/report.html, junit.xml, results.json

Owns creating and reopening it, and rebuilding its reports from the database alone; the
engines (engine/local.py, condor/) fill it.
"""

from __future__ import annotations

import datetime as dt
import platform as host_platform
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from . import __version__
from .errors import SpecError
from .report import ReportInput, compare, render_terminal, write_all
from .report.jsonout import read_json
from .results.model import PASSING, RunResult
from .spec import KnownFailure, Run, Spec
from .state import RunDB, known_failures_from_json, known_failures_to_json


@dataclass
class RunFolder:
    path: Path
    db: RunDB

    @classmethod
    def create(cls, spec: Spec, runs: list[Run], out: Path | None, *, backend: str) -> RunFolder:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = out or Path("runs") / f"{stamp}-{spec.path.stem}"
        if (path / "state.sqlite").exists():
            raise SpecError(
                f"{path} already holds a run",
                hint=f"use `vmharness resume {path}` or choose another --out",
            )
        path.mkdir(parents=True, exist_ok=True)
        db = RunDB(path)
        db.set_meta(
            spec=str(spec.path.resolve()),
            title=f"vmharness: {spec.path.name}",
            started=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            backend=backend,
            vmharness=__version__,
            host=host_platform.node(),
            known_failures=known_failures_to_json(spec.known_failures),
        )
        db.add_runs(runs)
        return cls(path=path, db=db)

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        return cls(path=path, db=RunDB.open_existing(path))

    def known_failures(self) -> list[KnownFailure]:
        """The spec's known failures, as they were when the folder was made."""
        return known_failures_from_json(self.db.meta().get("known_failures", []))

    def report_input(self) -> ReportInput:
        meta = self.db.meta()
        results = self.db.results()
        states = self.db.states()
        entries: list[tuple[Run, RunResult | None]] = []
        for run in self.db.runs():
            done = states.get(run.id, ("pending", 0))[0] == "done"
            entries.append((run, results.get(run.id) if done else None))
        return ReportInput(
            title=meta.get("title", "vmharness"),
            run_dir=self.path,
            started=meta.get("started", ""),
            backend=meta.get("backend", "local"),
            entries=entries,
        )

    def write_reports(
        self, console: Console, previous: Path | None = None, *, show: bool = True
    ) -> dict[str, Path]:
        inp = self.report_input()
        prev = None
        if previous is not None:
            prev_json = previous / "results.json"
            if not prev_json.is_file():
                raise SpecError(
                    f"{previous} has no results.json to compare with",
                    hint="give a run folder that finished with reports",
                )
            prev = read_json(prev_json)
        paths = write_all(inp, previous=prev)
        if show:
            render_terminal(inp, console, comparison=compare(inp, prev) if prev else None)
        return paths

    def all_passed(self) -> bool:
        states = self.db.states()
        results = self.db.results()
        return all(states[r][0] == "done" and results[r].status in PASSING for r in states)
