"""The accelerator: KVM only where a probe guest really boots under it, else TCG.

A /dev/kvm that exists but hangs ordinary guests is common on nested or paravirtual hosts, so
its presence proves nothing: a tiny guest must boot under it within seconds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InfraError
from ..wire.codec import read_json, write_json_atomic
from .lifetime import spawn

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT_S = 20
PROBE_TTL_S = 24 * 3600
ACCEL_ENV = "VMHARNESS_ACCEL"  # kvm | tcg | auto (default)


@functools.cache
def qemu_version() -> str:
    if not shutil.which(QEMU):
        raise InfraError(
            f"{QEMU} is not installed",
            hint="sudo apt-get install qemu-system-x86 qemu-utils (or `make setup`)",
        )
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def choose_accelerator(
    kernel: Path | None, cache_dir: Path, *, say: Callable[[str], None] = lambda _m: None
) -> str:
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
    ident = {
        "host": platform.node(),
        "kernel": platform.release(),
        "qemu": qemu_version(),
        "probe_kernel": str(kernel),
        "probe_kernel_mtime": kernel.stat().st_mtime,
    }
    cache = cache_dir / "accelerator.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = read_json(cache, limit=64 << 10)
        if saved["ident"] == ident and time.time() - saved["at"] < PROBE_TTL_S:
            say(f"accelerator {saved['accel']} ({saved['why']}; probed earlier)")
            return saved["accel"]
    accel, why = _probe_kvm(kernel)
    say(f"accelerator {accel} ({why})")
    write_json_atomic(cache, {"ident": ident, "at": time.time(), "accel": accel, "why": why})
    return accel


def _probe_kvm(kernel: Path) -> tuple[str, str]:
    # The guest kernel has no root disk, so a working KVM boots it to its "VFS: Unable to mount
    # root fs" panic in well under a second, and -no-reboot ends qemu. A broken one hangs.
    with tempfile.TemporaryDirectory(prefix="vmh-probe-") as tmp:
        console = Path(tmp) / "console.log"
        cmd = [
            QEMU,
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            str(kernel),
            "-append",
            "console=ttyS0 panic=-1 loglevel=4",
            "-serial",
            f"file:{console}",
        ]
        t0 = time.monotonic()
        # Tied to this process (lifetime.py): a probe that hangs must not outlive a killed run.
        # In its own folder: a failing KVM can make qemu abort (an assertion), and whatever it
        # leaves belongs in no run's folder or pool job's sandbox.
        proc = spawn(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=tmp,
        )
        try:
            _out, err = proc.communicate(timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return (
                "tcg",
                f"a probe guest hung under KVM for {PROBE_TIMEOUT_S}s; using software "
                "emulation (slower)",
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        seconds = time.monotonic() - t0
        text = console.read_text(errors="replace") if console.exists() else ""
        if "Kernel panic" in text or "VFS:" in text:
            return "kvm", f"a probe guest booted under KVM in {seconds:.1f}s"
        detail = (err.strip().splitlines() or ["no console output"])[-1]
        return "tcg", f"KVM failed the probe ({detail}); using software emulation (slower)"
