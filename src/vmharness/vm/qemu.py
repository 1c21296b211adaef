"""Running one VM job with qemu on this machine: command lines, the processes, snapshots.

The accelerator is chosen by accel.py; the local engine and a pool job's execute side both
run their VMs through `LocalVMs` here.

Three ways to start a run's VM:
- from a warm-boot snapshot (the default for images vmharness built): a VM of the same shape
  was booted once and saved where its agent waits for a run's disks (snapshots.py); each run
  restores it and hot-plugs its input and output disks into two PCIe ports kept free for them.
  No boot at all: under emulation this takes a trivial run from ~15 s to ~5 s.
- direct kernel boot with the image's kernel and initrd: what a snapshot is made from, and the
  fallback whenever a snapshot cannot be made or restored;
- from the image's own disk through its bootloader, as HTCondor's VM universe boots it.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from qemu.qmp.legacy import QEMUMonitorProtocol

from ..errors import InfraError
from ..wire import guest
from ..wire.guest import NETWORK_FLAG, SNAPSHOT_FLAG
from .accel import QEMU, qemu_version
from .console import CONSOLE_LIMIT, ConsoleLog
from .job import VMJob, VMOutcome
from .lifetime import spawn
from .snapshots import Snapshot, SnapshotStore

# The agent of a VM booted with SNAPSHOT_FLAG on its kernel command line says READY_MARKER when
# it is ready to be saved (see the guest agent).
READY_MARKER = guest.READY_MARKER.encode()
# ...and, restored, this once it has found the run's disks: a guest that cannot see hot-plugged
# disks (a kernel without PCIe hot-plug, in an image of the user's) would otherwise wait until
# the wall-clock timeout and every run of it would be a `timeout`.
DISKS_FOUND_MARKER = guest.DISKS_FOUND_MARKER.encode()
DISKS_FOUND_TIMEOUT_S = 60
SNAPSHOT_BOOT_TIMEOUT_S = 300  # boot to READY_MARKER; ~11 s under TCG on a quiet machine
MIGRATION_TIMEOUT_S = 120  # saving or restoring the state; about a second here
# Hot-pluggable PCIe ports for a restored VM's two run disks, and the nodes plugged into them.
RUN_DISK_PORTS = (("vmh-port-out", "vmh-out"), ("vmh-port-in", "vmh-in"))
# What a VM may need on the disk of its run folder, beyond what is there when it starts: its
# console (capped), what the guest writes to its output disk (a sparse file until written), and
# a floor for its root disk's overlay (which grows with what the guest writes there; no cap).
OVERLAY_RESERVE = 256 << 20


class VMInterrupted(BaseException):
    """The VM was stopped because vmharness is being interrupted: not a verdict on the run.

    A BaseException so that no `except Exception` records it as a failure; the run stays
    `running` in the database and resume runs it again."""


def qemu_command(job: VMJob, accel: str, overlay: Path, qmp_socket: Path) -> list[str]:
    """A VM that boots: the machine with the run's disks attached from the start."""
    return (
        _machine(job, accel, overlay, qmp_socket)
        + [
            "-drive",
            f"file={_opt(job.input_disk)},if=virtio,format=raw,readonly=on",
            # writeback: what the guest wrote is in the file even if qemu is killed at the timeout
            "-drive",
            f"file={_opt(job.output_disk)},if=virtio,format=raw,cache=writeback",
        ]
        + _kernel_args(job, accel, job.cmdline)
    )


def _network_flag(job: VMJob) -> str:
    """A VM with a network is saved with udev and the network up (network-ready snapshot)."""
    return f" {NETWORK_FLAG}" if job.network == "user" else ""


def _opt(path: Path) -> str:
    """A path inside a qemu option list, where a comma separates options unless doubled."""
    return str(path).replace(",", ",,")


