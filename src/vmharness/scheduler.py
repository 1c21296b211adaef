"""Running a matrix locally: images first, then runs in parallel within this machine's means.

Parallelism is bounded by cores and by memory (never more guest memory than the machine has
available). Infrastructure failures (`died`) are retried up to `retries` times; test verdicts
are results and are never retried here. Every transition goes through the run database, so a
killed vmharness resumes where it stopped.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .results.model import INFRA, RunResult
from .runner import ImageRef, RunContext, VMExecutor, execute
from .spec import Run
from .state import PENDING, RunDB

VM_OVERHEAD_MIB = 256  # qemu itself, per VM, beyond the guest's memory
HOST_RESERVE_MIB = 1024
DEFAULT_RETRIES = 2


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
    """What the live table shows; updated from worker threads."""

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
                    run_id,
                    run.platform.name,
                    run.source.label,
                    run.package_set.label,
                    f"[yellow]{state}",
                    f"{now - start:5.0f}s",
                )
            counts: dict[str, int] = {}
            for r in self.done.values():
                counts[r.status] = counts.get(r.status, 0) + 1
            if counts:
                t.caption = "  ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
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
        infra_before = db.count_attempts(run.id, "died")
        final = result.status not in INFRA or infra_before + 1 > retries
        if not final:
            result.reason += f" (attempt {attempt}; retrying)"
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
        except KeyboardInterrupt:
            queue.clear()
            for fut in pending:
                fut.cancel()
            if on_interrupt:  # stop the VMs so the pool's threads can end
                on_interrupt()
            raise
        finally:
            if live:
                live.stop()
    return results
