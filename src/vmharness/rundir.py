"""The run folder: where one matrix's runs, database, logs and reports live.

    RUNDIR/state.sqlite          runs, attempts, verdicts (see state.py)
    RUNDIR/runs/<id>/            each run's logs (see runner.py)
    RUNDIR/report.html, junit.xml, results.json

Owns creating and reopening it, getting each platform's image, running it locally, and
rebuilding its reports from the database alone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform as host_platform
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from . import __version__
from .backends import local
from .backends.snapshots import SnapshotStore
from .errors import InfraError, SpecError
from .images.cache import DEFAULT_MAX_AGE_S, ImageCache
from .images.recipe import builtin_names, load_recipe
from .report import ReportInput, compare, render_terminal, write_all
from .report.jsonout import read_json
from .results.model import PASSING, RunResult
from .runner import ImageRef, RunContext
from .scheduler import DEFAULT_RETRIES, parallel_slots, run_matrix
from .spec import Run, Spec
from .state import RunDB, known_failures_from_json, known_failures_to_json


@dataclass
class RunFolder:
    path: Path
    db: RunDB

    @classmethod
    def create(cls, spec: Spec, runs: list[Run], out: Path | None, *, backend: str) -> RunFolder:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = out or Path("runs") / f"{stamp}-{spec.path.stem}"
        if (path / "state.sqlite").exists():
            raise SpecError(
                f"{path} already holds a run",
                hint=f"use `vmharness resume {path}` or choose another --out",
            )
        path.mkdir(parents=True, exist_ok=True)
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
        return cls(path=path, db=db)

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        return cls(path=path, db=RunDB.open_existing(path))

    def context(self, boot: str = "kernel", snapshot_store: Path | None = None) -> RunContext:
        meta = self.db.meta()
        return RunContext(
            run_dir=self.path,
            boot=boot,
            snapshot_store=snapshot_store,
            known_failures=known_failures_from_json(meta.get("known_failures", [])),
        )

    def report_input(self) -> ReportInput:
        meta = self.db.meta()
        results = self.db.results()
        states = self.db.states()
        entries: list[tuple[Run, RunResult | None]] = []
        for run in self.db.runs():
            done = states.get(run.id, ("pending", 0))[0] == "done"
            entries.append((run, results.get(run.id) if done else None))
        return ReportInput(
            title=meta.get("title", "vmharness"),
            run_dir=self.path,
            started=meta.get("started", ""),
            backend=meta.get("backend", "local"),
            entries=entries,
        )

    def write_reports(
        self, console: Console, previous: Path | None = None, *, show: bool = True
    ) -> dict[str, Path]:
        inp = self.report_input()
        prev = None
        if previous is not None:
            prev_json = previous / "results.json"
            if not prev_json.is_file():
                raise SpecError(
                    f"{previous} has no results.json to compare with",
                    hint="give a run folder that finished with reports",
                )
            prev = read_json(prev_json)
        paths = write_all(inp, previous=prev)
        if show:
            render_terminal(inp, console, comparison=compare(inp, prev) if prev else None)
        return paths

    def all_passed(self) -> bool:
        states = self.db.states()
        results = self.db.results()
        return all(states[r][0] == "done" and results[r].status in PASSING for r in states)


def images_for(
    runs: list[Run],
    cache: ImageCache,
    console: Console,
    *,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    rebuild: bool = False,
) -> dict[str, ImageRef]:
    """Each platform's image: from the cache, built when missing or too old."""
    images: dict[str, ImageRef] = {}
    for run in runs:
        plat = run.platform
        if plat.name in images:
            continue
        if plat.image is not None:
            if not plat.image.is_file():
                raise SpecError(f"image file {plat.image} for platform {plat.name} is missing")
            images[plat.name] = ImageRef.given(plat.image)
            continue
        if plat.recipe is None:
            raise SpecError(
                f"platform {plat.name} maps to no recipe or image",
                hint=f"map it with --platform-map; built-in recipes: {', '.join(builtin_names())}",
            )
        recipe = load_recipe(plat.recipe)
        with console.status(f"image for {plat.name}: looking up the cache") as status:
            t0 = time.monotonic()

            def say(msg: str, _s=status, _n=plat.name, _t=t0) -> None:
                if msg.startswith("WARNING"):  # must stay on screen, not in the status line
                    console.print(f"[yellow]image for {_n}: {msg}", highlight=False)
                _s.update(f"image for {_n} [{time.monotonic() - _t:4.0f}s]: {msg}")

            image = cache.get(recipe, max_age_s=max_age_s, rebuild=rebuild, progress=say)
        age = image.age_s()
        console.print(
            f"image [bold]{plat.name}[/]: {image.folder.name} "
            f"({image.size_bytes / 1e6:.0f} MB, built {age / 3600:.1f} h ago)"
        )
        images[plat.name] = ImageRef.from_cache(image)
    return images


