"""The local backend: one qemu process per run, on this machine.

KVM is used only where a probe guest really boots under it within seconds (a /dev/kvm that
exists but hangs guests is common on nested or paravirtual hosts); otherwise TCG, and we say so.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from ..errors import InfraError
from .base import VMJob, VMOutcome

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT_S = 20
PROBE_TTL_S = 24 * 3600
ACCEL_ENV = "VMHARNESS_ACCEL"  # kvm | tcg | auto (default)

# Every qemu this process started and has not seen end, so an interrupt can stop them all.
_running: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
_running_lock = threading.Lock()
_stopping = threading.Event()


class VMInterrupted(BaseException):
    """The VM was stopped because vmharness is being interrupted: not a verdict on the run.

    A BaseException so that no `except Exception` records it as a failure; the run stays
    `running` in the database and resume runs it again."""


def qemu_version() -> str:
    if not shutil.which(QEMU):
        raise InfraError(f"{QEMU} is not installed",
                         hint="sudo apt-get install qemu-system-x86 qemu-utils (or `make setup`)")
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def choose_accelerator(kernel: Path | None, cache_dir: Path, *, say=lambda _m: None) -> str:
    """'kvm' if a probe guest boots under KVM within seconds here, else 'tcg'. Cached a day.

    `kernel` is the probe guest's kernel; without one (only user-given images) nothing can be
    probed, and TCG is the safe choice unless KVM is forced."""
    forced = os.environ.get(ACCEL_ENV, "auto").lower()
    if forced in ("kvm", "tcg"):
        say(f"accelerator {forced} (forced by {ACCEL_ENV})")
        return forced
    if kernel is None:
        say(f"accelerator tcg (no kernel to probe KVM with; set {ACCEL_ENV}=kvm to force it)")
        return "tcg"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        say("accelerator tcg: /dev/kvm is not usable here (software emulation, slower)")
        return "tcg"
    ident = {"host": platform.node(), "kernel": platform.release(), "qemu": qemu_version(),
             "probe_kernel": str(kernel), "probe_kernel_mtime": kernel.stat().st_mtime}
    cache = cache_dir / "accelerator.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(cache.read_text())
        if saved["ident"] == ident and time.time() - saved["at"] < PROBE_TTL_S:
            say(f"accelerator {saved['accel']} ({saved['why']}; probed earlier)")
            return saved["accel"]
    accel, why = _probe_kvm(kernel)
    say(f"accelerator {accel} ({why})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"accelerator.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"ident": ident, "at": time.time(), "accel": accel, "why": why}))
    os.replace(tmp, cache)
    return accel


def _probe_kvm(kernel: Path) -> tuple[str, str]:
    # The guest kernel has no root disk, so a working KVM boots it to its "VFS: Unable to mount
    # root fs" panic in well under a second, and -no-reboot ends qemu. A broken one hangs.
    with tempfile.TemporaryDirectory(prefix="vmh-probe-") as tmp:
        console = Path(tmp) / "console.log"
        cmd = [QEMU, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256", "-smp", "1",
               "-nodefaults", "-display", "none", "-no-reboot", "-kernel", str(kernel),
               "-append", "console=ttyS0 panic=-1 loglevel=4", "-serial", f"file:{console}"]
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return "tcg", f"a probe guest hung under KVM for {PROBE_TIMEOUT_S}s; using software " \
                          "emulation (slower)"
        seconds = time.monotonic() - t0
        text = console.read_text(errors="replace") if console.exists() else ""
        if "Kernel panic" in text or "VFS:" in text:
            return "kvm", f"a probe guest booted under KVM in {seconds:.1f}s"
        detail = (proc.stderr.strip().splitlines() or ["no console output"])[-1]
        return "tcg", f"KVM failed the probe ({detail}); using software emulation (slower)"


def qemu_command(job: VMJob, accel: str, overlay: Path, qmp_socket: Path) -> list[str]:
    cpu = "host" if accel == "kvm" else "max"
    cmd = [
        QEMU, "-name", job.name, "-machine", f"q35,accel={accel}", "-cpu", cpu,
        "-m", str(job.memory_mib), "-smp", str(job.cpus),
        "-nodefaults", "-display", "none", "-no-reboot", "-no-user-config",
        "-serial", f"file:{job.console_log}",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
        "-drive", f"file={job.input_disk},if=virtio,format=raw,readonly=on",
        # writeback: what the guest wrote is in the file even if qemu is killed at the timeout
        "-drive", f"file={job.output_disk},if=virtio,format=raw,cache=writeback",
        "-device", "virtio-rng-pci",
    ]
    if job.kernel is not None:
        cmd += ["-kernel", str(job.kernel), "-append", job.cmdline]
        if job.initrd is not None:
            cmd += ["-initrd", str(job.initrd)]
    if job.network == "user":
        cmd += ["-nic", "user,model=virtio-net-pci"]
    else:
        cmd += ["-nic", "none"]
    return cmd


def run_vm(job: VMJob, accel: str) -> VMOutcome:
    """Boot the VM and wait for it to power off, or kill it at the wall-clock timeout."""
    job.workdir.mkdir(parents=True, exist_ok=True)
    overlay = job.workdir / "overlay.qcow2"
    _create_overlay(job.base_disk, overlay)
    # Unix socket paths are limited to ~107 bytes; run folders can be deep.
    sock_dir = Path(tempfile.mkdtemp(prefix="vmh-qmp-"))
    qmp_socket = sock_dir / "qmp.sock"
    cmd = qemu_command(job, accel, overlay, qmp_socket)
    (job.workdir / "qemu-command.txt").write_text(" ".join(cmd) + "\n")
    t0 = time.monotonic()
    stderr_path = job.workdir / "qemu-stderr.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            with _running_lock:
                _running[proc.pid] = (proc, qmp_socket)
            try:
                code = proc.wait(timeout=job.wall_timeout_s)
                ended = "poweroff" if code == 0 else "error"
            except subprocess.TimeoutExpired:
                _stop(proc, qmp_socket)
                code, ended = proc.returncode, "timeout"
            except BaseException:  # Ctrl-C or our own kill: never leave a VM behind
                _stop(proc, qmp_socket)
                raise
    finally:
        if proc is not None:
            with _running_lock:
                _running.pop(proc.pid, None)
        shutil.rmtree(sock_dir, ignore_errors=True)
        overlay.unlink(missing_ok=True)  # the run's writes to the root disk are thrown away
    if _stopping.is_set():
        raise VMInterrupted(job.name)
    seconds = time.monotonic() - t0
    reason = ""
    if ended == "timeout":
        reason = f"VM still running after the wall-clock timeout of {job.wall_timeout_s}s; killed"
    elif ended == "error":
        tail = stderr_path.read_text(errors="replace").strip().splitlines()[-3:]
        reason = f"qemu exited with code {code}: {' '.join(tail) or 'no message'}"
    return VMOutcome(ended=ended, seconds=seconds, accelerator=accel, reason=reason,
                     exit_code=code, host=platform.node())


def stop_all() -> int:
    """Stop every VM this process runs (on Ctrl-C): their runs stay `running` in the database
    and `vmharness resume` runs them again."""
    _stopping.set()
    with _running_lock:
        procs = list(_running.values())
    for proc, sock in procs:
        _stop(proc, sock)
    return len(procs)


def _create_overlay(base: Path, overlay: Path) -> None:
    overlay.unlink(missing_ok=True)
    proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                           str(base), str(overlay)], capture_output=True, text=True)
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