def _warm_command(job: VMJob, accel: str, overlay: Path, qmp_socket: Path) -> list[str]:
    """The VM a snapshot is made from, and restored into: no run disks, two free PCIe ports.

    Making and restoring must use this same command (devices and their order): a migration
    stream only loads into the machine it was saved from."""
    ports: list[str] = []
    for n, (port, _node) in enumerate(RUN_DISK_PORTS, start=1):
        ports += ["-device", f"pcie-root-port,id={port},chassis={n},slot={n}"]
    return (
        _machine(job, accel, overlay, qmp_socket)
        + ports
        + _kernel_args(job, accel, f"{job.cmdline} {SNAPSHOT_FLAG}{_network_flag(job)}")
    )


def machine_command(
    job: VMJob, accel: str, qmp_socket: Path, console: Path | None = None
) -> list[str]:
    """The machine of every vmharness VM (accelerator, CPU, memory, serial console, QMP,
    network) with no disk: the VM universe helper adds the job's own (vm/universe.py). The
    serial console is qemu's stdout; VMProcesses.start writes it to the run's console file."""
    return _machine(job, accel, None, qmp_socket)


# Software emulation's CPU: everything qemu can emulate (an image may need x86-64-v3) except
# "fast string" copies. With ERMS/FSRM the guest's kernel (page clearing, copies to and from
# user space) and glibc's memcpy/memset use `rep movsb`/`rep stosb`, which TCG executes one
# byte per step: measured, a run installing curl took 13.5 s with them and 12.7 s without.
TCG_CPU = "max,erms=off,fsrm=off"
# And its guests' kernels: no address-space randomisation. TCG finds code it translated again
# only where it ran before, so each process whose ld.so and libc land at new random addresses
# has them translated anew. Measured in a guest: 100 starts of /bin/true 2.6 s with it and
# 0.5 s without, `apt-get install curl` 7.4-8.4 s and 5.2-5.3 s. A throw-away test VM loses
# nothing by it; under KVM it costs nothing and the guest keeps it.
TCG_KERNEL_FLAGS = "norandmaps"


def cpu_model(accel: str) -> str:
    """qemu's -cpu for ACCEL: the host's own CPU under KVM, TCG_CPU otherwise."""
    return "host" if accel == "kvm" else TCG_CPU


def emulation_kernel_flags(accel: str) -> str:
    """What a directly booted guest's kernel gets after the image's command line under ACCEL."""
    return "" if accel == "kvm" else TCG_KERNEL_FLAGS


def _machine(job: VMJob, accel: str, overlay: Path | None, qmp_socket: Path) -> list[str]:
    cpu = cpu_model(accel)
    cmd = [
        QEMU,
        "-name",
        job.name,
        "-machine",
        f"q35,accel={accel}",
        "-cpu",
        cpu,
        "-m",
        str(job.memory_mib),
        "-smp",
        str(job.cpus),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-no-user-config",
        # The serial console goes to qemu's stdout, a pipe: console.py writes console.log from
        # it, within a bound (qemu's file chardev has none). stdin is /dev/null.
        "-chardev",
        "stdio,id=vmh-serial,signal=off",
        "-serial",
        "chardev:vmh-serial",
        "-qmp",
        f"unix:{_opt(qmp_socket)},server=on,wait=off",
    ]
    if overlay is not None:  # None: the caller attaches the disks (the VM universe helper)
        cmd += ["-drive", f"file={_opt(overlay)},if=virtio,format=qcow2,cache=unsafe,discard=unmap"]
    cmd += [
        "-device",
        "virtio-rng-pci",
    ]
    if job.network == "user":
        cmd += ["-nic", "user,model=virtio-net-pci"]
    else:
        cmd += ["-nic", "none"]
    return cmd


def _kernel_args(job: VMJob, accel: str, cmdline: str) -> list[str]:
    if job.kernel is None:
        return []
    extra = emulation_kernel_flags(accel)
    cmd = ["-kernel", str(job.kernel), "-append", f"{cmdline} {extra}" if extra else cmdline]
    if job.initrd is not None:
        cmd += ["-initrd", str(job.initrd)]
    return cmd


