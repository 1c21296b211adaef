"""One attempt of one run: disks -> VM -> output disk -> extracted logs -> verdict.

Both engines use it: the local one (local.py) calls `execute`; on a pool, the DAG's nodes call
`prepare` before the job and `collect` after it. `settle` is the one retry rule of both.

Every file a run produces lives under its log folder (runs/<id>/ in the run folder):
    conditions.toml   the conditions given to the guest (a copy of the input disk's file)
    console.log       the serial console, kept whatever happened
    output/           what the guest wrote to its output disk, extracted safely
    run.json          the verdict (a RunResult document, wire/formats.py RESULT)
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..images.cache import BaseImage
from ..images.disks import make_input_disk, make_output_disk
from ..images.extract import Extraction, extract
from ..results import parse_results
from ..results.classify import classify
from ..results.model import INFRA, RunResult, TestCounts
from ..spec import MAIN_REPO, KnownFailure, RpmRepo, Run, repository_keys
from ..vm.job import VMJob, VMOutcome
from ..wire.codec import WireError, read_json, write_document
from ..wire.conditions import Conditions
from ..wire.formats import RESULT
from ..wire.guest import AGENT_LOG, CONDITIONS_FILE, RESULT_FILE, TEST_DIR, TEST_LOG

RESULT_JSON_LIMIT = 1024 * 1024
RUN_FILE = "run.json"


@dataclass(frozen=True)
class ImageRef:
    """What a run needs of its base image, whether vmharness built it or the user gave it."""

    disk: Path
    kernel: Path | None
    initrd: Path | None
    cmdline: str
    apt_source: str
    suite: str
    label: str

    @classmethod
    def from_cache(cls, image: BaseImage) -> ImageRef:
        return cls(
            disk=image.disk,
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=image.cmdline,
            apt_source=image.apt_source,
            suite=image.suite,
            label=f"{image.recipe} {image.sha256[:12]}",
        )

    @classmethod
    def given(cls, path: Path) -> ImageRef:
        # A user's image boots from its own disk and keeps its own package sources.
        return cls(
            disk=path,
            kernel=None,
            initrd=None,
            cmdline="",
            apt_source="",
            suite="",
            label=path.name,
        )


@dataclass
class RunContext:
    run_dir: Path
    known_failures: list[KnownFailure] = field(default_factory=list)
    today: dt.date = field(default_factory=dt.date.today)
    # snapshot: restore a VM booted once and saved (fastest; needs the image's kernel) |
    # kernel: direct kernel boot | disk: the image's bootloader, as HTCondor's VM universe does
    boot: str = "snapshot"
    snapshot_store: Path | None = None  # where warm-boot snapshots are kept (the cache's)
    # The caching HTTP proxy for apt, as the guest reaches it (local: vmharness's own
    # apt-cacher-ng at 10.0.2.2; a pool: a site proxy from `submit --package-proxy`).
    package_proxy: str | None = None


VMExecutor = Callable[[VMJob], VMOutcome]


def log_dir_for(run_dir: Path, run: Run) -> Path:
    return run_dir / "runs" / run.id


def prepare(run: Run, image: ImageRef, ctx: RunContext, attempt: int) -> tuple[VMJob, dict]:
    """Make the run's folder, conditions and disks. Returns the VM job and phase timings."""
    log_dir = log_dir_for(ctx.run_dir, run)
    if log_dir.exists():  # an earlier attempt: keep it beside, for whoever debugs the retry
        log_dir.rename(log_dir.with_name(f"{run.id}.attempt{attempt - 1}-{int(time.time())}"))
    work = log_dir / "work"
    work.mkdir(parents=True)
    t0 = time.monotonic()
    text = conditions_for(
        run, main_source=image.apt_source, suite=image.suite, package_proxy=ctx.package_proxy
    ).to_toml()
    (log_dir / CONDITIONS_FILE).write_text(text, encoding="utf-8")
    make_input_disk(work / "input.img", text, run.test.suite)
    make_output_disk(work / "output.img", run.vm.output_size_mib)
    use_kernel = ctx.boot in ("snapshot", "kernel") and image.kernel is not None
    warm = ctx.boot == "snapshot" and use_kernel and ctx.snapshot_store is not None
    job = VMJob(
        name=f"vmharness-{run.id}",
        base_disk=image.disk,
        kernel=image.kernel if use_kernel else None,
        initrd=image.initrd if use_kernel else None,
        cmdline=image.cmdline,
        input_disk=work / "input.img",
        output_disk=work / "output.img",
        workdir=work,
        console_log=log_dir / "console.log",
        memory_mib=run.vm.memory_mib,
        cpus=run.vm.cpus,
        network=run.vm.network,
        wall_timeout_s=run.wall_timeout_s,
        snapshot_store=ctx.snapshot_store if warm else None,
    )
    return job, {"disks": time.monotonic() - t0}