def run_locally(
    folder: RunFolder,
    cache: ImageCache,
    console: Console,
    *,
    jobs: int | None,
    retries: int = DEFAULT_RETRIES,
    boot: str = "snapshot",
    max_age_s: float = DEFAULT_MAX_AGE_S,
    rebuild: bool = False,
) -> None:
    runs = folder.db.runs()
    images = images_for(runs, cache, console, max_age_s=max_age_s, rebuild=rebuild)
    probe_kernel = next((i.kernel for i in images.values() if i.kernel), None)
    accel = local.choose_accelerator(probe_kernel, cache.root, say=lambda m: console.print(m))
    slots, why = parallel_slots(runs, jobs)
    recovered = folder.db.recover_interrupted()
    if recovered:
        console.print(f"resuming: {len(recovered)} run(s) were interrupted and will run again")
    pending = sum(1 for s, _ in folder.db.states().values() if s == "pending")
    if 0 < pending < slots:
        slots, why = pending, f"{pending} at once (as many as there are runs)"
    console.print(f"{pending} run(s) to do, {why}; logs in [bold]{folder.path}[/]")
    store = cache.root / "snapshots"
    if boot == "snapshot":
        # Those of images the cache no longer has are ~130 MB of nothing.
        with contextlib.suppress(OSError):  # tidying up must never stop the runs
            SnapshotStore(store).prune({image.folder.name for image in cache.list()})
        todo = [run for run in runs if folder.db.states()[run.id][0] == "pending"]
        console.print(_snapshot_plan(todo, images, accel, SnapshotStore(store)))
    ctx = folder.context(boot, snapshot_store=store)

    def line(run: Run, result: RunResult) -> None:
        colour = "green" if result.status in PASSING else "red"
        console.print(
            f"[{colour}]{result.status:8}[/] {run.id} {run.platform.name} / "
            f"{run.source.label} / {run.package_set.label}  "
            f"{result.duration_s:6.1f}s  {result.reason[:100]}"
        )

    folder.db.set_meta(accelerator=accel)
    run_matrix(
        folder.db,
        runs,
        images,
        ctx,
        lambda job: local.run_vm(job, accel),
        slots=slots,
        retries=retries,
        console=console,
        on_result=line,
        on_interrupt=local.stop_all,
    )


def _snapshot_plan(
    runs: list[Run], images: dict[str, ImageRef], accel: str, store: SnapshotStore
) -> str:
    """Says how the VMs will start: from how many warm-boot snapshots, and how many of those
    the first run of their shape makes (it takes that run a boot longer, once)."""
    keys: set[str] = set()
    booting = 0
    for run in runs:
        image = images[run.platform.name]
        if image.kernel is None:  # an image of the user's boots from its own disk
            booting += 1
            continue
        with contextlib.suppress(OSError):
            keys.add(
                store.key(
                    local.snapshot_shape(
                        image.disk,
                        image.kernel,
                        image.initrd,
                        image.cmdline,
                        accel,
                        memory_mib=run.vm.memory_mib,
                        cpus=run.vm.cpus,
                        network=run.vm.network,
                    )
                )
            )
    missing = sum(1 for key in keys if store.find(key) is None)
    text = f"VMs start from {len(keys)} warm-boot snapshot(s)"
    if missing:
        text += (
            f"; {missing} not made yet: the first run of each makes it (one boot, "
            f"{'about 12 s under TCG' if accel == 'tcg' else 'a few seconds'})"
        )
    if booting:
        text += f"; {booting} run(s) on given images boot from their disk"
    return text


def check_can_run(results: dict[str, RunResult]) -> None:
    if results and all(r.status == "died" for r in results.values()):
        first = next(iter(results.values()))
        raise InfraError(
            f"no run could be done: {first.reason}",
            hint="look at the console.log of a run under runs/",
        )