class VMProcesses:
    """The qemu processes one vmharness started and has not yet seen end, so that an interrupt
    stops them all; once stopping, no new VM starts (nothing would stop it). Each is tied to
    this process (lifetime.py: the kernel kills it if vmharness dies) and has its console
    written by a ConsoleLog (console.py)."""

    def __init__(self, popen: dict[str, Any] | None = None) -> None:
        # Extra Popen arguments for every qemu (the VM universe helper: the job's user, fds)
        self._popen = dict(popen or {})
        self._running: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
        self._consoles: dict[int, ConsoleLog] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(
        self,
        cmd: list[str],
        workdir: Path,
        qmp_socket: Path,
        *,
        console: Path,
        append: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start qemu; its serial console goes to `console` (after what is there: `append`)."""
        (workdir / "qemu-command.txt").write_text(shlex.join(cmd) + "\n")
        with self._lock:
            if self.stopping:
                raise VMInterrupted(cmd[cmd.index("-name") + 1])
            log = ConsoleLog(console, append=append)
            try:
                if "user" in self._popen:  # the job's user reads it, as it would qemu's own file
                    os.fchown(log.fileno(), self._popen["user"], self._popen.get("group", -1))
                with open(workdir / "qemu-stderr.log", "wb") as err:
                    proc = spawn(
                        cmd,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        **self._popen,
                    )
            except BaseException:
                log.abandon()
                raise
            assert proc.stdout is not None
            self._consoles[proc.pid] = log.start(proc.stdout)  # type: ignore[arg-type]
            self._running[proc.pid] = (proc, qmp_socket)
        return proc

    def forget(self, proc: subprocess.Popen[bytes], qmp_socket: Path) -> None:
        """The VM is over for its caller: stopped if still running, its console.log final."""
        if proc.poll() is None:
            _stop(proc, qmp_socket)
        with self._lock:
            self._running.pop(proc.pid, None)
            log = self._consoles.pop(proc.pid, None)
        if log is not None:
            log.close()

    def stop_all(self) -> int:
        """Stop every VM (on Ctrl-C): their runs stay `running` in the database and
        `vmharness resume` runs them again."""
        self._stopping.set()
        with self._lock:
            procs = list(self._running.values())
        for proc, sock in procs:
            _stop(proc, sock)
        return len(procs)


class LocalVMs:
    """Runs VM jobs with qemu on this machine under one accelerator: the VM executor of the
    local engine and of a pool job's execute side."""

    def __init__(self, accel: str) -> None:
        self.accel = accel
        self.procs = VMProcesses()

    def __call__(self, job: VMJob) -> VMOutcome:
        return run_vm(job, self.accel, self.procs)

    def stop_all(self) -> int:
        return self.procs.stop_all()


def vm_disk_need(output_disk_bytes: int) -> int:
    """Bytes a VM may add to its run folder's disk once started (see OVERLAY_RESERVE)."""
    return CONSOLE_LIMIT + output_disk_bytes + OVERLAY_RESERVE


def check_free_space(folder: Path, need: int, what: str) -> None:
    """InfraError, naming the folder and the space, unless `folder`'s disk has `need` bytes."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise InfraError(
            f"not enough free disk space in {folder}: {free >> 20} MiB free, {what} need "
            f"about {need >> 20} MiB there (per VM: its console log up to "
            f"{CONSOLE_LIMIT >> 20} MiB, its output disk, and its root disk's overlay)",
            hint="free some space there, put the run folder on a bigger disk (--out), or run "
            "fewer VMs at once (--jobs)",
        )


def run_vm(job: VMJob, accel: str, procs: VMProcesses) -> VMOutcome:
    """Start the run's VM (from a snapshot where it can) and wait for it to power off, or kill
    it at the wall-clock timeout."""
    job.workdir.mkdir(parents=True, exist_ok=True)
    output_size = job.output_disk.stat().st_size if job.output_disk.exists() else 0
    check_free_space(job.workdir, vm_disk_need(output_size), "its VM would")
    why_not = ""
    if job.snapshot_store is not None and job.kernel is not None:
        outcome, why_not = _run_from_snapshot(procs, job, accel, SnapshotStore(job.snapshot_store))
        if outcome is not None:
            return outcome
    outcome = _run_booting(procs, job, accel)
    outcome.boot = "direct kernel boot" if job.kernel is not None else "boot from disk"
    if why_not:
        outcome.boot += f" (no snapshot: {why_not})"
    return outcome


def _run_booting(procs: VMProcesses, job: VMJob, accel: str) -> VMOutcome:
    overlay = job.workdir / "overlay.qcow2"
    _create_overlay(job.base_disk, overlay)
    with _qmp_dir() as qmp_socket:
        try:
            return _run_qemu(
                procs, job, accel, qemu_command(job, accel, overlay, qmp_socket), qmp_socket
            )
        finally:
            overlay.unlink(missing_ok=True)  # the run's writes to the root disk are thrown away


class _SnapshotFailed(Exception):
    """No snapshot could be made: the run boots instead."""


class _RestoreFailed(Exception):
    """The run could not start from the snapshot; nothing of the run has happened yet, so it
    can boot instead. `snapshot_bad`: the saved state itself did not load (discard it), as
    opposed to this run's own trouble (a loaded machine, its disks), which leaves it be."""

    def __init__(self, message: str, *, snapshot_bad: bool = False):
        super().__init__(message)
        self.snapshot_bad = snapshot_bad


def _run_from_snapshot(
    procs: VMProcesses, job: VMJob, accel: str, store: SnapshotStore
) -> tuple[VMOutcome | None, str]:
    """The run, restored from its shape's snapshot (made now if there is none).

    Returns no outcome, and why, when the run should boot instead: the snapshot could not be
    made, or did not load (then it is discarded, and the next run makes a new one)."""
    try:
        shape = _snapshot_shape(job, accel)
        key = store.key(shape)
        snap, made_s = _snapshot_for(procs, job, accel, store, key, shape)
    except _SnapshotFailed as exc:
        return None, str(exc)
    except OSError as exc:  # e.g. a cache folder that cannot be written
        return None, f"the snapshot store {store.root} is not usable: {exc}"
    overlay = job.workdir / "overlay.qcow2"
    try:
        try:
            _create_overlay(snap.overlay, overlay)
            # The boot's console first, so a run's console.log reads as if it had booted.
            shutil.copyfile(snap.console, job.console_log)
            with open(job.console_log, "a") as console:
                made = time.strftime("%Y-%m-%d %H:%M", time.localtime(snap.made_at()))
                console.write(f"\n[vmharness: restored from snapshot {key}, made {made}]\n")
        except (OSError, InfraError) as exc:  # e.g. pruned by another process just now
            raise _RestoreFailed(str(exc)) from exc
        store.used(key)
        restore_s: list[float] = []
        with _qmp_dir() as qmp_socket:
            cmd = _warm_command(job, accel, overlay, qmp_socket) + ["-incoming", "defer"]
            outcome = _run_qemu(
                procs,
                job,
                accel,
                cmd,
                qmp_socket,
                started=lambda proc: restore_s.append(_restore(job, proc, qmp_socket, snap)),
                console_append=True,  # after the snapshot's boot
            )
    except _RestoreFailed as exc:
        if procs.stopping:  # we stopped it (Ctrl-C): the snapshot is not to blame
            raise VMInterrupted(job.name) from exc
        if exc.snapshot_bad:
            with contextlib.suppress(OSError):
                store.discard(key, f"restoring it failed: {exc}")
        return None, f"restoring {key} failed: {exc}"
    finally:
        overlay.unlink(missing_ok=True)
    outcome.boot = f"restored from snapshot {key}"
    outcome.phases["restore"] = restore_s[0] if restore_s else 0.0
    if made_s:
        outcome.phases["snapshot"] = made_s
        outcome.boot += f" (made for this run in {made_s:.0f}s)"
    return outcome, ""


def _snapshot_for(
    procs: VMProcesses, job: VMJob, accel: str, store: SnapshotStore, key: str, shape: dict
) -> tuple[Snapshot, float]:
    """The snapshot for `key`, and the seconds spent making it here (0 if it was there)."""
    snap = store.find(key)
    if snap is not None:
        return snap, 0.0
    with store.lock(key):  # a run of the same shape may be making it right now
        snap = store.find(key)
        if snap is not None:
            return snap, 0.0
        # Checked under the lock: runs that waited for a maker that failed must not each try
        # again (minutes apiece when the agent never gets ready).
        if failure := store.recent_failure(key):
            raise _SnapshotFailed(f"making one failed within the hour: {failure}")
        if procs.stopping:
            raise VMInterrupted(job.name)
        t0 = time.monotonic()
        try:
            snap = _make_snapshot(procs, job, accel, store, key, shape)
        except _SnapshotFailed as exc:
            store.record_failure(key, str(exc))
            raise
        return snap, time.monotonic() - t0


def _snapshot_shape(job: VMJob, accel: str) -> dict:
    return snapshot_shape(
        job.base_disk,
        job.kernel,
        job.initrd,
        job.cmdline,
        accel,
        memory_mib=job.memory_mib,
        cpus=job.cpus,
        network=job.network,
    )


def snapshot_shape(
    disk: Path,
    kernel: Path | None,
    initrd: Path | None,
    cmdline: str,
    accel: str,
    *,
    memory_mib: int,
    cpus: int,
    network: str,
) -> dict:
    """Everything a snapshot depends on: another value of any of these needs another one.

    The host is part of it: a cache shared between machines (NFS homes) must not give one
    machine's saved CPU state (`-cpu host` under KVM) to another."""
    return {
        "image": str(disk),
        "image_mtime": disk.stat().st_mtime,
        "image_folder": disk.parent.name,
        "kernel": str(kernel),
        "initrd": str(initrd),
        "cmdline": cmdline,
        "qemu": qemu_version(),
        "host": platform.node(),
        "accel": accel,
        "cpu": cpu_model(accel),
        "emulation_kernel_flags": emulation_kernel_flags(accel),
        "memory_mib": memory_mib,
        "cpus": cpus,
        "network": network,
    }


def _make_snapshot(
    procs: VMProcesses, job: VMJob, accel: str, store: SnapshotStore, key: str, shape: dict
) -> Snapshot:
    """Boot a VM of the job's shape with no run disks, wait for its agent to say it is ready,
    and save it: memory and devices to `state`, its root overlay beside."""
    work = store.workdir(key)
    try:
        overlay, console = work / "booted.qcow2", work / "console.log"
        _create_overlay(job.base_disk, overlay)
        with _qmp_dir() as qmp_socket:
            proc = procs.start(
                _warm_command(job, accel, overlay, qmp_socket), work, qmp_socket, console=console
            )
            try:
                _wait_for_marker(proc, console, READY_MARKER, SNAPSHOT_BOOT_TIMEOUT_S)
                qmp = _connect(qmp_socket, proc)
                try:
                    # Stopped first, the VM is saved paused, and a restored copy stays paused
                    # until its disks are plugged in and we say `cont`.
                    qmp.cmd("stop")
                    with open(work / "state", "wb") as state:
                        # Handed to qemu as a file descriptor: qemu writes the file itself, so
                        # it is whole when the migration says "completed".
                        qmp.send_fd_scm(state.fileno())
                        qmp.cmd("getfd", fdname="vmh-state")
                    qmp.cmd("migrate", uri="fd:vmh-state")
                    _wait_migration(qmp, proc)
                    with contextlib.suppress(Exception):  # qemu may hang up while quitting
                        qmp.cmd("quit")
                finally:
                    _close(qmp)
                proc.wait(timeout=30)
            finally:
                procs.forget(proc, qmp_socket)
        if procs.stopping:
            raise VMInterrupted(job.name)
        return store.publish(key, work, shape)
    except VMInterrupted:
        raise
    except Exception as exc:  # QMP errors too: whatever it was, the run can still boot
        if procs.stopping:  # we stopped it (Ctrl-C): not the snapshot's failure
            raise VMInterrupted(job.name) from exc
        raise _SnapshotFailed(
            f"{type(exc).__name__}: {exc}" if not isinstance(exc, _SnapshotFailed) else str(exc)
        ) from exc
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _wait_for_marker(
    proc: subprocess.Popen[bytes], console: Path, marker: bytes, timeout_s: float, offset: int = 0
) -> None:
    """Until the guest's agent writes `marker` on the serial console (after `offset`).

    The console is read in bounded chunks; each is searched together with the end of the one
    before it, so a marker is found however the output falls into reads (a marker followed at
    once by 100 KiB more output, or one cut between two reads)."""
    deadline = time.monotonic() + timeout_s
    scan = MarkerScan(marker)
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), open(console, "rb") as f:
            f.seek(offset)
            while chunk := f.read(MARKER_READ_BYTES):
                offset += len(chunk)
                if scan.feed(chunk):
                    return
        if proc.poll() is not None:
            raise _SnapshotFailed(
                f"the VM ended (qemu exit code {proc.returncode}) before its "
                f"agent said {marker.decode()!r}; last console lines: "
                f"{_tail(scan.recent)}"
            )
        time.sleep(0.02)
    raise _SnapshotFailed(
        f"the agent did not say {marker.decode()!r} within {timeout_s:.0f}s; "
        f"last console lines: {_tail(scan.recent)}"
    )


