"""The run database: runs, attempts, verdicts, and recovery after a kill (no VM)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vmharness.errors import UsageError
from vmharness.results.model import Problem, RunResult
from vmharness.results.model import TestCounts as Counts
from vmharness.spec import Run, expand, load_spec
from vmharness.state import (
    DB_NAME,
    PENDING,
    RUNNING,
    RunDB,
)
from vmharness.wire.codec import decode, encode

REPO = Path(__file__).resolve().parents[2]
MATRIX = REPO / "examples" / "matrix.yaml"
SMOKE = REPO / "examples" / "smoke.yaml"


@pytest.fixture
def runs():
    return expand(load_spec(MATRIX))


@pytest.fixture
def db(tmp_path: Path, runs):
    db = RunDB(tmp_path)
    db.add_runs(runs)
    yield db
    db.close()


def result(run_id: str, status: str, attempt: int, **kw) -> RunResult:
    return RunResult(
        run_id=run_id, status=status, attempt=attempt, reason=f"{status} reason", host="h", **kw
    )


def test_run_dict_round_trip_matrix(runs) -> None:
    assert len(runs) == 8
    for run in runs:
        d = encode(run)
        again = decode(Run, json.loads(json.dumps(d)))  # through JSON, as stored
        assert again == run
        assert again.wall_timeout_s == run.wall_timeout_s


def test_run_dict_round_trip_with_suite_and_env(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    (tmp_path / "suite").mkdir()
    spec.write_text(
        "platforms: [debian-12]\nsources: [{label: s, repos: [main]}]\n"
        "package_sets: [{label: p, packages: [curl]}]\n"
        "test: {suite: suite/, command: ./run, env: {A: '1', B: two}, timeout: 5m}\n"
        "vm: {wall_timeout: 9m, debug: true, network: user}\n"
    )
    (run,) = expand(load_spec(spec))
    again = decode(Run, json.loads(json.dumps(encode(run))))
    assert again == run
    assert isinstance(again.test.suite, Path)
    assert again.test.env == run.test.env and again.vm.debug is True


def test_add_is_idempotent_and_ordered(db: RunDB, runs) -> None:
    db.add_runs(runs)  # a second add (resume) changes nothing
    assert [r.id for r in db.runs()] == [r.id for r in runs]
    assert db.runs() == runs
    assert set(db.states().values()) == {(PENDING, 0)}
    assert db.results() == {}


def test_meta_round_trip(db: RunDB) -> None:
    db.set_meta(title="t", known_failures=[{"test": "a"}], n=3)
    db.set_meta(n=4)
    assert db.meta() == {"title": "t", "known_failures": [{"test": "a"}], "n": 4}


def test_start_finish_round_trip(db: RunDB) -> None:
    attempt = db.start_attempt("0001", host="h")
    assert attempt == 1
    assert db.states()["0001"] == (RUNNING, 1)
    r = result(
        "0001",
        "fail",
        attempt,
        counts=Counts(ok=3, fail=1),
        problems=[Problem("m", "t", "c", "FAIL", "-", "boom")],
        phases={"vm": 1.5},
        versions={"kernel": "6.1"},
        exit_code=1,
    )
    db.finish_attempt(r, final=True)
    assert db.states()["0001"] == ("done", 1)
    assert db.results()["0001"] == r
    (a,) = db.attempts("0001")
    assert a["attempt"] == 1 and a["status"] == "fail" and a["ended"] >= a["started"]
    assert a["host"] == "h"


def test_non_final_attempt_stays_pending(db: RunDB) -> None:
    a1 = db.start_attempt("0002")
    db.finish_attempt(result("0002", "died", a1), final=False)
    assert db.states()["0002"] == (PENDING, 1)
    a2 = db.start_attempt("0002")
    assert a2 == 2
    db.finish_attempt(result("0002", "died", a2), final=True)
    assert db.states()["0002"] == ("done", 2)
    assert [a["status"] for a in db.attempts("0002")] == ["died", "died"]


def test_reset_keeps_history(db: RunDB) -> None:
    a = db.start_attempt("0003")
    db.finish_attempt(result("0003", "fail", a), final=True)
    db.reset(["0003"])
    assert db.states()["0003"] == (PENDING, 1)
    assert "0003" not in db.results()
    a2 = db.start_attempt("0003")
    assert a2 == 2
    db.finish_attempt(result("0003", "pass", a2), final=True)
    assert db.results()["0003"].status == "pass"
    assert [x["status"] for x in db.attempts("0003")] == ["fail", "pass"]


def test_simulated_kill_is_recovered_once(tmp_path: Path, runs) -> None:
    db = RunDB(tmp_path)
    db.add_runs(runs)
    done = db.start_attempt("0001")
    db.finish_attempt(result("0001", "pass", done), final=True)
    retried = db.start_attempt("0002")
    db.finish_attempt(result("0002", "died", retried), final=False)
    db.start_attempt("0002")  # second attempt, interrupted by the kill
    db.start_attempt("0003")  # first attempt, interrupted by the kill
    before_done = db.results()["0001"]
    db.conn.close()  # kill -9: nothing else is written

    db = RunDB(tmp_path)  # a new vmharness process
    assert sorted(db.recover_interrupted()) == ["0002", "0003"]
    states = db.states()
    assert states["0001"] == ("done", 1)
    assert db.results()["0001"] == before_done  # done runs are not touched
    assert db.attempts("0001")[0]["status"] == "pass"
    assert states["0002"][0] == PENDING and states["0003"][0] == PENDING
    assert [a["status"] for a in db.attempts("0002")] == ["died", "interrupted"]
    assert [a["status"] for a in db.attempts("0003")] == ["interrupted"]
    # exactly once: a second recovery finds nothing and changes nothing
    assert db.recover_interrupted() == []
    assert db.states() == states
    # only `died` attempts count against the retry budget, not interrupted ones
    assert db.count_attempts("0002", "died") == 1
    assert db.count_attempts("0003", "died") == 0
    # the next attempt is a new one: the interrupted attempt stays recorded
    n = db.start_attempt("0003")
    db.finish_attempt(result("0003", "fail", n), final=True)
    assert [(a["attempt"], a["status"]) for a in db.attempts("0003")] == [
        (1, "interrupted"),
        (n, "fail"),
    ]
    assert n == 2
    db.close()


def test_interrupted_attempt_stays_recorded_after_the_rerun(db: RunDB) -> None:
    db.start_attempt("0001")
    db.recover_interrupted()
    db.start_attempt("0001")
    assert [a["status"] for a in db.attempts("0001")] == ["interrupted", None]


def test_transactions_from_two_threads(db: RunDB) -> None:
    """The scheduler's worker threads share one RunDB: a transaction in one thread must not
    break another thread's (jobs > 1 crashed with 'cannot start a transaction within a
    transaction')."""
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        with db.tx():
            inside.set()
            release.wait(10)

    def other() -> None:
        try:
            db.start_attempt("0002")
        except Exception as exc:
            errors.append(exc)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    second = threading.Thread(target=other)
    second.start()
    time.sleep(0.3)
    release.set()
    holder.join(10)
    second.join(10)
    assert not errors, errors
    assert db.states()["0002"] == (RUNNING, 1)


