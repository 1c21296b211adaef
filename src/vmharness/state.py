"""The run database: one SQLite file per run folder holding every run, attempt and verdict.

It is the single source of truth for resume (after a kill -9 or a reboot), reruns and reports:
a run whose verdict is stored is never run again unless asked; a run that was `running` when
vmharness died is run again, and its interrupted attempt is recorded.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from .errors import InfraError, UsageError, VmharnessError
from .results.model import RunResult
from .spec import KnownFailure, Run
from .wire.codec import WireError, decode, dumps, encode, from_text, loads, to_text
from .wire.formats import RESULT, RUN

DB_NAME = "state.sqlite"
SCHEMA_VERSION = 1
PENDING, RUNNING, DONE = "pending", "running", "done"
STATES = (PENDING, RUNNING, DONE)
TABLES = ("meta", "runs", "attempts")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    run_json TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending | running | done
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT,                    -- the verdict once done
    result_json TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT,                    -- verdict, or 'interrupted'
    reason TEXT,
    host TEXT,
    not_the_hosts TEXT,             -- a death the execute host did not cause: why
    PRIMARY KEY (run_id, attempt)
);
"""
# Columns added after the first release: (table, column, type); older folders get them at open.
_ADDED_COLUMNS = (("attempts", "not_the_hosts", "TEXT"),)


