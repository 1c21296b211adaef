"""A run folder that is damaged or in use: clear errors (exit 2, what to do), nothing of it
overwritten, and one vmharness at a time on it (no VM)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO, run_cli

from vmharness.results.model import RunResult, TestCounts
from vmharness.rundir import RunFolder
from vmharness.spec import Platform, expand, load_spec


def make_folder(path: Path, *, done: int = 8) -> Path:
    """A run folder of examples/matrix.yaml (8 runs) whose first `done` runs have verdicts,
    its reports written; its platforms' images are files that do not exist, so that a
    `resume` that got going would stop at once instead of building or booting anything."""
    spec = load_spec(EXAMPLES / "matrix.yaml")
    runs = [
        dataclasses.replace(
            run, platform=Platform(name=run.platform.name, image=path.parent / "no-such.qcow2")
        )
        for run in expand(spec)
    ]
    folder = RunFolder.create(spec, runs, path, backend="local")
    for run in runs[:done]:
        attempt = folder.db.start_attempt(run.id)
        folder.db.finish_attempt(
            RunResult(
                run_id=run.id,
                status="pass",
                attempt=attempt,
                counts=TestCounts(ok=1),
                log_dir=f"runs/{run.id}",
            ),
            final=True,
        )
    folder.write_reports(None, show=False)
    folder.db.close()
    return path


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def assert_refused(proc, *words: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "what to do:" in proc.stderr
    for word in words:
        assert word in proc.stderr, word


def damage(folder: Path, how: str) -> None:
    db = folder / "state.sqlite"
    if how == "empty":
        db.write_bytes(b"")
    elif how == "random":
        db.write_bytes(os.urandom(64 << 10))
    elif how == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    else:
        conn = sqlite3.connect(db)
        if how == "bad run row":
            conn.execute("UPDATE runs SET run_json = '{\"id\": ' WHERE id = '0003'")
        elif how == "bad result row":
            conn.execute("UPDATE runs SET result_json = '[1, 2]' WHERE id = '0005'")
        elif how == "bad state":
            conn.execute("UPDATE runs SET state = 'sideways' WHERE id = '0002'")
        elif how == "no runs":
            conn.execute("DELETE FROM runs")
        conn.commit()
        conn.close()


DAMAGE = {
    "empty": "empty",
    "random": "not a vmharness run database",
    "truncated": "damaged",
    "bad run row": "0003",
    "bad result row": "0005",
    "bad state": "0002",
    "no runs": "no runs",
}


@pytest.mark.parametrize("command", ["report", "resume"])
@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_database_is_refused_and_nothing_overwritten(
    tmp_path: Path, how: str, command: str
) -> None:
    folder = make_folder(tmp_path / "rd")
    damage(folder, how)
    before = files(folder)
    proc = run_cli(command, folder, timeout=60)
    assert_refused(proc, str(folder / "state.sqlite"), DAMAGE[how])
    after = files(folder)
    after.pop("vmharness.lock", None)
    assert after == before, "the damaged folder was written to"


def test_previous_with_a_truncated_results_json_is_refused_first(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "rd", done=4)
    previous = make_folder(tmp_path / "prev")
    results = previous / "results.json"
    results.write_bytes(results.read_bytes()[:200])
    before = files(folder)
    proc = run_cli("report", folder, "--previous", previous, timeout=60)
    assert_refused(proc, str(results))
    after = files(folder)
    after.pop("vmharness.lock", None)
    assert after == before, "the reports were written anyway"


def test_previous_that_is_not_a_run_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "rd")
    (tmp_path / "prev").mkdir()
    (tmp_path / "prev" / "results.json").write_text('{"runs": [{"id": 1}]}')
    proc = run_cli("report", folder, "--previous", tmp_path / "prev", timeout=60)
    assert_refused(proc, "results.json")


HOLDER = """
import sys, time
from pathlib import Path
from vmharness.rundir import RunFolder
folder = RunFolder.open(Path(sys.argv[1]), exclusive=True)
print("holding", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held(tmp_path: Path):
    """A run folder that another process holds, as a running `vmharness run` does."""
    folder = make_folder(tmp_path / "rd", done=5)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        yield folder, holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("command", ["resume", "report", "rerun"])
def test_a_second_vmharness_on_a_folder_in_use_is_refused(held, command: str) -> None:
    folder, holder = held
    states = sqlite3.connect(folder / "state.sqlite").execute("SELECT * FROM runs").fetchall()
    before = files(folder)
    args = [command, folder] + (["--failed"] if command == "rerun" else [])
    t0 = time.monotonic()
    proc = run_cli(*args, timeout=60)
    assert time.monotonic() - t0 < 30, "it waited for the lock instead of saying who holds it"
    assert_refused(proc, "in use", f"pid {holder.pid}", "-c", "since")
    assert files(folder) == before
    after = sqlite3.connect(folder / "state.sqlite").execute("SELECT * FROM runs").fetchall()
    assert after == states


def test_the_folder_is_free_again_once_its_holder_is_gone(held) -> None:
    folder, holder = held
    holder.kill()
    holder.wait()
    proc = run_cli("report", folder, timeout=60)
    assert proc.returncode == 1, proc.stderr  # 5 of 8 runs passed, 3 not finished
    assert "5/8 passed" in proc.stdout


def test_run_refuses_an_out_folder_in_use(held, tmp_path: Path) -> None:
    folder, _holder = held
    proc = run_cli("run", EXAMPLES / "smoke.yaml", "--out", folder, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "in use" in proc.stderr or "already holds a run" in proc.stderr