MARKER_READ_BYTES = 1 << 20


class MarkerScan:
    """Finds `marker` in a byte stream fed in pieces of any size: each piece is searched with
    the last len(marker) - 1 bytes before it. Keeps the last few KiB for error messages."""

    RECENT_BYTES = 4096

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.found = False
        self._carry = b""
        self.recent = b""

    def feed(self, chunk: bytes) -> bool:
        if not self.found:
            window = self._carry + chunk
            self.found = self.marker in window
            self._carry = window[-(len(self.marker) - 1) :] if len(self.marker) > 1 else b""
        self.recent = (self.recent + chunk[-self.RECENT_BYTES :])[-self.RECENT_BYTES :]
        return self.found


def _tail(text: bytes) -> str:
    return " | ".join(text.decode(errors="replace").strip().splitlines()[-3:]) or "(none)"


def _restore(job: VMJob, proc: subprocess.Popen[bytes], qmp_socket: Path, snap: Snapshot) -> float:
    """Load the snapshot into the waiting qemu, plug in the run's disks, and let it go.
    Returns the seconds it took."""
    t0 = time.monotonic()
    qmp = _connect(qmp_socket, proc, error=_RestoreFailed)
    try:
        try:
            qmp.cmd("migrate-incoming", uri=f"exec:cat {shlex.quote(str(snap.state))}")
            _wait_migration(qmp, proc, error=_RestoreFailed)
        except Exception as exc:  # the saved state does not load into this qemu and machine
            raise _RestoreFailed(f"{type(exc).__name__}: {exc}", snapshot_bad=True) from exc
        disks = ((job.output_disk, False), (job.input_disk, True))
        for (port, node), (path, read_only) in zip(RUN_DISK_PORTS, disks, strict=True):
            qmp.cmd(
                "blockdev-add",
                **{
                    "node-name": node,
                    "driver": "raw",
                    "read-only": read_only,
                    "file": {"driver": "file", "filename": str(path)},
                },
            )
            qmp.cmd("device_add", driver="virtio-blk-pci", drive=node, bus=port, id=f"{node}-disk")
        console_size = job.console_log.stat().st_size
        qmp.cmd("cont")
    except _RestoreFailed:
        raise
    except Exception as exc:  # this run's trouble (its disks, QMP): the snapshot is fine
        raise _RestoreFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        _close(qmp)
    try:
        _wait_for_marker(
            proc,
            job.console_log,
            DISKS_FOUND_MARKER,
            min(DISKS_FOUND_TIMEOUT_S, job.wall_timeout_s),
            offset=console_size,
        )
    except _SnapshotFailed as exc:
        if proc.poll() is not None:  # it ended on its own (a panic?): judged as any run
            return time.monotonic() - t0
        raise _RestoreFailed(
            f"{exc} (can its kernel see hot-plugged PCIe disks?)", snapshot_bad=True
        ) from exc
    return time.monotonic() - t0