class DamagedRunDB(UsageError):
    """A run database that cannot be trusted: empty, not SQLite, cut short, or with a row
    vmharness cannot read. Exit 2, before anything in the folder is written."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"the run database {path} {problem}",
            hint=f"vmharness stopped without writing anything more into {path.parent}. If a "
            f"copy of {DB_NAME} exists (a backup), put it back; otherwise run the spec again "
            "into a new folder "
            "(`vmharness run SPEC --out NEW_RUNDIR`); the old logs under "
            f"{path.parent / 'runs'} stay readable",
        )


class RunDB:
    def __init__(self, run_dir: Path, *, create: bool = True) -> None:
        self.path = run_dir / DB_NAME
        self.conn = sqlite3.connect(
            self.path, timeout=60, isolation_level=None, check_same_thread=False
        )
        # One connection shared by the scheduler's threads: one statement or transaction at
        # a time (other processes are kept in order by SQLite's own locking).
        self._lock = threading.RLock()
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            if create:
                self.conn.executescript(_SCHEMA)
            self._add_new_columns()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise self._error(exc) from exc

    def _add_new_columns(self) -> None:
        """A folder made by an older vmharness gets the columns this one writes."""
        for table, column, kind in _ADDED_COLUMNS:
            have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            if have and column not in have:
                try:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as exc:
                    if "duplicate column" not in str(exc):  # another process added it first
                        raise

    @classmethod
    def open_existing(cls, run_dir: Path) -> RunDB:
        """The database of a run folder made by `vmharness run` or `submit`, checked whole
        (SQLite's own check, the tables, and every row read once) before anything uses it:
        a damaged one is refused with DamagedRunDB instead of being taken for an empty run."""
        path = require_run_folder(run_dir)
        if path.stat().st_size == 0 and not path.with_name(f"{DB_NAME}-wal").is_file():
            raise DamagedRunDB(path, "is empty (0 bytes): it holds no runs")
        _check_database(path)
        db = cls(run_dir, create=False)
        try:
            db.check_rows()
        except BaseException:
            db.close()
            raise
        return db

    def check_rows(self) -> None:
        """Every row read as vmharness reads it; DamagedRunDB names the first bad one."""
        # One snapshot: the DAG's POST scripts finish runs while another one opens the
        # folder, and a run finished between two of these reads would look damaged.
        with self.snapshot():
            self._check_rows()

    def _check_rows(self) -> None:
        meta = self.meta()
        if "backend" not in meta:
            raise DamagedRunDB(self.path, "has no record of how it was made (meta: backend)")
        runs = self.runs()
        if not runs:
            raise DamagedRunDB(
                self.path, "holds no runs (was vmharness stopped while making the folder?)"
            )
        results = self.results()
        ids = {run.id for run in runs}
        for run_id, (state, _attempts) in self.states().items():
            if state not in STATES:
                raise DamagedRunDB(self.path, f"has run {run_id} in an unknown state {state!r}")
            if state == DONE and run_id not in results:
                raise DamagedRunDB(self.path, f"has run {run_id} done but without its verdict")
            if run_id not in ids:
                raise DamagedRunDB(self.path, f"has run {run_id} without its description")

    def _error(self, exc: sqlite3.Error) -> VmharnessError:
        return _db_error(self.path, exc)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from exc

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one state of the database (a WAL read transaction), whatever
        other processes commit meanwhile."""
        with self._lock:
            try:
                self.conn.execute("BEGIN")
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from exc
            try:
                yield
            finally:
                self.conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from exc

    def _decode(self, run_id: str, column: str, text: str, read: Callable[[str], T]) -> T:
        """A stored JSON column back to what it was; a row that does not read is named."""
        try:
            return read(text)
        except (WireError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DamagedRunDB(
                self.path,
                f"has a row it cannot read: {column} of {run_id} "
                f"({type(exc).__name__}: {str(exc)[:200]})",
            ) from exc

    # -- meta -------------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.tx() as c:
            for k, v in values.items():
                c.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, dumps(encode(v), indent=None))
                )

    def meta(self) -> dict[str, Any]:
        return {
            k: self._decode(f"meta {k!r}", "the value", v, partial(loads, what=f"meta {k}"))
            for k, v in self._query("SELECT key, value FROM meta")
        }

    # -- runs -------------------------------------------------------------------------------
    def add_runs(self, runs: Iterable[Run]) -> None:
        now = time.time()
        with self.tx() as c:
            c.executemany(
                "INSERT OR IGNORE INTO runs (id, seq, run_json, state, updated) "
                "VALUES (?, ?, ?, ?, ?)",
                [(r.id, i, to_text(RUN, r), PENDING, now) for i, r in enumerate(runs)],
            )

    def runs(self) -> list[Run]:
        rows = self._query("SELECT id, run_json FROM runs ORDER BY seq")
        return [
            self._decode(f"run {i}", "run_json", j, partial(from_text, RUN, Run, what=i))
            for i, j in rows
        ]

    def states(self) -> dict[str, tuple[str, int]]:
        """run id -> (state, attempts so far)."""
        return {i: (s, a) for i, s, a in self._query("SELECT id, state, attempts FROM runs")}

    def results(self) -> dict[str, RunResult]:
        rows = self._query("SELECT id, result_json FROM runs WHERE result_json IS NOT NULL")
        return {
            i: self._decode(f"run {i}", "result_json", j, partial(_stored_result, i))
            for i, j in rows
        }

    def recover_interrupted(self) -> list[str]:
        """Runs left `running` by a vmharness that died: back to pending, attempt noted."""
        now = time.time()
        with self.tx() as c:
            ids = [i for (i,) in c.execute("SELECT id FROM runs WHERE state = ?", (RUNNING,))]
            for run_id in ids:
                c.execute(
                    "UPDATE attempts SET ended = ?, status = 'interrupted', "
                    "reason = 'vmharness stopped during the run' "
                    "WHERE run_id = ? AND ended IS NULL",
                    (now, run_id),
                )
                # It stays recorded; only `died` attempts count against the retry budget.
                c.execute(
                    "UPDATE runs SET state = ?, updated = ? WHERE id = ?", (PENDING, now, run_id)
                )
        return ids

    def start_attempt(self, run_id: str, host: str = "") -> int:
        now = time.time()
        with self.tx() as c:
            (attempts,) = c.execute("SELECT attempts FROM runs WHERE id = ?", (run_id,)).fetchone()
            attempt = attempts + 1
            c.execute(
                "UPDATE runs SET state = ?, attempts = ?, updated = ? WHERE id = ?",
                (RUNNING, attempt, now, run_id),
            )
            c.execute(
                "INSERT INTO attempts (run_id, attempt, started, host) VALUES (?, ?, ?, ?)",
                (run_id, attempt, now, host),
            )
        return attempt

    def finish_attempt(self, result: RunResult, *, final: bool) -> None:
        """Record an attempt's verdict. final=False leaves the run pending for a retry."""
        now = time.time()
        with self.tx() as c:
            c.execute(
                "UPDATE attempts SET ended = ?, status = ?, reason = ?, host = ?, "
                "not_the_hosts = ? WHERE run_id = ? AND attempt = ?",
                (
                    now,
                    result.status,
                    result.reason,
                    result.host,
                    result.not_the_hosts,
                    result.run_id,
                    result.attempt,
                ),
            )
            c.execute(
                "UPDATE runs SET state = ?, status = ?, result_json = ?, updated = ? WHERE id = ?",
                (
                    "done" if final else PENDING,
                    result.status,
                    to_text(RESULT, result),
                    now,
                    result.run_id,
                ),
            )

    def reset(self, run_ids: Iterable[str]) -> None:
        """Make runs pending again on purpose (rerun); their old attempts stay recorded."""
        now = time.time()
        with self.tx() as c:
            for run_id in run_ids:
                c.execute(
                    "UPDATE runs SET state = ?, status = NULL, result_json = NULL, "
                    "updated = ? WHERE id = ?",
                    (PENDING, now, run_id),
                )

    def count_attempts(self, run_id: str, status: str) -> int:
        ((n,),) = self._query(
            "SELECT COUNT(*) FROM attempts WHERE run_id = ? AND status = ?", (run_id, status)
        )
        return n

    _ATTEMPT_COLUMNS = ("attempt", "started", "ended", "status", "reason", "host", "not_the_hosts")

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        cols = self._ATTEMPT_COLUMNS
        rows = self._query(
            f"SELECT {', '.join(cols)} FROM attempts WHERE run_id = ? ORDER BY attempt", (run_id,)
        )
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def all_attempts(self) -> list[tuple[str, dict[str, Any]]]:
        """(run id, attempt) of every run, in the matrix's order: one query for the reports."""
        cols = self._ATTEMPT_COLUMNS
        rows = self._query(
            f"SELECT a.run_id, {', '.join('a.' + c for c in cols)} FROM attempts a "
            "JOIN runs r ON r.id = a.run_id ORDER BY r.seq, a.attempt"
        )
        return [(row[0], dict(zip(cols, row[1:], strict=True))) for row in rows]


