"""Rendering every report for the OSG's nightly size: 1,564 runs with generated results.

Runs: the OSG's real parameter files expanded by vmharness.spec when ../shared/peer-data is there,
otherwise the same shape generated here (6 files of EL platforms, their sources and package
sets). Results: seeded random, mostly passing, with failures carrying osg-test-like tracebacks,
versions and phases; a "previous night" differs in about 1 run in 20, for the comparison.

Timed: comparison + report.html + junit.xml + results.json + the terminal summary (to a null
console), best and median of 5. Target: under 3 s.

    .venv/bin/python bench/bench_report.py
"""

from __future__ import annotations

import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from vmharness.report import ReportInput, compare, render_terminal
from vmharness.report.html import write_html
from vmharness.report.jsonout import write_json
from vmharness.report.junit import write_junit
from vmharness.results.model import Problem, RunResult, TestCounts
from vmharness.spec import PackageSet, Platform, Run, Source, TestSettings, VMSettings

PEER = (
    Path(__file__).resolve().parents[2] / "shared" / "peer-data" / "vm-test-runs" / "parameters.d"
)
TARGET_S = 3.0
REPEATS = 5

_SETS_EL8 = [
    "Compute Entrypoint (Condor)",
    "Compute Entrypoint (Slurm)",
    "Central Collector",
    "Worker Node (privileged)",
    "Worker Node (privileged, tarball deps)",
    "XRootD",
    "GlideinwmsFrontend",
    "GlideinwmsFactory",
    "HTVault-Config",
    "OSDF Cache and Origin",
]
_SETS_EL9 = [*_SETS_EL8[:2], "Compute Entrypoint (Torque)", *_SETS_EL8[2:]]
_SETS_EL10 = [
    "Compute Entrypoint (Condor) (EL10)",
    "Central Collector",
    "Worker Node (privileged)",
    "Worker Node (privileged, tarball deps)",
    "XRootD",
    "HTVault-Config",
    "OSDF Cache and Origin",
]


def _sources(v: str, prev: str | None, full: bool = True) -> list[str]:
    out = [f"{v}; osg", f"{v}; osg, epel-testing", f"{v}; osg-testing", f"{v}; osg > osg-testing"]
    if prev:
        out.append(f"{prev}; osg-upcoming > {v}/osg")
    out += [
        f"{v}; osg, osg-upcoming",
        f"{v}; osg, osg-upcoming, epel-testing",
        f"{v}; osg-testing, osg-upcoming-testing",
        f"{v}; osg > osg-testing, osg-upcoming-testing",
    ]
    if not full:
        out = [s for s in out if "epel" not in s and "upcoming >" not in s]
    return out


# The shape of the OSG's parameters.d: (platforms, sources, package sets) per file.
SYNTHETIC = [
    (["rocky_8.x86_64", "alma_8.x86_64"], _sources("24", "23"), _SETS_EL8),
    (["centos_stream_9.aarch64", "alma_9.aarch64"], _sources("24", None, full=False), _SETS_EL9),
    (
        ["centos_stream_9.x86_64", "rocky_9.x86_64", "alma_9.x86_64"],
        _sources("24", "23"),
        _SETS_EL9,
    ),
    (
        [
            "centos_stream_10.aarch64",
            "alma_10.aarch64",
            "centos_stream_10.x86_64",
            "rocky_10.x86_64",
            "alma_10.x86_64",
        ],
        _sources("25", None),
        _SETS_EL10,
    ),
    (["rocky_8.x86_64", "alma_8.x86_64"], _sources("25", "24"), _SETS_EL8),
    (
        [
            "centos_stream_9.aarch64",
            "alma_9.aarch64",
            "centos_stream_9.x86_64",
            "rocky_9.x86_64",
            "alma_9.x86_64",
        ],
        _sources("25", "24"),
        _SETS_EL9,
    ),
]


def osg_runs() -> tuple[list[Run], str, float]:
    """The runs, where they came from, and the expansion time (0 when generated here)."""
    if PEER.is_dir():
        from vmharness.spec import expand, load_spec

        t0 = time.perf_counter()
        runs = expand(load_spec(PEER))
        return runs, f"the OSG's parameters.d ({PEER})", time.perf_counter() - t0
    runs: list[Run] = []
    for platforms, sources, sets in SYNTHETIC:
        for platform in platforms:
            for source in sources:
                repos, _, up = source.partition(" > ")
                for pset in sets:
                    runs.append(
                        Run(
                            id=f"{len(runs) + 1:04d}",
                            platform=Platform(platform),
                            source=Source(
                                source,
                                tuple(repos.split("; ")[-1].split(", ")),
                                tuple(up.split("/")[-1].split(", ")) if up else (),
                            ),
                            package_set=PackageSet(pset, (pset.lower().replace(" ", "-"),)),
                            test=TestSettings(format="osg-test"),
                            vm=VMSettings(),
                        )
                    )
    return runs, "generated, in the shape of the OSG's parameters.d", 0.0


STATUS_WEIGHTS = {
    "pass": 80,
    "fail": 7,
    "ignore": 4,
    "install": 2,
    "update": 1,
    "cleanup": 2,
    "timeout": 1,
    "died": 1,
}
MODULES = [
    "test_10_condor",
    "test_15_execute",
    "test_40_token",
    "test_50_voms",
    "test_55_condorce",
    "test_57_xrootd",
    "test_60_osdf",
    "test_80_slurm",
]


def _traceback(rng: random.Random, module: str, test: str) -> str:
    frames = "".join(
        f'  File "/usr/lib/python3.9/site-packages/osgtest/tests/{module}.py", line '
        f"{rng.randint(10, 400)}, in {test}\n    self.assert_(core.check_system(command, "
        f"'{test}'), 'failed')\n"
        for _ in range(rng.randint(2, 6))
    )
    return (
        f"Traceback (most recent call last):\n{frames}AssertionError: command "
        f"'condor_ce_trace --debug' failed with exit status 1\nstdout:\n"
        + "  ".join(f"line {i} of output\n" for i in range(rng.randint(5, 30)))
    )


