"""Whatever the guest leaves in result.json, the run gets a verdict with a reason, the verdict is
stored, and every report renders (no VM: the output folder is made by hand).

The hostile files: numbers JSON does not allow (NaN, Infinity), a number too big for a float
(1e999), an integer of 400 digits, and nesting 200,000 deep.
"""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from vmharness.engine.attempt import RunContext, decide
from vmharness.images.extract import Extraction
from vmharness.report import ReportInput, read_json, render_terminal, write_all
from vmharness.results.model import RunResult
from vmharness.results.model import TestCounts as Counts
from vmharness.rundir import RunFolder
from vmharness.spec import PackageSet, Platform, Run, Source, VMSettings
from vmharness.spec import TestSettings as Settings
from vmharness.state import RunDB
from vmharness.vm.job import VMOutcome

RUN = Run(
    id="0001",
    platform=Platform(name="debian-12"),
    source=Source(label="image packages", repos=("main",)),
    package_set=PackageSet(label="base"),
    test=Settings(command="true", format="exit-code"),
    vm=VMSettings(),
)
POWEROFF = VMOutcome(ended="poweroff", seconds=3.0, accelerator="tcg", host="here")
DIGITS = "9" * 400

HOSTILE = {
    "nan-phase": '{"version": 1, "test_exit_code": 0, '
    '"phases": [{"name": "test", "duration_s": NaN}]}',
    "infinite-boot": '{"version": 1, "test_exit_code": 0, "boot_uptime_s": Infinity}',
    "minus-infinity": '{"version": 1, "test_exit_code": 0, "boot_uptime_s": -Infinity}',
    "1e999-phase": '{"version": 1, "test_exit_code": 0, '
    '"phases": [{"name": "test", "duration_s": 1e999}]}',
    "400-digit-phase": '{"version": 1, "test_exit_code": 0, '
    f'"phases": [{{"name": "test", "duration_s": {DIGITS}}}]}}',
    "400-digit-exit-code": f'{{"version": 1, "test_exit_code": {DIGITS}}}',
    "deep-array": "[" * 200_000 + "]" * 200_000,
    "deep-object": '{"version": 1, "test_exit_code": 0, "x": '
    + '{"a": ' * 200_000
    + "1"
    + "}" * 200_001,
}


def guest_left(tmp_path: Path, text: str) -> tuple[Path, Extraction]:
    out = tmp_path / "runs" / RUN.id / "output"
    out.mkdir(parents=True)
    (out / "result.json").write_text(text)
    (out / "agent.log").write_text("phase test: done\n")
    return out, Extraction(files=["result.json", "agent.log"], bytes=len(text))


def render_everything(run_dir: Path, result: RunResult) -> dict[str, Path]:
    """Store the verdict as the engines do, and make every report from the database alone."""
    db = RunDB(run_dir)
    db.set_meta(backend="local")  # as RunFolder.create records it
    db.add_runs([RUN])
    db.start_attempt(RUN.id)
    db.finish_attempt(result, final=True)
    db.close()
    folder = RunFolder.open(run_dir)
    paths = folder.write_reports(Console(file=io.StringIO()), show=True)
    folder.db.close()
    return paths


def check_reports(paths: dict[str, Path]) -> dict:
    data = json.loads(paths["json"].read_text(), parse_constant=_no_constant)  # strict JSON
    ET.parse(paths["junit"])
    assert "<html" in paths["html"].read_text()
    read_json(paths["json"])  # a later comparison can read it back
    return data


def _no_constant(name: str) -> object:
    raise AssertionError(f"results.json holds {name}")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_result_json_is_the_runs_verdict_and_reports_render(
    tmp_path: Path, name: str
) -> None:
    out, extraction = guest_left(tmp_path, HOSTILE[name])
    result = decide(
        RUN, POWEROFF, extraction, out, tmp_path / "console.log", RunContext(run_dir=tmp_path)
    )
    assert result.status == "died"
    assert result.reason.startswith("result.json from the guest is not valid: ")
    assert result.not_the_hosts  # the guest's doing: never counted against the execute host
    assert all(math.isfinite(v) for v in result.phases.values())
    data = check_reports(render_everything(tmp_path, result))
    (run,) = data["runs"]
    assert run["status"] == "died" and "not valid" in run["reason"]