def require_run_folder(run_dir: Path) -> Path:
    """The path of `run_dir`'s database; UsageError if it has none (not a run folder)."""
    path = run_dir / DB_NAME
    if not path.is_file():
        raise UsageError(
            f"{run_dir} is not a vmharness run folder (no {DB_NAME})",
            hint="give the folder that `vmharness run` or `submit` printed",
        )
    return path


def _check_database(path: Path) -> None:
    """SQLite's own check of the whole file (it reads every page) and vmharness's tables;
    reads only."""
    try:
        conn = sqlite3.connect(path, timeout=60)
    except sqlite3.Error as exc:
        raise _db_error(path, exc) from exc
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    except sqlite3.DatabaseError as exc:
        raise _db_error(path, exc) from exc
    finally:
        conn.close()
    if problems != ["ok"]:
        raise DamagedRunDB(path, f"is damaged (SQLite: {'; '.join(problems[:3])})")
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise DamagedRunDB(
            path,
            "is not a vmharness run database: "
            + ("it has no tables" if not tables else f"no table {', '.join(missing)}"),
        )


def _db_error(path: Path, exc: sqlite3.Error) -> VmharnessError:
    """SQLite's error as one the user can act on: a damaged file (exit 2), or one that
    cannot be used now (locked, read-only, disk full: exit 3)."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "malformed" not in text:
        return InfraError(
            f"the run database {path} cannot be used: {text}",
            hint="is its disk full or read-only, or is another program holding it?",
        )
    if "not a database" in text:
        return DamagedRunDB(path, f"is not a vmharness run database (SQLite: {text})")
    return DamagedRunDB(path, f"is damaged (SQLite: {text})")


# -- rows (their format: wire/formats.py) ------------------------------------------------------
def _stored_result(run_id: str, text: str) -> RunResult:
    """A stored verdict. One whose JSON reads but breaks the format's rules (NaN written by an
    older vmharness) is shown as what it is rather than stopping every report; one that is not
    a JSON object at all is a damaged row (WireError, which the caller names)."""
    try:
        return from_text(RESULT, RunResult, text, what=f"its stored verdict ({DB_NAME})")
    except WireError as exc:
        try:
            lenient = json.loads(text)  # Python's reader takes NaN and Infinity
        except ValueError:
            raise exc from None
        if not isinstance(lenient, dict):
            raise
        return RunResult(run_id=run_id, status="died", reason=str(exc))


def known_failures_to_json(kfs: list[KnownFailure]) -> list[dict[str, str]]:
    return encode(list(kfs))


def known_failures_from_json(items: list[dict[str, str]]) -> list[KnownFailure]:
    return decode(list[KnownFailure], items)