def _wait_migration(
    qmp: QEMUMonitorProtocol,
    proc: subprocess.Popen[bytes],
    error: type[Exception] = _SnapshotFailed,
) -> None:
    deadline = time.monotonic() + MIGRATION_TIMEOUT_S
    while time.monotonic() < deadline:
        status: dict[str, Any] = qmp.cmd("query-migrate")  # type: ignore[assignment]
        if status.get("status") == "completed":
            return
        if status.get("status") in ("failed", "cancelled"):
            raise error(f"migration {status.get('status')}: {status.get('error-desc', '')}")
        if proc.poll() is not None:
            raise error(f"qemu exited with code {proc.returncode} while migrating")
        time.sleep(0.02)
    raise error(f"migration not done after {MIGRATION_TIMEOUT_S}s")


def _connect(
    qmp_socket: Path, proc: subprocess.Popen[bytes], error: type[Exception] = _SnapshotFailed
) -> QEMUMonitorProtocol:
    deadline = time.monotonic() + 30
    while True:
        if qmp_socket.exists():  # qemu listens on it from its start (wait=off)
            qmp = QEMUMonitorProtocol(str(qmp_socket))
            try:
                qmp.connect()
                qmp.settimeout(MIGRATION_TIMEOUT_S)
                return qmp
            except Exception as exc:
                _close(qmp)
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise error(f"no QMP connection to qemu ({exc})") from exc
        elif proc.poll() is not None or time.monotonic() > deadline:
            raise error(f"qemu did not start (exit code {proc.poll()}); see qemu-stderr.log")
        time.sleep(0.01)


