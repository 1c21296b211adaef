"""The run folder: where one matrix's runs, database, logs and reports live.

    RUNDIR/state.sqlite          runs, attempts, verdicts (see state.py)
    RUNDIR/runs/<id>/            each run's logs (see engine/attempt.py)
    RUNDIR/report.html, junit.xml, results.json
    RUNDIR/vmharness.lock        who works on the folder now (see FolderLock)

Owns creating and reopening it, and rebuilding its reports from the database alone; the
engines (engine/local.py, condor/) fill it. One vmharness at a time runs, resumes, reruns or
reports a folder: a second one would redo the runs in flight and delete their disks.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import platform as host_platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from . import __version__
from .errors import InfraError, SpecError, UsageError
from .hosts import DenyList
from .report import ReportInput, compare, infra_by_host, render_terminal, write_all
from .report.jsonout import read_json
from .results.model import PASSING, RunResult
from .spec import KnownFailure, Run, Spec
from .state import (
    DB_NAME,
    RunDB,
    known_failures_from_json,
    known_failures_to_json,
    require_run_folder,
)

LOCK_NAME = "vmharness.lock"


class FolderLock:
    """One vmharness at a time on a run folder: an exclusive flock(2) on RUNDIR/vmharness.lock,
    held while this process keeps the file open. The kernel drops it when the process ends,
    however it ends (kill -9 included), so a stale lock file is never in the way; flock also
    works between the machines of an NFS share. The file says who holds it (pid, host,
    command, since), for the error the next one gets."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, folder: Path) -> FolderLock:
        path = folder / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise InfraError(
                f"cannot lock the run folder {folder}: {exc}",
                hint="vmharness writes its reports and logs there: make the folder writable",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UsageError(
                f"{folder} is in use by another vmharness: {holder}",
                hint="wait for it to end, or stop it (Ctrl-C where it runs, or `kill PID`: "
                f"its runs in flight are kept for `vmharness resume {folder}`)",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        about = {
            "pid": os.getpid(),
            "host": host_platform.node(),
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "since": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(about) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def _holder(fd: int) -> str:
    try:
        about = json.loads(os.pread(fd, 4096, 0).decode(errors="replace"))
        return (
            f"pid {about['pid']} on {about['host']}, `{about['command']}`, since {about['since']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet (it has only just started)"


@dataclass
class RunFolder:
    path: Path
    db: RunDB
    lock: FolderLock | None = None

    @classmethod
    def create(
        cls,
        spec: Spec,
        runs: list[Run],
        out: Path | None,
        *,
        backend: str,
        exclusive: bool = False,
    ) -> RunFolder:
        """A new run folder; `exclusive`: locked for this process until `close` (or its end)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = out or Path("runs") / f"{stamp}-{spec.path.stem}"
        if (path / DB_NAME).exists():
            raise SpecError(
                f"{path} already holds a run",
                hint=f"use `vmharness resume {path}` or choose another --out",
            )
        path.mkdir(parents=True, exist_ok=True)
        lock = FolderLock.take(path) if exclusive else None
        if (path / DB_NAME).exists():  # made by another vmharness just now
            if lock:
                lock.release()
            raise SpecError(
                f"{path} already holds a run",
                hint=f"use `vmharness resume {path}` or choose another --out",
            )
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
        return cls(path=path, db=db, lock=lock)

    @classmethod
    def open(cls, path: Path, *, exclusive: bool = False) -> RunFolder:
        """An existing run folder, its database checked whole. `exclusive` (run, resume,
        rerun, report): locked for this process until `close`, or refused if another
        vmharness holds it; taken before the database is read."""
        require_run_folder(path)  # said before anything is made in the folder
        lock = FolderLock.take(path) if exclusive else None
        try:
            return cls(path=path, db=RunDB.open_existing(path), lock=lock)
        except BaseException:
            if lock:
                lock.release()
            raise

    def close(self) -> None:
        self.db.close()
        if self.lock:
            self.lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def known_failures(self) -> list[KnownFailure]:
        """The spec's known failures, as they were when the folder was made."""
        return known_failures_from_json(self.db.meta().get("known_failures", []))

    def report_input(self) -> ReportInput:
        with self.db.snapshot():  # POST scripts may be finishing runs meanwhile
            meta = self.db.meta()
            results = self.db.results()
            states = self.db.states()
            runs = self.db.runs()
            attempts = self.db.all_attempts()
        entries: list[tuple[Run, RunResult | None]] = []
        for run in runs:
            done = states.get(run.id, ("pending", 0))[0] == "done"
            entries.append((run, results.get(run.id) if done else None))
        return ReportInput(
            title=meta.get("title", "vmharness"),
            run_dir=self.path,
            started=meta.get("started", ""),
            backend=meta.get("backend", "local"),
            entries=entries,
            infra_by_host=infra_by_host(attempts, self._denied_hosts(meta)),
        )

    def _denied_hosts(self, meta: dict) -> dict[str, str]:
        """host -> why, from the deny-list a pool submit kept (meta condor.hosts_file)."""
        path = (meta.get("condor") or {}).get("hosts_file") if isinstance(meta, dict) else None
        if not path:
            return {}
        try:
            deny = DenyList.read(Path(path))
        except Exception:  # noqa: BLE001 - a report never fails on the list
            return {}
        now = time.time()
        return {e.host: e.reason for e in deny.entries() if e.state(now) == "denied"}

    def write_reports(
        self, console: Console | None, previous: ReportInput | None = None, *, show: bool = True
    ) -> dict[str, Path]:
        """Every report from the database; `previous` (see read_previous) to compare with."""
        inp = self.report_input()
        paths = write_all(inp, previous=previous)
        if show:
            comparison = compare(inp, previous) if previous is not None else None
            render_terminal(inp, console, comparison=comparison)
        return paths

    def all_passed(self) -> bool:
        states = self.db.states()
        results = self.db.results()
        return all(
            states[r][0] == "done" and r in results and results[r].status in PASSING for r in states
        )


def read_previous(previous: Path) -> ReportInput:
    """The results of an earlier run folder to compare with, read before anything is run or
    written: a `--previous` that cannot be read stops the command at its start."""
    prev_json = previous / "results.json"
    hint = (
        "give a run folder that finished with reports; `vmharness report "
        f"{previous}` writes its results.json again from its database"
    )
    if not prev_json.is_file():
        raise UsageError(f"{previous} has no results.json to compare with", hint=hint)
    try:
        return read_json(prev_json)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(
            f"--previous: {prev_json} cannot be read ({type(exc).__name__}: {str(exc)[:200]})",
            hint=hint,
        ) from exc
