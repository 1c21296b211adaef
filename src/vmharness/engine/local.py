"""The local engine: a run folder's matrix on this machine, images first, then runs in
parallel within this machine's means.

Parallelism is bounded by cores and by memory (never more guest memory than the machine has
available). Infrastructure failures (`died`) are retried up to `retries` times; test verdicts
are results and are never retried here. Every transition goes through the run database, so a
killed vmharness resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..errors import InfraError, SpecError
from ..images.cache import DEFAULT_MAX_AGE_S, BaseImage, ImageCache
from ..images.recipe import builtin_names, load_recipe
from ..report import one_line
from ..results.model import INFRA, PASSING, RunResult
from ..rundir import RunFolder
from ..spec import Run, parse_size_mib
from ..state import PENDING, RunDB
from ..vm.accel import choose_accelerator
from ..vm.pkgproxy import DEFAULT_MAX, MAX_ENV, PackageProxy, ProxyUnavailable
from ..vm.qemu import LocalVMs, check_free_space, snapshot_shape, vm_disk_need
from ..vm.snapshots import SnapshotStore
from .attempt import ImageRef, RunContext, VMExecutor, execute, fetches_packages, settle

VM_OVERHEAD_MIB = 256  # qemu itself, per VM, beyond the guest's memory
HOST_RESERVE_MIB = 1024
DEFAULT_RETRIES = 2


AUTO_PROXY = "auto"  # vmharness's own apt-cacher-ng, when a run installs packages
NO_PROXY = ("none", "off", "")


def mem_available_mib() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 2048


def parallel_slots(runs: list[Run], requested: int | None = None) -> tuple[int, str]:
    """How many VMs at once, and why that many."""
    cores = os.cpu_count() or 1
    biggest = max((r.vm.memory_mib for r in runs), default=1024) + VM_OVERHEAD_MIB
    by_memory = max(1, (mem_available_mib() - HOST_RESERVE_MIB) // biggest)
    by_cpu = max(1, cores // max(1, min((r.vm.cpus for r in runs), default=1)))
    limit = min(by_cpu, by_memory)
    if requested:
        n = min(requested, by_memory)
        why = f"{n} at once (asked {requested}" + (
            f", memory allows {by_memory})" if requested > by_memory else ")"
        )
        return n, why
    return limit, f"{limit} at once ({cores} cores, memory for {by_memory})"


@dataclass
class Progress:
    """What the live table shows; updated from worker threads. Labels are the spec's: shown as
    text (a `[/]` in one is not rich markup)."""

    total: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: dict[str, tuple[Run, float, int]] = field(default_factory=dict)
    done: dict[str, RunResult] = field(default_factory=dict)

    def table(self) -> Table:
        with self.lock:
            t = Table(title=f"{len(self.done)}/{self.total} runs done", expand=False)
            for col in ("run", "platform", "source", "package set", "state", "time"):
                t.add_column(col)
            now = time.monotonic()
            for run_id, (run, start, attempt) in sorted(self.running.items()):
                state = "running" + (f" (attempt {attempt})" if attempt > 1 else "")
                t.add_row(
                    Text(run_id),
                    Text(run.platform.name),
                    Text(run.source.label),
                    Text(run.package_set.label),
                    Text(state, style="yellow"),
                    Text(f"{now - start:5.0f}s"),
                )
            counts: dict[str, int] = {}
            for r in self.done.values():
                counts[r.status] = counts.get(r.status, 0) + 1
            if counts:
                t.caption = Text("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
            return t


def run_matrix(
    db: RunDB,
    runs: list[Run],
    images: dict[str, ImageRef],
    ctx: RunContext,
    vm: VMExecutor,
    *,
    slots: int,
    retries: int = DEFAULT_RETRIES,
    console: Console | None = None,
    on_result: Callable[[Run, RunResult], None] | None = None,
    on_interrupt: Callable[[], object] | None = None,
) -> dict[str, RunResult]:
    """Run every pending run of `runs` (others are already done). Returns the new verdicts."""
    console = console or Console()
    states = db.states()
    todo = [r for r in runs if states.get(r.id, (PENDING, 0))[0] == PENDING]
    progress = Progress(total=len(runs))
    progress.done.update({k: v for k, v in db.results().items() if states[k][0] == "done"})
    results: dict[str, RunResult] = {}

    def one(run: Run) -> RunResult:
        attempt = db.start_attempt(run.id)
        with progress.lock:
            progress.running[run.id] = (run, time.monotonic(), attempt)
        try:
            result = execute(run, images[run.platform.name], ctx, vm, attempt)
        except Exception as exc:  # our side failed (disk tools, qemu missing): infra, retry
            result = RunResult(
                run_id=run.id,
                status="died",
                attempt=attempt,
                reason=f"vmharness could not run it: {exc}",
            )
        result.attempt = attempt
        final = settle(result, infra_before=db.count_attempts(run.id, "died"), retries=retries)
        db.finish_attempt(result, final=final)
        with progress.lock:
            progress.running.pop(run.id, None)
            if final:
                progress.done[run.id] = result
        if final and on_result:
            on_result(run, result)
        return result

    queue = list(todo)
    live = (
        Live(
            progress.table(),
            console=console,
            refresh_per_second=2,
            transient=True,
            auto_refresh=False,
        )
        if console.is_terminal
        else None
    )
    stopped: KeyboardInterrupt | None = None
    with ThreadPoolExecutor(max_workers=slots) as pool:
        pending: dict[Future[RunResult], Run] = {}
        if live:
            live.start()
        try:
            while queue or pending:
                while queue and len(pending) < slots:
                    run = queue.pop(0)
                    pending[pool.submit(one, run)] = run
                finished, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    run = pending.pop(fut)
                    result = fut.result()
                    if result.status in INFRA and db.states()[run.id][0] == PENDING:
                        queue.append(run)  # retry at the back, after the others had a turn
                    else:
                        results[run.id] = result
                if live:
                    live.update(progress.table(), refresh=True)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Terminated)
            stopped = exc
            queue.clear()
            for fut in pending:
                fut.cancel()
            if on_interrupt:  # stop the VMs so the pool's threads can end
                on_interrupt()
        finally:
            if live:
                live.stop()
    if stopped is not None:
        # Every worker has ended (leaving the `with` waited for them): the runs they were doing
        # go back to pending, their attempts recorded as interrupted, for `vmharness resume`.
        db.recover_interrupted()
        raise stopped
    return results


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
            images[plat.name] = ImageRef.from_cache(
                import_image(plat.name, plat.image, cache, console)
            )
            continue
        if plat.recipe is None:
            raise SpecError(
                f"platform {plat.name} maps to no recipe or image",
                hint=f"map it with --platform-map; built-in recipes: {', '.join(builtin_names())}",
            )
        recipe = load_recipe(plat.recipe)
        # A status line is always read as markup by rich: Text keeps names and messages text.
        with console.status(Text(f"image for {plat.name}: looking up the cache")) as status:
            t0 = time.monotonic()

            def say(msg: str, _s=status, _n=plat.name, _t=t0) -> None:
                if msg.startswith("WARNING"):  # must stay on screen, not in the status line
                    console.print(Text(f"image for {_n}: {msg}", style="yellow"), highlight=False)
                _s.update(Text(f"image for {_n} [{time.monotonic() - _t:4.0f}s]: {msg}"))

            image = cache.get(recipe, max_age_s=max_age_s, rebuild=rebuild, progress=say)
        age = image.age_s()
        console.print(
            Text.assemble(
                "image ",
                (plat.name, "bold"),
                f": {image.folder.name} ({image.size_bytes / 1e6:.0f} MB, "
                f"built {age / 3600:.1f} h ago)",
            )
        )
        images[plat.name] = ImageRef.from_cache(image)
    return images


def import_image(
    platform: str, path: Path, cache: ImageCache, console: Console, name: str | None = None
) -> BaseImage:
    """A given image file made a vmharness image (imported on first use, then cached)."""
    with console.status(Text(f"image for {platform}: looking up {path.name}")) as status:
        t0 = time.monotonic()

        def say(msg: str, _s=status, _t=t0) -> None:
            _s.update(Text(f"image for {platform} [{time.monotonic() - _t:4.0f}s]: {msg}"))

        def accel() -> str:  # libguestfs's appliance boots like any VM here
            probe = next((i.kernel for i in cache.list() if i.kernel.is_file()), None)
            return choose_accelerator(probe, cache.root, say=say)

        image = cache.import_image(path, name=name, accel=accel, progress=say)
    console.print(
        Text.assemble(
            "image ",
            (platform, "bold"),
            f": {image.folder.name} ({image.size_bytes / 1e6:.0f} MB), imported from "
            f"{image.origin}",
        ),
        highlight=False,
    )
    return image


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
    package_proxy: str = AUTO_PROXY,
    package_cache_max: str | None = None,
) -> None:
    runs = folder.db.runs()
    images = images_for(runs, cache, console, max_age_s=max_age_s, rebuild=rebuild)
    probe_kernel = next((i.kernel for i in images.values() if i.kernel), None)
    accel = choose_accelerator(probe_kernel, cache.root, say=lambda m: console.print(Text(m)))
    slots, why = parallel_slots(runs, jobs)
    recovered = folder.db.recover_interrupted()
    if recovered:
        console.print(f"resuming: {len(recovered)} run(s) were interrupted and will run again")
    pending = sum(1 for s, _ in folder.db.states().values() if s == "pending")
    if 0 < pending < slots:
        slots, why = pending, f"{pending} at once (as many as there are runs)"
    console.print(
        Text.assemble(f"{pending} run(s) to do, {why}; logs in ", (str(folder.path), "bold"))
    )
    todo = [run for run in runs if folder.db.states()[run.id][0] == "pending"]
    check_disk_space(folder.path, todo, slots)
    store = cache.root / "snapshots"
    if boot == "snapshot":
        # Those of images the cache no longer has are ~130 MB of nothing.
        with contextlib.suppress(OSError):  # tidying up must never stop the runs
            SnapshotStore(store).prune({image.folder.name for image in cache.list()})
        console.print(Text(_snapshot_plan(todo, images, accel, SnapshotStore(store))))
    with contextlib.ExitStack() as stack:
        proxy = _package_proxy(package_proxy, package_cache_max, todo, cache, console, stack)
        ctx = RunContext(
            run_dir=folder.path,
            boot=boot,
            snapshot_store=store,
            known_failures=folder.known_failures(),
            package_proxy=proxy,
        )
        _run_all(folder, runs, images, ctx, accel, slots, retries, console)


MIB = 1024 * 1024


def package_cache_limit(given: str | None) -> int:
    """--package-cache-max, else $VMHARNESS_PACKAGE_CACHE_MAX, else the default, in bytes.
    Read only when the cache is used: a bad value never stops runs that do not use it."""
    field, text = "--package-cache-max", given
    if text is None:
        field, text = f"${MAX_ENV}", os.environ.get(MAX_ENV) or DEFAULT_MAX
    return parse_size_mib(text, field=field) * MIB


def check_package_cache_limit(choice: str, max_given: str | None, runs: list[Run]) -> None:
    """Refuse a bad cache limit before anything is made, if these runs would use the cache."""
    if choice == AUTO_PROXY and any(fetches_packages(run) for run in runs):
        package_cache_limit(max_given)


def _package_proxy(
    choice: str,
    max_given: str | None,
    todo: list[Run],
    cache: ImageCache,
    console: Console,
    stack: contextlib.ExitStack,
) -> str | None:
    """The package proxy URL the guests get: a given one, none, or (auto) the cache's own
    apt-cacher-ng, started for as long as the runs last (and shared with other vmharness)."""
    if choice.lower() in NO_PROXY or not any(fetches_packages(run) for run in todo):
        return None
    if choice != AUTO_PROXY:
        console.print(Text(f"package proxy: {choice} (given)"))
        return choice
    max_bytes = package_cache_limit(max_given)  # a bad value: a SpecError, exit 2
    proxy = PackageProxy(cache.root, max_bytes=max_bytes)
    try:
        info = proxy.start()
    except (ProxyUnavailable, OSError) as exc:
        console.print(Text.assemble(("package cache off:", "yellow"), f" {exc}"), highlight=False)
        return None
    stack.callback(proxy.release)
    trimmed = proxy.trimmed
    size = trimmed.size_after if trimmed else proxy.size_bytes()
    console.print(
        Text(
            f"package cache: {proxy.folder} ({size / 1e6:.0f} MB), apt-cacher-ng on "
            f"127.0.0.1:{info.port}, the guests' {info.guest_url}"
        ),
        highlight=False,
    )
    if trimmed and trimmed.files:
        console.print(
            Text(
                f"package cache: it held {trimmed.size_before / MIB:.0f} MiB, over its limit of "
                f"{max_bytes / MIB:.0f} MiB (--package-cache-max): removed the {trimmed.files} "
                f"file(s) used least recently ({trimmed.removed / MIB:.0f} MiB); they are fetched "
                "again if a run asks for them"
            ),
            highlight=False,
        )
    if trimmed and trimmed.size_after > max_bytes:
        console.print(
            Text.assemble(
                ("package cache:", "yellow"),
                f" still {trimmed.size_after / MIB:.0f} MiB, over its limit: some files could not "
                f"be removed; see who owns the files under {proxy.data}",
            ),
            highlight=False,
        )
    return info.guest_url


def _run_all(
    folder: RunFolder,
    runs: list[Run],
    images: dict[str, ImageRef],
    ctx: RunContext,
    accel: str,
    slots: int,
    retries: int,
    console: Console,
) -> None:

    def line(run: Run, result: RunResult) -> None:
        console.print(result_line(run, result))

    folder.db.set_meta(accelerator=accel)
    vms = LocalVMs(accel)
    run_matrix(
        folder.db,
        runs,
        images,
        ctx,
        vms,
        slots=slots,
        retries=retries,
        console=console,
        on_result=line,
        on_interrupt=vms.stop_all,
    )


def check_disk_space(folder: Path, todo: list[Run], slots: int) -> None:
    """Before any VM starts: room in the run folder for the VMs that run at once (each checks
    again for itself when it starts: vm/qemu.py)."""
    needs = sorted((vm_disk_need(run.vm.output_size_mib << 20) for run in todo), reverse=True)
    if needs:
        n = min(slots, len(needs))
        check_free_space(folder, sum(needs[:n]), f"{n} VM(s) at once would")


def result_line(run: Run, result: RunResult) -> Text:
    """A finished run's line: its status in colour, then labels and reason as plain text (a
    reason quotes the guest's test names, brackets and all)."""
    colour = "green" if result.status in PASSING else "red"
    return Text.assemble(
        (f"{result.status:8}", colour),
        f" {run.id} {run.platform.name} / {run.source.label} / {run.package_set.label}  "
        f"{result.duration_s:6.1f}s  {one_line(result.reason, 100)}",
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
                    snapshot_shape(
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