def conditions_for(
    run: Run, *, main_source: str, suite: str, package_proxy: str | None = None
) -> Conditions:
    """The conditions of one run. `main_source` is the image's own apt line, `suite` its suite;
    `package_proxy` goes only to runs that fetch packages (network on, something to install)."""

    repos = dict(run.repositories)

    def lines(keys: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for key in keys:
            line = main_source if key == MAIN_REPO else repos.get(key)
            if isinstance(line, str) and line:  # the image's own repositories need no line
                out.append(line.replace("{suite}", suite))
        return tuple(out)

    def rpm(keys: tuple[str, ...]) -> tuple[tuple[tuple[str, str], ...], ...]:
        out: list[tuple[tuple[str, str], ...]] = []
        for key in keys:
            repo = repos.get(key)
            if isinstance(repo, RpmRepo):
                out.extend(s for s in repo.sections if s not in out)
        return tuple(out)

    install_keys, upgrade_keys = repository_keys(run.source)
    install = lines(install_keys)
    # Keeping the image's own sources when the spec only names `main` avoids a needless rewrite.
    if install == (main_source,):
        install = ()
    upgrade = lines(upgrade_keys)
    rpm_install, rpm_upgrade = rpm(install_keys), rpm(upgrade_keys)
    apt_runs = run.vm.network != "none" and bool(
        install or upgrade or rpm_install or rpm_upgrade or run.package_set.packages
    )
    return Conditions(
        run_id=run.id,
        platform=run.platform.name,
        source=run.source.label,
        package_set=run.package_set.label,
        network=run.vm.network != "none",
        debug=run.vm.debug,
        install_repos=install,
        upgrade_repos=upgrade,
        packages=run.package_set.packages,
        test_command=run.test.command,
        test_timeout_s=run.test.timeout_s,
        test_env=run.test.env,
        results_file=run.test.results,
        has_suite=run.test.suite is not None,
        package_proxy=package_proxy if apt_runs else None,
        rpm_install=rpm_install,
        rpm_upgrade=rpm_upgrade,
        package_manager=None if run.vm.package_manager == "auto" else run.vm.package_manager,
        selinux="enforcing" if run.package_set.selinux else "permissive",
    )


def fetches_packages(run: Run) -> bool:
    """Whether the run's guest may run apt against a network (and so use a package proxy)."""
    return run.vm.network != "none" and bool(
        run.package_set.packages or run.source.upgrade_to or set(run.source.repos) - {MAIN_REPO}
    )


def collect(
    run: Run,
    job: VMJob,
    outcome: VMOutcome,
    ctx: RunContext,
    attempt: int,
    phases: dict[str, float],
) -> RunResult:
    """Extract the output disk and decide the run's verdict. Never raises on guest data."""
    log_dir = log_dir_for(ctx.run_dir, run)
    t0 = time.monotonic()
    out_dir = log_dir / "output"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    extraction = extract(job.output_disk, out_dir, total_limit=run.vm.output_size_mib << 20)
    phases = {
        **phases,
        **outcome.phases,
        "vm": outcome.seconds,
        "extraction": time.monotonic() - t0,
    }
    result = decide(run, outcome, extraction, out_dir, job.console_log, ctx)
    result.attempt = attempt
    result.log_dir = str(log_dir.relative_to(ctx.run_dir))
    result.phases.update({k: round(v, 3) for k, v in phases.items()})
    # Making a snapshot is paid by the run that needed it first: part of its time.
    result.duration_s = round(
        sum(v for k, v in phases.items() if k in ("disks", "vm", "extraction", "snapshot")), 3
    )
    if extraction.skipped:
        _write_lines(
            log_dir / "extraction-skipped.txt",
            [f"{path}: {why}" for path, why in extraction.skipped],
        )
    # The disks are scratch once read; an unreadable output disk is kept for a post-mortem.
    job.input_disk.unlink(missing_ok=True)
    if extraction.error is None:
        job.output_disk.unlink(missing_ok=True)
    write_run_json(log_dir, result)
    return result


def _unreachable_repository(agent: dict, failed: object) -> str:
    """Why a death is not the execute host's, when the guest's network came up and a package
    repository still could not be reached: an outage of the repository looks the same from
    every host, and counting it would deny them all (hosts.py). A guest without a network
    (the agent's own network phase failed) still counts."""
    phases = agent.get("phases")
    failed_in = [
        p.get("name")
        for p in (phases if isinstance(phases, list) else [])
        if isinstance(p, dict) and p.get("ok") is False
    ]
    if failed == "network" and failed_in and failed_in[-1] in ("install", "update"):
        return "a package repository could not be reached from a guest whose network was up"
    return ""


def write_run_json(log_dir: Path, result: RunResult) -> None:
    """The attempt's verdict beside its logs, for whoever reads the run folder by hand."""
    write_document(log_dir / RUN_FILE, RESULT, result)


def settle(result: RunResult, *, infra_before: int, retries: int, removed: bool = False) -> bool:
    """Whether this attempt's verdict is the run's final one: the retry rule of every engine.

    Only infrastructure failures (`died`) are retried, at most `retries` times after the first
    attempt (`infra_before`: how many attempts of the run died before this one); a test
    verdict is a result, never retried. A job removed from a pool (by a person, or by the
    policy after a hold) is not retried either. A retried verdict says so in its reason."""
    final = result.status not in INFRA or removed or infra_before >= retries
    if not final:
        result.reason += f" (attempt {result.attempt}; retrying)"
    return final


def execute(
    run: Run, image: ImageRef, ctx: RunContext, vm: VMExecutor, attempt: int = 1
) -> RunResult:
    job, phases = prepare(run, image, ctx, attempt)
    outcome = vm(job)
    return collect(run, job, outcome, ctx, attempt, phases)


def decide(
    run: Run,
    outcome: VMOutcome,
    extraction: Extraction,
    out_dir: Path,
    console_log: Path,
    ctx: RunContext,
) -> RunResult:
    base = {
        "run_id": run.id,
        "accelerator": outcome.accelerator,
        "host": outcome.host,
        "boot": outcome.boot,
    }

    def verdict(status: str, reason: str, **extra: object) -> RunResult:
        return RunResult(status=status, reason=reason, **base, **extra)  # type: ignore[arg-type]

    if outcome.ended == "error":
        return verdict("died", outcome.reason or "the VM failed to start")
    agent, invalid = _read_result_json(out_dir / RESULT_FILE)
    if outcome.ended == "timeout":
        return verdict("timeout", outcome.reason + _partial(extraction))
    # What the guest wrote, unreadable: the run's doing, not the execute host's (hosts.py).
    guest = "the guest spoiled what it sent back"
    if not extraction.files and extraction.error:
        return verdict("died", extraction.error, not_the_hosts=guest if extraction.by_guest else "")
    if invalid:
        return verdict("died", invalid, not_the_hosts=guest)
    if agent is None:
        return verdict("died", _why_no_result(out_dir, console_log))
    versions = {
        k: str(agent[k])
        for k in ("kernel", "agent_version", "hostname")
        if isinstance(agent.get(k), str)
    }
    phases = {}
    for p in agent.get("phases", []) if isinstance(agent.get("phases"), list) else []:
        if isinstance(p, dict) and isinstance(p.get("duration_s"), (int, float)):
            phases[f"guest:{str(p.get('name'))[:40]}"] = float(p["duration_s"])
    # A restored VM did not boot for this run: its time to start is the host's "restore".
    if isinstance(agent.get("boot_uptime_s"), (int, float)) and not agent.get(
        "restored_from_snapshot"
    ):
        phases["boot"] = float(agent["boot_uptime_s"])
    failed = agent.get("failed_phase")
    error = str(agent.get("error") or "")[:500]
    if failed in ("install", "update"):
        return verdict(failed, f"{failed} failed: {error}", versions=versions, phases=phases)
    if failed or (error and agent.get("test_exit_code") is None):
        return verdict(
            "died",
            f"agent: {error or failed}",
            versions=versions,
            phases=phases,
            not_the_hosts=_unreachable_repository(agent, failed),
        )
    code = agent.get("test_exit_code")
    code = code if isinstance(code, int) else None
    parsed = parse_results(
        out_dir / TEST_DIR, run.test.format, run.test.results, log_file=out_dir / TEST_LOG
    )
    counts = parsed.counts if parsed else TestCounts()
    problems = list(parsed.problems) if parsed else []
    problems_more = sum(parsed.problems_more.values()) if parsed else 0
    if agent.get("test_timed_out"):
        return verdict(
            "timeout",
            f"test still running after its timeout of {run.test.timeout_s}s; killed by the agent",
            counts=counts,
            problems=problems,
            problems_more=problems_more,
            versions=versions,
            phases=phases,
            exit_code=code,
        )
    status, reason = classify(
        parsed, exit_code=code, known_failures=ctx.known_failures, today=ctx.today
    )
    return verdict(
        status,
        reason,
        counts=counts,
        problems=problems,
        problems_more=problems_more,
        versions=versions,
        phases=phases,
        exit_code=code,
    )


def _read_result_json(path: Path) -> tuple[dict | None, str]:
    """What the agent wrote, or None and why it cannot be used ("" when there is none)."""
    what = f"{RESULT_FILE} from the guest"
    if not path.is_file():
        return None, ""
    try:
        data = read_json(path, limit=RESULT_JSON_LIMIT, what=what)
    except OSError as exc:
        return None, f"{what} cannot be read: {exc.strerror or exc}"
    except WireError as exc:  # not JSON, NaN, a number out of range, too deep, too large
        return None, str(exc)
    if not isinstance(data, dict):
        return None, f"{what} is not valid: not a JSON object"
    return data, ""


def _why_no_result(out_dir: Path, console_log: Path) -> str:
    console = ""
    try:
        with open(console_log, "rb") as f:  # the tail is what tells how it ended
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 256 * 1024))
            console = f.read().decode(errors="replace")
    except OSError:
        pass
    if "Kernel panic" in console:
        line = next((ln for ln in console.splitlines() if "Kernel panic" in ln), "")
        return f"guest kernel panic: {line.split('] ', 1)[-1].strip()[:200]} (see console.log)"
    if (out_dir / AGENT_LOG).exists():
        return (
            "the agent stopped without writing result.json (it crashed or was killed); "
            "see output/agent.log and console.log"
        )
    if "vmharness-agent" in console:
        return "the agent started but could not write to the output disk; see console.log"
    return "the agent never started (boot failed?); see console.log"


def _partial(extraction: Extraction) -> str:
    n = len(extraction.files)
    return f"; partial logs kept ({n} file{'s' if n != 1 else ''})" if n else "; no logs"


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))
