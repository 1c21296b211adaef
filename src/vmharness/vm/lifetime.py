"""qemu never outlives the vmharness that started it.

Stopped cleanly when vmharness is interrupted (Ctrl-C, or SIGTERM, which the CLI turns into the
same interrupt): `VMProcesses.stop_all` quits every VM and the runs are kept for `resume`.
Killed by the kernel when vmharness dies without a chance to do that (kill -9, the OOM killer):
every qemu is started with PR_SET_PDEATHSIG = SIGKILL. Without it a VM restored from a
snapshot waits for its incoming state for ever, and a booting one runs until its guest powers
off, holding a run folder that a `resume` is about to use again.

The kernel sends that signal when the *thread* that forked the child ends, not the process
(prctl(2)); VMs are started from the engine's worker threads, which end with their thread
pool. So every qemu is forked by one thread kept for the life of the process (`spawn`), which
ends only when the process does. The child checks, after setting the signal, that vmharness is
still its parent: if vmharness died between fork and prctl the signal would never come.

A qemu that crashes leaves no core file: one is as large as the guest's memory, lands in the
folder qemu runs in (a pool job's sandbox, where a root-owned one also breaks the job's file
transfer), and is no use to a test run.

(The other way, a registry of pid files that the next vmharness reaps, leaves VMs running
until someone starts vmharness again, and can kill a stranger's process that got a recycled
pid; the kernel's way has neither problem.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from typing import Any

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with(parent: int):
    """The child's last step before exec: SIGKILL when `parent`'s forking thread ends; no
    core file."""

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if _LIBC is not None and _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0):
            os._exit(126)  # could not tie it to us: better no VM than an immortal one
        if os.getppid() != parent:  # vmharness is already gone
            os._exit(126)

    return preexec


class _Spawner:
    """The one thread that forks every qemu of this process (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def __call__(self, cmd: list[str], **popen: Any) -> subprocess.Popen:
        popen["preexec_fn"] = _die_with(os.getpid())
        if threading.current_thread() is self._thread:
            return subprocess.Popen(cmd, **popen)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._serve, name="vmharness qemu spawner", daemon=True
                )
                self._thread.start()
        started: Future[subprocess.Popen] = Future()
        self._requests.put((started, cmd, popen))
        try:
            return started.result()
        except BaseException:
            # Interrupted while it was being started: nobody will know it, so it must not live.
            started.add_done_callback(_kill_started)
            raise

    def _serve(self) -> None:
        while True:
            started, cmd, popen = self._requests.get()
            if not started.set_running_or_notify_cancel():
                continue
            try:
                started.set_result(subprocess.Popen(cmd, **popen))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                started.set_exception(exc)


def _kill_started(started: Future) -> None:
    if started.exception() is None:
        proc = started.result()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


spawn = _Spawner()
"""spawn(cmd, **popen) -> Popen: a child (qemu) that the kernel kills when vmharness ends."""
