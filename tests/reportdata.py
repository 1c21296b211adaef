"""Synthetic runs and verdicts for the report tests (unit and browser)."""

from __future__ import annotations

from vmharness.results.model import Problem, RunResult
from vmharness.results.model import TestCounts as Counts
from vmharness.spec import PackageSet, Platform, Run, Source, VMSettings
from vmharness.spec import TestSettings as Settings


def make_run(
    run_id: str,
    platform: str,
    source: str,
    package_set: str,
    packages: tuple[str, ...] = ("pkg-a", "pkg-b"),
) -> Run:
    return Run(
        id=run_id,
        platform=Platform(name=platform),
        source=Source(label=source, repos=("main",)),
        package_set=PackageSet(label=package_set, packages=packages),
        test=Settings(),
        vm=VMSettings(),
    )


def make_result(
    run: Run,
    status: str,
    *,
    ok: int = 40,
    skip: int = 2,
    message: str = "",
    reason: str = "",
    log_dir: str | None = None,
) -> RunResult:
    problems: list[Problem] = []
    counts = Counts(ok=ok, skip=skip)
    if status == "fail":
        problems = [
            Problem(
                "test_55_condorce",
                "test_04_trace",
                "TestCondorCE",
                "FAIL",
                "-",
                message or "AssertionError: condor_ce_trace failed",
            ),
            Problem("test_50_voms", "test_07_rfc_voms_proxy_info", "TestVOMS", "SKIP", "no proxy"),
        ]
        counts = Counts(ok=ok, fail=1, error=0, skip=skip + 1)
    elif status == "install":
        problems = [
            Problem(
                "special_install",
                "test_03_install_packages",
                "TestInstall",
                "FAIL",
                "-",
                message or "yum install failed: missing dependency",
            )
        ]
        counts = Counts(ok=2, fail=1)
    elif status == "update":
        problems = [
            Problem(
                "special_install",
                "test_05_update_packages",
                "TestInstall",
                "FAIL",
                "-",
                message or "yum update failed",
            )
        ]
        counts = Counts(ok=ok, fail=1)
    elif status == "cleanup":
        problems = [
            Problem(
                "special_cleanup",
                "test_03_remove_packages",
                "TestCleanup",
                "FAIL",
                "-",
                message or "remove failed",
            )
        ]
        counts = Counts(ok=ok, fail=1)
    elif status == "ignore":
        problems = [
            Problem(
                "test_55_condorce",
                "test_05_pbs_trace",
                "TestCondorCE",
                "ERROR",
                "-",
                message or "known: pbs trace",
            )
        ]
        counts = Counts(ok=ok, error=1, skip=skip)
    elif status in ("timeout", "died"):
        counts = Counts()
    return RunResult(
        run_id=run.id,
        status=status,
        reason=reason or ("" if status == "pass" else f"{status} reason"),
        duration_s=754.2,
        counts=counts,
        problems=problems,
        accelerator="kvm",
        boot="restored from snapshot 0123456789abcdef",
        host="node01.example.org",
        attempt=2 if status == "died" else 1,
        log_dir=f"runs/{run.id}" if log_dir is None else log_dir,
        exit_code=0 if status == "pass" else 1,
        phases={"boot": 21.5, "install": 180.0, "test": 500.0},
        versions={"kernel": "4.18.0-553.el8", "osg-test": "3.2.1"},
    )
