"""A run whose parser kept only part of its problems says how many there were, everywhere."""

from __future__ import annotations

import json
from pathlib import Path

from vmharness.report import ReportInput, read_json, write_all
from vmharness.results.model import Problem, RunResult
from vmharness.results.model import TestCounts as Counts
from vmharness.spec import PackageSet, Platform, Run, Source, VMSettings
from vmharness.spec import TestSettings as Settings


def test_problems_beyond_the_parsers_cap_are_counted_in_every_report(tmp_path: Path) -> None:
    run = Run(
        id="0001",
        platform=Platform(name="el9"),
        source=Source(label="osg", repos=("main",)),
        package_set=PackageSet(label="all", packages=()),
        test=Settings(),
        vm=VMSettings(),
    )
    kept = [Problem("m", f"test_{i}", "C", "FAIL") for i in range(3)]
    result = RunResult(
        run_id="0001",
        status="fail",
        reason="1003 failed: test_0, test_1, test_2 and 1000 more",
        counts=Counts(fail=1003),
        problems=kept,
        problems_more=1000,
        log_dir="runs/0001",
    )
    inp = ReportInput(
        title="t", run_dir=tmp_path, started="", backend="local", entries=[(run, result)]
    )
    paths = write_all(inp)
    data = json.loads(paths["json"].read_text())
    assert data["runs"][0]["problems_more"] == 1000
    assert len(data["runs"][0]["problems"]) == 3
    back = read_json(paths["json"])
    assert back.entries[0][1] is not None and back.entries[0][1].problems_more == 1000
    page = paths["html"].read_text()
    assert '"prn": 1003' in page or '"prn":1003' in page