def _close(qmp: QEMUMonitorProtocol) -> None:
    # Closing a connection to a qemu that has just exited raises; there is nothing to close.
    with contextlib.suppress(Exception):
        qmp.close()


@contextlib.contextmanager
def _qmp_dir():
    # Unix socket paths are limited to ~107 bytes; run folders can be deep.
    sock_dir = Path(tempfile.mkdtemp(prefix="vmh-qmp-"))
    try:
        yield sock_dir / "qmp.sock"
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def _run_qemu(
    procs: VMProcesses,
    job: VMJob,
    accel: str,
    cmd: list[str],
    qmp_socket: Path,
    started=None,
    *,
    console_append: bool = False,
) -> VMOutcome:
    t0 = time.monotonic()
    proc = procs.start(cmd, job.workdir, qmp_socket, console=job.console_log, append=console_append)
    try:
        if started is not None:
            started(proc)
        try:
            code = proc.wait(timeout=max(1.0, job.wall_timeout_s - (time.monotonic() - t0)))
            ended = "poweroff" if code == 0 else "error"
        except subprocess.TimeoutExpired:
            _stop(proc, qmp_socket)
            code, ended = proc.returncode, "timeout"
    finally:  # Ctrl-C, our own kill or a failed restore: never leave a VM behind
        procs.forget(proc, qmp_socket)
    if procs.stopping:
        raise VMInterrupted(job.name)
    seconds = time.monotonic() - t0
    reason = ""
    if ended == "timeout":
        reason = f"VM still running after the wall-clock timeout of {job.wall_timeout_s}s; killed"
    elif ended == "error":
        stderr = (job.workdir / "qemu-stderr.log").read_text(errors="replace")
        tail = stderr.strip().splitlines()[-3:]
        reason = f"qemu exited with code {code}: {' '.join(tail) or 'no message'}"
    return VMOutcome(
        ended=ended,
        seconds=seconds,
        accelerator=accel,
        reason=reason,
        exit_code=code,
        host=platform.node(),
    )


def _create_overlay(base: Path, overlay: Path) -> None:
    overlay.unlink(missing_ok=True)
    proc = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise InfraError(f"cannot create an overlay on {base}: {proc.stderr.strip()}")


def _stop(proc: subprocess.Popen[bytes], qmp_socket: Path) -> None:
    """Ask qemu to quit over QMP; kill it if that does not work within a few seconds."""
    with contextlib.suppress(Exception):
        qmp = QEMUMonitorProtocol(str(qmp_socket))
        qmp.settimeout(3)
        qmp.connect()
        qmp.cmd("quit")
        qmp.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