def test_only_what_the_guest_spoiled_is_not_the_execute_hosts_fault(tmp_path: Path) -> None:
    """A corrupt output disk is the guest's doing; a disk the host could not read, a VM that
    did not start or a guest that wrote nothing count against the host (hosts.py)."""
    ctx = RunContext(run_dir=tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    console = tmp_path / "console.log"
    corrupt = Extraction(error="output disk unreadable: FAT: bad cluster", by_guest=True)
    host_io = Extraction(error="output disk unreadable: [Errno 5] Input/output error")
    failed = VMOutcome(ended="error", seconds=0.1, accelerator="tcg", host="here", reason="x")
    assert decide(RUN, POWEROFF, corrupt, out, console, ctx).not_the_hosts
    assert not decide(RUN, POWEROFF, host_io, out, console, ctx).not_the_hosts
    assert not decide(RUN, failed, Extraction(), out, console, ctx).not_the_hosts
    nothing = decide(RUN, POWEROFF, Extraction(), out, console, ctx)
    assert nothing.status == "died" and not nothing.not_the_hosts


def test_a_result_json_too_large_to_read_says_so(tmp_path: Path) -> None:
    big = '{"version": 1, "test_exit_code": 0, "pad": "' + "x" * (2 << 20) + '"}'
    out, extraction = guest_left(tmp_path, big)
    result = decide(
        RUN, POWEROFF, extraction, out, tmp_path / "console.log", RunContext(run_dir=tmp_path)
    )
    assert result.status == "died"
    assert "not valid" in result.reason and "larger than" in result.reason


def test_a_sound_result_json_still_passes(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "version": 1,
            "test_exit_code": 0,
            "boot_uptime_s": 9.5,
            "phases": [{"name": "test", "duration_s": 1.25}],
            "kernel": "6.1.0",
        }
    )
    out, extraction = guest_left(tmp_path, text)
    result = decide(
        RUN, POWEROFF, extraction, out, tmp_path / "console.log", RunContext(run_dir=tmp_path)
    )
    assert result.status == "pass", result.reason
    assert result.phases == {"guest:test": 1.25, "boot": 9.5}
    assert result.versions == {"kernel": "6.1.0"}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_reports_render_non_finite_floats_anywhere_in_a_result(tmp_path: Path, bad: float) -> None:
    """However a result came to hold them (a hand-made RunResult, a future bug), no report
    crashes and results.json stays strict JSON."""
    result = RunResult(
        run_id=RUN.id,
        status="pass",
        duration_s=bad,
        counts=Counts(ok=1),
        phases={"vm": bad, "guest:test": 1.0},
    )
    inp = ReportInput("t", tmp_path, "", "local", [(RUN, result)])
    data = check_reports(write_all(inp))
    render_terminal(inp, Console(file=io.StringIO()))
    (run,) = data["runs"]
    assert run["duration_s"] is None and run["phases"]["vm"] is None
    assert run["phases"]["guest:test"] == 1.0


def test_a_folder_whose_stored_verdict_holds_nan_still_reports(tmp_path: Path) -> None:
    """An older vmharness stored guest NaNs as they came; such a folder reports again."""
    result = RunResult(run_id=RUN.id, status="pass", counts=Counts(ok=1), phases={"vm": 1.0})
    paths = render_everything(tmp_path, result)
    db = RunDB(tmp_path)
    row = json.loads(db.conn.execute("SELECT result_json FROM runs").fetchone()[0])
    row["phases"]["guest:test"] = math.nan
    db.conn.execute("UPDATE runs SET result_json = ?", (json.dumps(row),))  # NaN, as it was
    db.close()
    folder = RunFolder.open(tmp_path)
    paths = folder.write_reports(Console(file=io.StringIO()), show=True)
    folder.db.close()
    (run,) = check_reports(paths)["runs"]
    assert run["status"] == "died"
    assert run["reason"].startswith("its stored verdict (state.sqlite) is not valid: NaN")