def make_result(run: Run, rng: random.Random, status: str | None = None) -> RunResult:
    status = status or rng.choices(list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values()))[0]
    ok, skip = rng.randint(120, 260), rng.randint(5, 40)
    problems: list[Problem] = []
    if status in ("fail", "ignore", "cleanup", "install", "update"):
        modules = {
            "install": ["special_install"],
            "update": ["special_install"],
            "cleanup": ["special_cleanup"],
        }.get(status, MODULES)
        for i in range(rng.randint(1, 12) if status in ("fail", "ignore") else 1):
            module = rng.choice(modules)
            test = f"test_{i:02d}_{rng.choice(['trace', 'copy', 'install', 'start', 'ping'])}"
            problems.append(
                Problem(
                    module,
                    test,
                    "Test" + module.split("_")[-1].title(),
                    rng.choice(["FAIL", "FAIL", "ERROR"]),
                    "-",
                    _traceback(rng, module, test),
                )
            )
    fails = sum(p.kind == "FAIL" for p in problems)
    errors = len(problems) - fails
    if status in ("timeout", "died"):
        ok = skip = 0
    return RunResult(
        run_id=run.id,
        status=status,
        reason={
            "pass": "",
            "timeout": "wall-clock limit 30m reached",
            "died": "no output disk: the VM did not boot",
        }.get(status, f"{len(problems)} problem(s)"),
        duration_s=rng.uniform(400, 1800),
        counts=TestCounts(ok=ok, fail=fails, error=errors, skip=skip),
        problems=problems,
        accelerator=rng.choice(["kvm", "kvm", "kvm", "tcg"]),
        host=f"exec{rng.randint(1, 40):02d}.chtc.wisc.edu",
        attempt=2 if status == "died" else 1,
        log_dir=f"runs/{run.id}",
        exit_code=0 if status == "pass" else 1,
        phases={
            "boot": rng.uniform(15, 40),
            "install": rng.uniform(60, 400),
            "test": rng.uniform(300, 1200),
            "cleanup": rng.uniform(10, 60),
        },
        versions={
            "kernel": "5.14.0-503.el9",
            "osg-test": "3.5.1",
            "condor": "24.0.4",
            "htcondor-ce": "24.0.2",
            "xrootd": "5.7.1",
            "osg-ca-certs": "1.132",
            "voms": "2.1.0",
            "python3": "3.9.21",
        },
    )


def inputs(run_dir: Path) -> tuple[ReportInput, ReportInput, str, float]:
    runs, origin, expand_s = osg_runs()
    rng = random.Random(20250602)
    current = [(run, make_result(run, rng)) for run in runs]
    previous = []
    for run, res in current:
        if rng.random() < 0.05:
            previous.append(
                (run, make_result(run, rng, "pass" if res.status != "pass" else "fail"))
            )
        else:
            previous.append((run, res))
    # A night in progress would have a few pending; the finished nightly has none.
    return (
        ReportInput("OSG nightly", run_dir, "2025-06-02T02:00:00", "condor", current),
        ReportInput("OSG nightly 2025-06-01", run_dir, "2025-06-01T02:00:00", "condor", previous),
        origin,
        expand_s,
    )


def once(cur: ReportInput, prev: ReportInput, out: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    t = time.perf_counter()
    cmp = compare(cur, prev)
    times["compare"] = time.perf_counter() - t
    t = time.perf_counter()
    write_html(cur, out / "report.html", comparison=cmp)
    times["html"] = time.perf_counter() - t
    t = time.perf_counter()
    write_junit(cur, out / "junit.xml")
    times["junit"] = time.perf_counter() - t
    t = time.perf_counter()
    write_json(cur, out / "results.json", comparison=cmp)
    times["json"] = time.perf_counter() - t
    t = time.perf_counter()
    render_terminal(cur, Console(file=io.StringIO(), width=160), comparison=cmp)
    times["terminal"] = time.perf_counter() - t
    times["total"] = sum(times.values())
    return times


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="vmh-bench-report-") as tmp:
        out = Path(tmp)
        cur, prev, origin, expand_s = inputs(out)
        runs = [run for run, _ in cur.entries]
        rows = {(r.source.label, r.package_set.label) for r in runs}
        platforms = {r.platform.name for r in runs}
        results = [once(cur, prev, out) for _ in range(REPEATS)]
        sizes = {
            name: (out / name).stat().st_size
            for name in ("report.html", "junit.xml", "results.json")
        }
    best = min(results, key=lambda r: r["total"])
    median = statistics.median(r["total"] for r in results)
    print(f"report bench: {len(runs)} runs from {origin}")
    print(f"  matrix: {len(platforms)} platform columns x {len(rows)} source/package-set rows")
    if expand_s:
        print(f"  spec load + expansion: {expand_s:.3f} s")
    for part in ("compare", "html", "junit", "json", "terminal"):
        size = {"html": "report.html", "junit": "junit.xml", "json": "results.json"}.get(part)
        extra = f"  ({size} {sizes[size] / 1e6:.2f} MB)" if size else ""
        print(f"  {part:<9} {best[part]:.3f} s{extra}")
    verdict = "OK" if best["total"] + expand_s < TARGET_S else "OVER TARGET"
    print(
        f"  all reports: {best['total']:.3f} s best, {median:.3f} s median of {REPEATS}; "
        f"with expansion {best['total'] + expand_s:.3f} s (target < {TARGET_S:.0f} s: {verdict})"
    )
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
