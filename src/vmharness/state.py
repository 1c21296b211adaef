"""The run database: one SQLite file per run folder holding every run, attempt and verdict.

It is the single source of truth for resume (after a kill -9 or a reboot), reruns and reports:
a run whose verdict is stored is never run again unless asked; a run that was `running` when
vmharness died is run again, and its interrupted attempt is recorded.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UsageError
from .results.model import RunResult
from .spec import KnownFailure, Run
from .wire.codec import WireError, decode, dumps, encode, from_text, loads, to_text
from .wire.formats import RESULT, RUN

DB_NAME = "state.sqlite"
SCHEMA_VERSION = 1
PENDING, RUNNING = "pending", "running"

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
    PRIMARY KEY (run_id, attempt)
);
"""


class RunDB:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / DB_NAME
        self.conn = sqlite3.connect(
            self.path, timeout=60, isolation_level=None, check_same_thread=False
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        # One connection shared by the scheduler's threads: one statement or transaction at
        # a time (other processes are kept in order by SQLite's own locking).
        self._lock = threading.RLock()

    @classmethod
    def open_existing(cls, run_dir: Path) -> RunDB:
        if not (run_dir / DB_NAME).is_file():
            raise UsageError(
                f"{run_dir} is not a vmharness run folder (no {DB_NAME})",
                hint="give the folder that `vmharness run` or `submit` printed",
            )
        return cls(run_dir)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    # -- meta -------------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.tx() as c:
            for k, v in values.items():
                c.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, dumps(encode(v), indent=None))
                )

    def meta(self) -> dict[str, Any]:
        rows = self._query("SELECT key, value FROM meta")
        return {k: loads(v, what=f"{self.path}: meta {k}") for k, v in rows}

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
        return [from_text(RUN, Run, j, what=f"{self.path}: run {i}") for i, j in rows]

    def states(self) -> dict[str, tuple[str, int]]:
        """run id -> (state, attempts so far)."""
        return {i: (s, a) for i, s, a in self._query("SELECT id, state, attempts FROM runs")}

    def results(self) -> dict[str, RunResult]:
        rows = self._query("SELECT id, result_json FROM runs WHERE result_json IS NOT NULL")
        return {i: _stored_result(i, j) for i, j in rows}

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
                "UPDATE attempts SET ended = ?, status = ?, reason = ?, host = ? "
                "WHERE run_id = ? AND attempt = ?",
                (now, result.status, result.reason, result.host, result.run_id, result.attempt),
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

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        cols = ["attempt", "started", "ended", "status", "reason", "host"]
        rows = self._query(
            f"SELECT {', '.join(cols)} FROM attempts WHERE run_id = ? ORDER BY attempt", (run_id,)
        )
        return [dict(zip(cols, row, strict=True)) for row in rows]


# -- rows (their format: wire/formats.py) ------------------------------------------------------
def _stored_result(run_id: str, text: str) -> RunResult:
    """A stored verdict; one that cannot be read (a corrupt row, or one an older vmharness
    wrote with NaN in it) is shown as what it is rather than stopping every report."""
    try:
        return from_text(RESULT, RunResult, text, what=f"its stored verdict ({DB_NAME})")
    except WireError as exc:
        return RunResult(run_id=run_id, status="died", reason=str(exc))


def known_failures_to_json(kfs: list[KnownFailure]) -> list[dict[str, str]]:
    return encode(list(kfs))


def known_failures_from_json(items: list[dict[str, str]]) -> list[KnownFailure]:
    return decode(list[KnownFailure], items)