def test_many_threads_start_and_finish(db: RunDB, runs) -> None:
    """What --jobs N does: attempts started and finished from several threads at once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(runs))

    def work(run_id: str) -> None:
        try:
            barrier.wait(10)
            for _ in range(5):
                n = db.start_attempt(run_id)
                db.states()
                db.finish_attempt(result(run_id, "died", n), final=False)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r.id,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert all(a == 5 for _, a in db.states().values())


def test_open_existing_needs_a_database(tmp_path: Path, runs) -> None:
    with pytest.raises(UsageError, match="not a vmharness run folder"):
        RunDB.open_existing(tmp_path)
    RunDB(tmp_path).close()
    assert (tmp_path / DB_NAME).is_file()
    # A database with the tables but nothing in them is what a stopped `run` leaves: refused.
    with pytest.raises(UsageError, match="no record of how it was made"):
        RunDB.open_existing(tmp_path)
    db = RunDB(tmp_path)
    db.set_meta(backend="local")
    db.add_runs(runs)
    db.close()
    RunDB.open_existing(tmp_path).close()


def test_checking_rows_is_not_fooled_by_a_run_finished_meanwhile(tmp_path: Path, runs) -> None:
    """A DAG's POST scripts open the folder (and check its rows) while others finish runs:
    a run finished between the check's reads of the verdicts and of the states once made a
    healthy database look damaged, and the POST script fail without a verdict."""
    setup = RunDB(tmp_path)
    setup.set_meta(backend="condor")
    setup.add_runs(runs)
    setup.start_attempt("0001")
    setup.close()
    checker = RunDB(tmp_path, create=False)
    other = RunDB(tmp_path, create=False)
    read_results = checker.results

    def results_then_another_finishes() -> dict[str, RunResult]:
        seen = read_results()
        if "0001" not in seen:
            other.finish_attempt(result("0001", "pass", 1), final=True)
        return seen

    checker.results = results_then_another_finishes  # type: ignore[method-assign]
    checker.check_rows()  # one snapshot: 0001 is running in all of it
    assert other.states()["0001"][0] == "done"
    del checker.results
    checker.check_rows()  # and done, with its verdict, in the next one
    checker.close()
    other.close()


def test_an_attempt_keeps_why_its_death_was_not_the_hosts(db) -> None:
    db.start_attempt("0001")
    db.finish_attempt(result("0001", "died", 1, not_the_hosts="the guest spoiled it"), final=False)
    db.start_attempt("0001")
    db.finish_attempt(result("0001", "died", 2), final=True)
    db.start_attempt("0003")
    rows = db.attempts("0001")
    assert db.all_attempts() == [("0001", a) for a in rows] + [("0003", db.attempts("0003")[0])]
    assert [(a["attempt"], a["not_the_hosts"]) for a in rows] == [
        (1, "the guest spoiled it"),
        (2, ""),
    ]


def test_a_folder_from_before_the_column_gets_it(tmp_path: Path, runs) -> None:
    old_schema = """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE runs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, run_json TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, status TEXT,
        result_json TEXT, updated REAL NOT NULL);
    CREATE TABLE attempts (run_id TEXT NOT NULL, attempt INTEGER NOT NULL, started REAL NOT NULL,
        ended REAL, status TEXT, reason TEXT, host TEXT, PRIMARY KEY (run_id, attempt));
    """
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.executescript(old_schema)
    conn.close()
    db = RunDB(tmp_path, create=False)
    db.set_meta(backend="local")
    db.add_runs(runs)
    db.start_attempt("0002")
    db.finish_attempt(result("0002", "died", 1, not_the_hosts="a person"), final=True)
    db.close()
    again = RunDB.open_existing(tmp_path)
    assert again.attempts("0002")[0]["not_the_hosts"] == "a person"
    again.close()


def test_two_connections_see_each_other(tmp_path: Path, runs) -> None:
    a = RunDB(tmp_path)
    a.add_runs(runs)
    b = RunDB(tmp_path)
    n = a.start_attempt("0004")
    assert b.states()["0004"] == (RUNNING, n)
    a.close()
    b.close()


def test_result_from_dict_ignores_unknown_fields() -> None:
    r = result("0001", "pass", 1, counts=Counts(ok=2))
    d = json.loads(json.dumps({**r.__dict__, "counts": r.counts.as_dict(), "new_field": 1}))
    assert decode(RunResult, d) == r


def test_schema_is_plain_sqlite(db: RunDB) -> None:
    """Other tools read the database: the tables and columns the docs name are there."""
    conn = sqlite3.connect(db.path)
    cols = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    assert {"id", "state", "attempts", "status", "result_json"} <= cols
    conn.close()


def test_smoke_spec_round_trips() -> None:
    runs = expand(load_spec(SMOKE))
    for run in runs:
        assert decode(Run, encode(run)) == run
        # a changed copy is not equal (the comparison above is meaningful)
        assert decode(Run, encode(replace(run, id="9999"))) != run
